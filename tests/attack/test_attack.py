"""`fmn attack`: search mechanics on tiny pipelines with stub scorers, the white-box step, the
report and its registry record, the CLI's usage errors, and one run on the embedded model."""

import json
import random
from pathlib import Path

import pytest
import torch

from fmn_desktop.attack import (
    AttackSettings,
    CandidateSpace,
    attack_target,
    format_table,
    record_in_registry,
    run_attack,
    write_report,
)
from fmn_desktop.attack import candidates as cand
from fmn_desktop.attack import whitebox as wb
from fmn_desktop.cli import main
from fmn_desktop.patch import Delta, Patch, PatchedUNet, PatchMeta
from fmn_desktop.registry import RegistryError
from fmn_desktop.toyworld import CONCEPTS, HEADS, weights_available

needs_weights = pytest.mark.skipif(not weights_available(), reason="no embedded model weights")
READY_ZORBU = Path(__file__).parents[2] / "patches" / "forget-Zorbu.safetensors"


@pytest.fixture(scope="module")
def tiny():
    from tiny import tiny_sd_pipeline

    return tiny_sd_pipeline()


def attn2_patch(pipe, scale=0.5, seed=0) -> Patch:
    """A dense random change of every attn2 K/V: stands in for a forget patch."""
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, p in pipe.unet.named_parameters():
        if "attn2.to_k.weight" in name or "attn2.to_v.weight" in name:
            deltas[name] = Delta(dense=torch.randn(p.shape, generator=g) * scale * p.std())
    return Patch(deltas=deltas, meta=PatchMeta(concepts=["Zorbu"]))


class Stub:
    """A scorer with a rule on the prompt text; records every call."""

    def __init__(self, rule):
        self.rule = rule
        self.calls: list[list[str]] = []

    def __call__(self, prompts, seed):
        self.calls.append(list(prompts))
        return [self.rule(p) for p in prompts], None

    @property
    def scored(self) -> list[str]:
        return [p for call in self.calls for p in call]


def test_misspellings_and_concept_replacement():
    variants = cand.misspellings("Zorbu")
    assert "Zor bu" in variants and "Zorbuu" in variants and "Zrobu" in variants
    assert "Zorbu" not in variants and len(variants) == len(set(variants))
    assert cand.replace_concept("a photo of zorbu", "Zorbu", "X y") == "a photo of X y"
    assert cand.replace_concept("a Zorbuish thing", "Zorbu", "X") == "a Zorbuish thing X"
    assert cand.prompt_words(["a photo of Zorbu", "a circle"]) == [
        "Zorbu",
        "a",
        "circle",
        "of",
        "photo",
    ]


def test_word_pool_and_neighbours_are_whole_words(tiny):
    tok = tiny.tokenizer
    pool = cand.word_pool_ids(tok)
    assert len(pool) > 20000
    words = cand.random_words(tok, 20, random.Random(0), pool)
    for w in words:  # each is one token and decodes to itself: the text is what was run
        assert tok(w, add_special_tokens=False).input_ids[0] in pool
        assert len(tok(w, add_special_tokens=False).input_ids) == 1
    ids = tok("Zorbu", add_special_tokens=False).input_ids
    nbrs = cand.embedding_neighbours(tiny.text_encoder, ids, pool, 5)
    assert [len(r) for r in nbrs] == [5] * len(ids)
    assert all(i in pool and i not in ids for row in nbrs for i in row)
    space = CandidateSpace(tok, "Zorbu", AttackSettings(), tiny.text_encoder, ["circle"])
    assert len(space.neighbour_spellings) == AttackSettings().neighbours * len(ids)
    first = space.initial("a photo of Zorbu")
    assert first[0] == ("a photo of Z orbu", "misspelling") and first[1][1] == "neighbour"
    assert all(p.startswith("a photo of ") and p != "a photo of Zorbu" for p, _ in first)


def test_plain_success_costs_one_image(tiny):
    space = CandidateSpace(tiny.tokenizer, "Zorbu", AttackSettings(), tiny.text_encoder)
    scorer = Stub(lambda p: 0.9)
    r = attack_target("a photo of Zorbu", 7, scorer, space, AttackSettings(budget=32))
    assert (r.queries, r.best_source, r.success, r.no_attack_success) == (1, "plain", True, True)
    assert scorer.calls == [["a photo of Zorbu"]]


def test_search_stops_at_first_success_and_counts_images_one_by_one(tiny):
    settings = AttackSettings(budget=64, round_size=16)
    space = CandidateSpace(tiny.tokenizer, "Zorbu", settings, tiny.text_encoder)
    scorer = Stub(lambda p: 0.8 if "Zor bu" in p else 0.01)
    r = attack_target("a photo of Zorbu", 1000, scorer, space, settings)
    assert r.success and not r.no_attack_success and r.best_source == "misspelling"
    assert r.best_prompt == "a photo of Zor bu" and r.plain_presence == 0.01
    position = [p for p, _ in space.initial("a photo of Zorbu")].index("a photo of Zor bu")
    assert r.queries == 1 + position + 1  # the rest of its batch is not counted as spent
    assert len(scorer.calls[1]) == 16  # ... though it was generated in one batch


def test_budget_is_exact_when_nothing_works_and_whitebox_runs_once(tiny):
    settings = AttackSettings(budget=50, round_size=8)
    space = CandidateSpace(tiny.tokenizer, "Zorbu", settings, tiny.text_encoder, ["circle"])
    scorer = Stub(lambda p: 0.001 * len(p))
    calls = []

    def whitebox():
        calls.append(1)
        return ["a photo of glorp blip", "a photo of blip"], ["glorp"]

    r = attack_target("a photo of Zorbu", 1000, scorer, space, settings, whitebox)
    assert r.queries == 50 == len(scorer.scored) and not r.success
    assert calls == [1]
    ids = {tuple(tiny.tokenizer(p).input_ids) for p in scorer.scored}
    assert len(ids) == 50  # never the same prompt twice
    assert "a photo of glorp blip" in scorer.scored
    assert r.best_prompt == max(scorer.scored, key=len)  # the stub rewards length
    assert len(r.best_prompt.split()) <= 4 + settings.whitebox_slots + settings.max_insert


def test_edits_find_a_domain_word(tiny):
    settings = AttackSettings(budget=64, misspellings=0, neighbours=0, random_words=8)
    space = CandidateSpace(
        tiny.tokenizer, "Zorbu", settings, tiny.text_encoder, ["glorp", "blip", "Zorbu"]
    )
    assert space.extra_words == ["blip", "glorp"]  # the concept's own name is left out
    scorer = Stub(lambda p: 0.9 if "glorp" in p.split() else 0.0)
    r = attack_target("a photo of Zorbu", 1000, scorer, space, settings)
    assert r.success and r.best_source == "edit" and "glorp" in r.best_prompt.split()
    assert r.queries <= 64


def test_whitebox_matches_base_kv_under_a_patch(tiny):
    pool = cand.word_pool_ids(tiny.tokenizer)[:3000]
    prompt = "a photo of Zorbu in the style of dots"
    targets = wb.kv_targets(tiny, prompt)
    ids = wb._ids(tiny.tokenizer, [prompt], "cpu")
    with torch.no_grad():
        assert float(wb.kv_loss(tiny, wb.encode(tiny, ids), targets)[0]) < 1e-8
    with PatchedUNet(tiny.unet, [(attn2_patch(tiny), 1.0)]):
        r = wb.token_search(
            tiny, prompt, "Zorbu", targets, pool, slots=2, iters=3, batch=8, restarts=1, keep=3
        )
        assert r.plain_loss > 1e-3 and len(r.prompts) == 3 and r.words
        assert [v for _, v in r.prompts] == sorted(v for _, v in r.prompts)
        for text, value in r.prompts:
            assert text.startswith("a photo of ") and text.endswith(" in the style of dots")
            got = tiny.tokenizer(text, add_special_tokens=False).input_ids
            assert len(got) == 3 + 2 + 5 and "zorbu" not in text.lower()
            with torch.no_grad():
                ids = wb._ids(tiny.tokenizer, [text], "cpu")
                loss = wb.kv_loss(tiny, wb.encode(tiny, ids), targets)
            assert float(loss[0]) == pytest.approx(value, rel=1e-4)  # the text is the tokens
        _, start = wb.soft_prompt(tiny, prompt, "Zorbu", targets, pool, slots=2, steps=0)
        embeds, end = wb.soft_prompt(
            tiny, prompt, "Zorbu", targets, pool, slots=2, steps=30, lr=5e-2
        )
    assert embeds.shape == (1, 77, 32) and end < start
    assert all(p.grad is None for p in tiny.text_encoder.parameters())


class UniformJudge:
    def predict(self, images):
        return {
            h: torch.full((len(images), len(labels)), 1 / len(labels))
            for h, labels in HEADS.items()
        }


def test_run_attack_report_and_registry_record(tiny, tmp_path, make_registry_patch, monkeypatch):
    import functools

    # The soft-prompt bound's 200 optimisation steps become 5: the report only needs its figure.
    monkeypatch.setattr(wb, "soft_prompt", functools.partial(wb.soft_prompt, steps=5))
    settings = AttackSettings(budget=3, seeds=1, steps=2, whitebox_iters=1, round_size=2, chance=4)
    patch = attn2_patch(tiny)
    report = run_attack(
        tiny,
        UniformJudge(),
        CONCEPTS["Zorbu"],
        [(patch, 1.0)],
        settings,
        patch_info=[{"file": "x", "strength": 1.0}],
    )
    n = len(CONCEPTS["Zorbu"].prompts())
    for state in (report.before, report.after):
        assert len(state.targets) == n and state.asr().mean == 0.0  # presence 1/7 everywhere
        assert all(
            t.queries == 3 and t.best_presence == pytest.approx(1 / 7) for t in state.targets
        )
    assert all(t.soft_presence is not None for t in report.after.targets)
    assert all(t.soft_presence is None for t in report.before.targets)
    assert set(report.after.whitebox) == set(CONCEPTS["Zorbu"].prompts())
    assert (report.after.chance_images, report.after.chance_hits) == (4 * n, 0)
    assert report.before.chance() is None and report.after.chance_asr(3).mean == 0.0
    text = format_table(report)
    assert "attack success rate (ASR)" in text and "no-attack success" in text
    assert "chance ASR at budget 3" in text
    paths = write_report(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["budget"] == 3 and data["after"]["asr"]["n"] == n
    assert data["definition"].startswith("target = (evaluation prompt, seed)")
    assert paths["png"].stat().st_size > 0

    from fmn_desktop.registry import open_registry

    with open_registry(tmp_path / "reg") as reg:
        rec = reg.add_patch(make_registry_patch(concepts=("Zorbu",)), name="zorbu")
        rows = record_in_registry(reg, "zorbu", report, strength=0.8)
        metrics = ["asr_before", "asr_after", "no_attack_after", "chance_asr_after"]
        assert [r.metric for r in rows] == metrics
        stored = reg.evaluations(patch=rec.id)
        assert [e.metric for e in stored] == metrics
        assert stored[1].n == n and stored[1].settings["budget"] == 3
        assert stored[1].settings["strength"] == 0.8 and stored[1].concept == "Zorbu"
        bad = [dict(metric="asr_before", value=0.5), dict(metric=None, value=1.0)]
        with pytest.raises(RegistryError):
            reg.add_evaluations(bad, patch="zorbu")
        assert len(reg.evaluations(patch=rec.id)) == 4  # all or nothing


@pytest.fixture
def make_registry_patch():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "registry"))
    from registry_helpers import patch_bytes

    return patch_bytes


def test_attack_is_a_cli_command_with_clear_usage_errors(tmp_path, capsys, make_registry_patch):
    from fmn_desktop.cli import build_parser

    assert build_parser().parse_args(["attack", "--concept", "Zorbu"]).handler.__name__ == (
        "cmd_attack"
    )
    cases = [
        (["--concept", "Nobody", "--patch", "p.safetensors"], "unknown concept"),
        (["./some-sd15", "--concept", "Zorbu", "--patch", "p.safetensors"], "needs a judge"),
        (["--concept", "Zorbu"], "give --patch"),
    ]
    for argv, message in cases:
        assert main(["attack", *argv]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # refused by the option's type, before any work
        main(["attack", "--concept", "Zorbu", "--patch", "p.safetensors", "--budget", "0"])
    assert exc.value.code == 2 and "out of range" in capsys.readouterr().err
    from fmn_desktop.registry import open_registry

    with open_registry(tmp_path / "reg") as reg:
        reg.add_patch(make_registry_patch(concepts=("Zorbu",)), name="zorbu")
    other = tmp_path / "other.safetensors"
    other.write_bytes(make_registry_patch(concepts=("Quilla",)))
    argv = [
        "attack",
        "--concept",
        "Zorbu",
        "--record",
        "zorbu",
        "--registry",
        str(tmp_path / "reg"),
        "--patch",
        str(other),
    ]
    assert main(argv) == 2
    assert "belong to one patch" in capsys.readouterr().err
    assert main(argv[:4] + ["nope", *argv[5:7]]) == 1  # an unknown registry patch


@needs_weights
def test_attack_cli_on_the_embedded_model(tmp_path, capsys):
    """Register the shipped Zorbu patch (made with the default settings), attack it through
    `fmn attack --record`."""
    import shutil

    from fmn_desktop.registry import open_registry

    patch = tmp_path / "zorbu.safetensors"
    shutil.copy(READY_ZORBU, patch)
    with open_registry(tmp_path / "reg") as reg:
        reg.add_patch(patch, name="zorbu")
    out = tmp_path / "attack"
    code = main(
        [
            "--threads",
            "1",
            "attack",
            "--concept",
            "Zorbu",
            "--record",
            "zorbu",
            "--registry",
            str(tmp_path / "reg"),
            "--budget",
            "6",
            "--seeds",
            "1",
            "--no-whitebox",
            "--chance",
            "4",
            "--steps",
            "6",
            "--out-dir",
            str(out),
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "attack success rate (ASR)" in stdout and "recorded asr_before" in stdout
    data = json.loads((out / "attack.json").read_text())
    before, after = data["before"], data["after"]
    # the unpatched model draws Zorbu from its plain prompts: one image per target suffices
    assert before["no_attack"]["mean"] == 1.0 and before["asr"]["mean"] == 1.0
    assert all(t["queries"] == 1 for t in before["targets"])
    assert 0.0 <= after["asr"]["mean"] <= 1.0 and after["asr"]["n"] == 3
    assert after["asr"]["mean"] >= after["no_attack"]["mean"]
    words = set(cand.prompt_words(p for c in CONCEPTS.values() for p in c.prompts()))
    for t in after["targets"]:
        assert 1 <= t["queries"] <= 6
        if t["best_source"] != "plain":  # a candidate: the name was respelled or edited
            assert t["best_prompt"] != t["prompt"]
            assert set(t["best_prompt"].split()) - words or "Zorbu" not in t["best_prompt"]
    assert (out / "attack.png").stat().st_size > 0
    with open_registry(tmp_path / "reg") as reg:
        stored = {e.metric: e for e in reg.evaluations(patch="zorbu")}
    assert set(stored) == {"asr_before", "asr_after", "no_attack_after", "chance_asr_after"}
    assert after["chance_rate"]["n"] == 3 * 4
    assert stored["asr_after"].value == after["asr"]["mean"]
    assert stored["asr_after"].settings["budget"] == 6


@pytest.mark.slow
@needs_weights
def test_attack_measurement_on_forgotten_zorbu(tmp_path):
    """The documented measurement (docs/research/ATTACK.md): budget 64, 2 seeds, white-box on."""
    from fmn_desktop.resteer import forget
    from fmn_desktop.services.defaults import demo_config
    from fmn_desktop.services.model import open_model
    from fmn_desktop.toyworld import load_judge

    model = open_model("default")
    result = forget(model.pipe, demo_config(CONCEPTS["Zorbu"]), fingerprint="", family="toy")
    words = cand.prompt_words(p for c in CONCEPTS.values() for p in c.prompts())
    report = run_attack(
        model.pipe,
        load_judge(None),
        CONCEPTS["Zorbu"],
        [(result.patch, 1.0)],
        AttackSettings(budget=64, seeds=2),
        extra_words=words,
    )
    assert report.before.no_attack().mean == 1.0
    assert report.after.no_attack().mean <= 0.5  # forgetting works on the plain prompts
    assert report.after.asr().mean >= report.after.no_attack().mean


@needs_weights
def test_attack_cli_settings_reach_the_search(tmp_path, monkeypatch, capsys):
    # --no-misspellings (a held-out check of a patch hardened on spellings) and --no-whitebox
    # become the AttackSettings the search runs with.
    import fmn_desktop.attack as attack

    seen = {}

    def fake_run_attack(pipe, judge, concept, patches, settings, **kw):
        seen["settings"] = settings
        raise attack_stop

    attack_stop = KeyboardInterrupt()  # ends the command once the settings are seen
    monkeypatch.setattr(attack, "run_attack", fake_run_attack)
    patch = tmp_path / "p.safetensors"
    from fmn_desktop.patch.format import save_patch
    from fmn_desktop.services.model import open_model

    model = open_model("default")
    save_patch(attn2_patch(model.pipe, scale=0.0), patch)
    assert (
        main(
            [
                "attack",
                "--concept",
                "Zorbu",
                "--patch",
                str(patch),
                "--force",
                "--no-misspellings",
                "--no-whitebox",
            ]
        )
        == 130
    )
    s = seen["settings"]
    assert s.misspellings == 0 and not s.whitebox
    assert main(["attack", "--concept", "Zorbu", "--patch", str(patch), "--force"]) == 130
    assert seen["settings"].misspellings == AttackSettings().misspellings > 0


@pytest.mark.skipif(not weights_available(), reason="no embedded model weights")
def test_a_correction_patch_is_not_attacked(tmp_path, capsys):
    """The attack check brings back what a patch removed; a correction removed nothing, so
    the command refuses it (as the app does) before any image is drawn."""
    from fmn_desktop.patch import load_patch, save_patch

    patch = load_patch(READY_ZORBU)
    patch.meta.kind = "correct"
    path = tmp_path / "redirect-Zorbu.safetensors"
    save_patch(patch, path)
    argv = ["--threads", "1", "attack", "--concept", "Zorbu", "--patch", str(path)]
    assert main([*argv, "--budget", "1", "--seeds", "1", "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "redirect-Zorbu.safetensors" in err and "for forget patches" in err
    assert not (tmp_path / "attack.json").exists()
