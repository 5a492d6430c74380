"""The `fmn` examples of the README and of patches/README.md are runnable as written from the
repository root: each parses, and every file it reads exists, is made by an earlier example,
or is one of the stand-ins the README names for the user's own files."""

import shlex
from pathlib import Path

import pytest

from fmn_desktop.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "patches/README.md"]
# The user's own files, which the README says the examples stand for.
STAND_INS = ("./sd15", "photos/")
OUTPUT_FLAGS = {"--out", "--out-dir", "--json"}
PATH_SUFFIXES = (".safetensors", ".png", ".json", ".md", ".jpg")


def examples(text: str) -> list[list[str]]:
    """Each `fmn` command of the text's sh blocks, as argv without the program."""
    commands = []
    for block in text.split("```sh")[1:]:
        body = block.split("```")[0].replace("\\\n", " ")
        for line in body.splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                head, tokens = tokens[:cut], tokens[cut + 1 :]
                if head and head[0].endswith("/fmn"):
                    commands.append(head[1:])
    return commands


def _strip_strength(token: str) -> str:
    head, sep, tail = token.rpartition(":")
    return head if sep and tail.replace(".", "").isdigit() else token


def unknown_inputs(commands: list[list[str]], root: Path) -> list[str]:
    """The files the commands read that neither exist under `root`, nor an earlier command
    writes, nor stand for the user's own files."""
    made: set[str] = set()
    unknown = []
    for argv in commands:
        outputs = {argv[i + 1] for i, t in enumerate(argv[:-1]) if t in OUTPUT_FLAGS}
        for token in argv:
            path = _strip_strength(token)
            if token in outputs or token.startswith("-"):
                continue
            if "/" not in path and not path.endswith(PATH_SUFFIXES):
                continue  # a name, a number, a prompt
            known = (
                (root / path).exists()
                or ("*" in path and any(root.glob(path)))
                or path in STAND_INS
                or any(path == m or path.startswith(m.rstrip("/") + "/") for m in made)
            )
            if not known:
                unknown.append(f"`fmn {shlex.join(argv)}` reads {path}")
        made |= outputs
    return unknown


def test_the_examples_were_found():
    readme = examples((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(readme) >= 15
    assert ["inspect", "vangogh.safetensors"] in readme
    assert ["stack", "add", "clean", "vangogh", "--strength", "0.8"] in readme  # after &&


@pytest.mark.parametrize("doc", DOCS)
def test_every_example_parses(doc):
    parser = build_parser()
    for argv in examples((ROOT / doc).read_text(encoding="utf-8")):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # argparse's way of refusing
            pytest.fail(f"{doc}: `fmn {shlex.join(argv)}` does not parse (exit {exc.code})")


@pytest.mark.parametrize("doc", DOCS)
def test_every_file_an_example_reads_exists_or_is_made_before(doc):
    assert unknown_inputs(examples((ROOT / doc).read_text(encoding="utf-8")), ROOT) == []


def test_the_readme_says_what_the_stand_ins_are():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for stand_in in STAND_INS:
        assert f"`{stand_in}`" in readme


def test_the_check_catches_a_file_nothing_makes():
    text = (
        "```sh\n"
        ".venv/bin/fmn forget --concept Zorbu --out zorbu.safetensors\n"
        ".venv/bin/fmn inspect zorbu.safetensors\n"
        ".venv/bin/fmn evaluate --patch forget-Zorbu.safetensors:1.0 --concept Zorbu\n"
        "```\n"
    )
    assert unknown_inputs(examples(text), ROOT) == [
        "`fmn evaluate --patch forget-Zorbu.safetensors:1.0 --concept Zorbu` reads "
        "forget-Zorbu.safetensors"
    ]
