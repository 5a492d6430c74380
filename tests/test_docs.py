"""The documentation stays true to the code: the CLI reference matches the parser, and every
relative link in the repository's Markdown files points to a file that exists."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "guide" / "cli.md"


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_cli_reference", ROOT / "scripts" / "gen_cli_reference.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gen():
    return load_generator()


def test_cli_reference_is_current(gen):
    text = CLI_MD.read_text(encoding="utf-8")
    expected = gen.render()
    if text == expected:
        return
    found = re.search(r"\(Python (\d+\.\d+) argparse\)", text)
    if found and found.group(1) != gen.python_version():
        pytest.skip(
            f"docs/guide/cli.md was generated with Python {found.group(1)}'s argparse, whose "
            f"help layout differs from {gen.python_version()}'s; compared on that version only"
        )
    pytest.fail("docs/guide/cli.md is out of date: run `python scripts/gen_cli_reference.py`")


def test_cli_reference_lists_every_command(gen):
    text = CLI_MD.read_text(encoding="utf-8")
    commands = [" ".join(words) for words, _, _ in gen.walk(gen.build_parser())]
    assert len(commands) > 20  # fmn, its commands, and the patches/stack actions
    for command in commands:
        assert f"## `{command}`" in text, f"{command} is missing from docs/guide/cli.md"
        assert f"usage: {command} " in text or f"usage: {command}\n" in text, command


def markdown_files() -> list[Path]:
    """The Markdown files git knows about (tracked or new), not ignored ones (.venv, runs/)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        files = [ROOT / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist)
        skip = {".venv", ".git", "runs", "build", "dist", "node_modules"}
        files = [p for p in ROOT.rglob("*.md") if not skip & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in files if p.is_file())


FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)


def relative_links(text: str) -> list[str]:
    """Link targets outside code blocks and code spans that are paths in this repository."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = LINK.findall(text) + REFERENCE_DEF.findall(text)
    out = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
            continue  # a URL, mailto:, an anchor in the same page, or a site-absolute path
        out.append(target)
    return out


def test_markdown_files_found():
    files = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "docs/README.md", "docs/guide/cli.md"} <= files


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_markdown_relative_links_exist(path):
    broken = []
    for target in relative_links(path.read_text(encoding="utf-8")):
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        if not file_part:
            continue
        resolved = (path.parent / file_part).resolve()
        if not resolved.exists():
            broken.append(target)
        elif ROOT not in resolved.parents and resolved != ROOT:
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_markdown_mentions_no_outside_notes(path):
    assert "../shared" not in path.read_text(encoding="utf-8"), path.relative_to(ROOT)


def test_link_parser():
    text = (
        'see [a](guide/a.md#x) and ![b](img/b.png "t"), [web](https://x.org), [top](#top),\n'
        "`[not](code.md)`\n```\n[nor](fenced.md)\n```\n[r]: ref/r.md\n"
    )
    assert relative_links(text) == ["guide/a.md#x", "img/b.png", "ref/r.md"]
