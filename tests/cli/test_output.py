"""What `fmn` prints for a person: readable metadata, explicit "no conflicts", counts that
agree with their nouns, help text as written."""

import argparse
from pathlib import Path

from fmn_desktop.cli import build_parser, main
from fmn_desktop.cli.common import interval, readable
from fmn_desktop.wording import count

READY = Path(__file__).resolve().parents[2] / "patches"


def test_readable_values():
    assert readable({"mean": 0.0312, "low": 0.0101, "high": 0.052, "n": 12}) == (
        "0.031 [0.010, 0.052], n=12"
    )
    assert interval(0.5, None, None) == "0.500"
    assert readable(0.1 + 0.2) == "0.3" and readable(3.0) == "3" and readable(7) == "7"
    assert readable("faithful") == "faithful" and readable("") == '""' and readable(None) == "-"
    assert readable(["a", "b"]) == '"a", "b"'
    long = [f"a photo of thing number {i} in the style of something long" for i in range(96)]
    text = readable(long)
    assert text.startswith("96: ") and text.endswith("(93 more)") and len(text) < 160


def test_inspect_prints_intervals_and_a_prompt_count(capsys):
    assert main(["inspect", str(READY / "forget-Zorbu.safetensors")]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0] + " " + ln.split()[1]: ln for ln in out.splitlines() if " " in ln}
    assert "0.994 [0.992, 0.996], n=12" in lines["score mscore_before"]
    retain = next(ln for ln in out.splitlines() if ln.strip().startswith("retain_prompts"))
    assert "96: " in retain and "(93 more)" in retain
    assert max(len(ln) for ln in out.splitlines()) < 200
    assert "rank 61" in out and "rank [" not in out


def test_patches_show_is_readable_and_stack_show_says_no_conflicts(tmp_path, capsys):
    reg = ["--registry", str(tmp_path / "reg")]
    assert main(["patches", "import", str(READY / "forget-circle.safetensors"), *reg]) == 0
    capsys.readouterr()
    assert main(["patches", "show", "1", *reg]) == 0
    out = capsys.readouterr().out
    assert "[" in next(ln for ln in out.splitlines() if ln.startswith("score mscore_after"))
    assert main(["stack", "create", "s", *reg]) == 0
    assert main(["stack", "add", "s", "1", *reg]) == 0
    assert capsys.readouterr().out.strip().endswith("no conflicts")
    assert main(["stack", "show", "s", *reg]) == 0
    assert capsys.readouterr().out.strip().endswith("no conflicts")
    assert "scores are for strength 1" not in capsys.readouterr().err
    assert main(["stack", "add", "s", "1", "--strength", "1.5", *reg]) == 0
    assert "scores are for strength 1" in capsys.readouterr().err


def test_counts_agree_with_their_nouns():
    from fmn_desktop.evaluate.patch_scores import format_scores

    est = {"mean": 0.5, "low": 0.4, "high": 0.6, "n": 4}
    per = {k: est for k in ("mscore_before", "mscore_after", "coattr_before", "coattr_after")}
    scores = {
        "concepts": {"Zorbu": {**per, "readings_before": {}, "readings_after": {"none": 1.0}}},
        "retention_before": est,
        "retention_after": est,
        "plan": {"prompts": 1, "seeds": 2, "neighbour_prompts": 3, "other_seeds": 1},
        "images": 5,
    }
    text = format_scores(scores, "Zorbu")
    assert "1 prompt x 2 seeds per forgotten concept" in text
    assert "3 prompts x 1 seed per other concept" in text
    assert count(1, "seed") == "1 seed" and count(0, "seed") == "0 seeds"


def test_no_help_text_shows_a_doubled_percent_sign():
    def walk(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)

    helps = [p.format_help() for p in walk(build_parser())]
    assert len(helps) > 20
    assert not [h for h in helps if "%%" in h]
    assert any("95% intervals" in h for h in helps)
