"""ConceptBench's report files, and its chart's optional dependency (matplotlib, `plots`)."""

from __future__ import annotations

import json
import sys

import pytest

from fmn_desktop.cli import main
from fmn_desktop.errors import FmnError
from fmn_desktop.evaluate.bench import BenchRow, require_plots, write_report


def _row(item: str, after: float) -> BenchRow:
    est = lambda m: {"mean": m, "low": max(0.0, m - 0.1), "high": min(1.0, m + 0.1)}  # noqa: E731
    return BenchRow(item, "object", est(0.9), est(after), est(0.95), est(0.94), 1.5)


def test_report_writes_json_table_and_chart(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row("circle", 0.05), _row("a very long concept name", 0.2)]
    paths = write_report(rows, tmp_path, "ConceptBench (test)", {"seeds": 1})
    assert json.loads(paths["json"].read_text())["rows"][0]["item"] == "circle"
    assert "| circle | object |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_is_a_clear_error_before_the_bench_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails, find_spec says absent
    with pytest.raises(FmnError, match=r"pip install 'forget-me-not-studio\[plots\]'"):
        require_plots()
    assert main(["bench", "--out-dir", str(tmp_path / "bench")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fmn bench: error: the bench chart (bench.png) needs matplotlib")
    assert not (tmp_path / "bench").exists()
