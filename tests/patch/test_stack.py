"""Stacks: additive sum, closed-form fusion (exact, order-free), conflicts, verbs, export."""

import pytest
import torch

from fmn_desktop.errors import FmnError, PatchMismatchError
from fmn_desktop.patch import Delta, Patch, PatchedUNet, PatchMeta, load_patch, unet_module_names
from fmn_desktop.patch.stack import (
    ComposeSettings,
    FusionSolver,
    PatchStack,
    StackConflictError,
    StackEntry,
    compose,
    export_stack,
    find_conflicts,
    preservation_prompts,
    prompt_embeddings,
    prompts_without,
    stack_preservation_prompts,
)

K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
V = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"
Q = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"


class Model:
    """The parts of a LoadedModel the stack functions use."""

    def __init__(self, pipe, fingerprint="base-fp", family="sd1"):
        self.pipe, self.fingerprint, self.family = pipe, fingerprint, family
        self.source = "tiny"


def _patch(unet, concepts, seed, kind="forget", names=(K, V), base="base-fp", n_emb=4):
    params = dict(unet.named_parameters())
    g = torch.Generator().manual_seed(seed)
    deltas = {n: Delta(dense=torch.randn(params[n].shape, generator=g) * 0.05) for n in names}
    dim = unet.config.cross_attention_dim
    meta = PatchMeta(
        concepts=list(concepts),
        kind=kind,
        base_fingerprint=base,
        stats={"concept_embeddings": torch.randn(n_emb, dim, generator=g).to(torch.float16)},
    )
    return Patch(deltas, meta)


def _snapshot(unet):
    return {n: p.detach().clone() for n, p in unet.named_parameters()}


def test_additive_equals_patched_unet_sum(tiny_pipe):
    unet = tiny_pipe.unet
    a, b = _patch(unet, ["castle"], 1), _patch(unet, ["dog"], 2, names=(K, Q))
    deltas = compose([StackEntry(a, 1.0), StackEntry(b, -0.5)], unet)
    before = _snapshot(unet)
    with PatchedUNet(unet, [(a, 1.0), (b, -0.5)]):
        after = _snapshot(unet)
    for name in (K, V, Q):
        torch.testing.assert_close(after[name], before[name] + deltas[name], rtol=0, atol=1e-7)
    torch.testing.assert_close(deltas[K], a.deltas[K].dense - 0.5 * b.deltas[K].dense)


def _direct_lstsq(w0, items, pres, l1, ridge):
    """The fusion objective (`fmn_desktop.patch.stack`) as one stacked least-squares problem."""
    rows_x, rows_y = [], []
    for w_i, e in items:
        rows_x.append(e)
        rows_y.append(e @ w_i.T)
    rows_x.append(pres * l1**0.5)
    rows_y.append((pres @ w0.T) * l1**0.5)
    gram = sum(e.T @ e for _, e in items) + l1 * pres.T @ pres
    lam = ridge * float(torch.diagonal(gram).mean())
    d = w0.shape[1]
    rows_x.append(torch.eye(d, dtype=torch.float64) * lam**0.5)
    rows_y.append(w0.T * lam**0.5)
    x, y = torch.cat(rows_x), torch.cat(rows_y)
    return torch.linalg.lstsq(x, y).solution.T


def test_fusion_solves_the_least_squares_objective():
    g = torch.Generator().manual_seed(0)
    name = "x.attn2.to_k.weight"
    w0 = torch.randn(8, 6, generator=g, dtype=torch.float64)
    d1, d2 = (torch.randn(8, 6, generator=g, dtype=torch.float64) for _ in range(2))
    e1, e2 = (
        torch.randn(3, 6, generator=g, dtype=torch.float64),
        torch.randn(2, 6, generator=g, dtype=torch.float64),
    )
    pres = torch.randn(10, 6, generator=g, dtype=torch.float64)
    p1 = Patch({name: Delta(dense=d1.float())}, PatchMeta(concepts=["a"]))
    p2 = Patch({name: Delta(dense=d2.float())}, PatchMeta(concepts=["b"]))
    solver = FusionSolver(pres, preserve_weight=0.5, ridge=1e-2)
    solver.add("a", p1, 1.0, e1)
    solver.add("b", p2, -0.7, e2)
    got = solver.solve({name: w0.float()})[name].double()
    want = _direct_lstsq(
        w0, [(w0 + d1.float().double(), e1), (w0 - 0.7 * d2.float().double(), e2)], pres, 0.5, 1e-2
    )
    torch.testing.assert_close(w0 + got, want, atol=1e-5, rtol=1e-5)


def test_fusion_keeps_each_patch_on_its_own_concepts():
    """Orthogonal concepts: fused keeps each patch's effect, additive makes them interfere."""
    g = torch.Generator().manual_seed(1)
    name = "x.attn2.to_v.weight"
    w0 = torch.randn(16, 8, generator=g)
    basis = torch.linalg.qr(torch.randn(8, 8, generator=g))[0].T
    e1, e2 = basis[:2], basis[2:4]
    d1, d2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    p1 = Patch({name: Delta(dense=d1)}, PatchMeta(concepts=["a"], stats={"concept_embeddings": e1}))
    p2 = Patch({name: Delta(dense=d2)}, PatchMeta(concepts=["b"], stats={"concept_embeddings": e2}))
    solver = FusionSolver(None, ridge=1e-6)
    solver.add("a", p1)
    solver.add("b", p2)
    fused = w0 + solver.solve({name: w0})[name]
    torch.testing.assert_close(fused @ e1.T, (w0 + d1) @ e1.T, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused @ e2.T, (w0 + d2) @ e2.T, atol=1e-4, rtol=1e-4)
    additive = w0 + d1 + d2
    assert (additive @ e1.T - (w0 + d1) @ e1.T).norm() > 0.5
    # and other directions keep the base response
    torch.testing.assert_close(fused @ basis[4:].T, w0 @ basis[4:].T, atol=1e-4, rtol=1e-4)


def test_fusion_reports_the_share_of_each_patch_it_keeps():
    """Orthogonal concepts are kept whole; two patches pulling one concept apart are not,
    and the composed stack refuses them, naming the patch, unless forced."""
    g = torch.Generator().manual_seed(2)
    name = "x.attn2.to_v.weight"
    w0 = torch.randn(16, 8, generator=g)
    basis = torch.linalg.qr(torch.randn(8, 8, generator=g))[0].T
    d1, d2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)

    def patch(d, e):
        return Patch(
            {name: Delta(dense=d)}, PatchMeta(concepts=["c"], stats={"concept_embeddings": e})
        )

    apart = FusionSolver(None, ridge=1e-6)
    apart.add("a", patch(d1, basis[:2]))
    apart.add("b", patch(d2, basis[2:4]))
    kept = apart.kept(apart.solve({name: w0}), {name: w0})
    assert kept["a"] > 0.999 and kept["b"] > 0.999
    same = FusionSolver(None, ridge=1e-6)
    same.add("a", patch(d1, basis[:2]))
    same.add("b", patch(-d1, basis[:2]))  # opposite changes on the same tokens: both lost
    kept = same.kept(same.solve({name: w0}), {name: w0})
    assert kept["a"] < 0.05 and kept["b"] < 0.05


def test_a_fused_stack_that_loses_a_patch_is_refused(tiny_pipe):
    from fmn_desktop.patch.stack import composed_patch, fusion_losses

    a = _patch(tiny_pipe.unet, ["castle"], 1)
    b = _patch(tiny_pipe.unet, ["tower"], 2)
    b.meta.stats["concept_embeddings"] = a.meta.stats["concept_embeddings"].clone()
    entries = [StackEntry(a, 1.0, "castle"), StackEntry(b, 1.0, "tower")]
    settings = ComposeSettings(mode="fused", preserve_weight=0.0)
    report = {}
    compose(entries, tiny_pipe.unet, settings, tiny_pipe, report=report)
    losers = fusion_losses(report)
    assert {c.entries[0] for c in losers} == {"castle", "tower"}
    assert "keeps" in losers[0].message
    with pytest.raises(StackConflictError, match="cannot honour every patch"):
        composed_patch(Model(tiny_pipe), entries, settings)
    patch = composed_patch(Model(tiny_pipe), entries, settings, force=True)
    assert set(patch.meta.hyperparameters["fusion_kept"]) == {"castle", "tower"}


def test_fused_is_bit_identical_whatever_the_order(tiny_pipe):
    unet = tiny_pipe.unet
    pres = torch.randn(20, unet.config.cross_attention_dim)
    pa, pb, pc = (_patch(unet, [c], s) for c, s in (("castle", 1), ("dog", 2), ("tree", 3)))
    s = ComposeSettings(mode="fused")

    def run(entries):
        return compose(entries, unet, s, preservation=pres)

    a, b, c = StackEntry(pa, 1.0, "a"), StackEntry(pb, 0.5, "b"), StackEntry(pc, -1.0, "c")
    one, two = run([a, b, c]), run([c, a, b])
    assert set(one) == {K, V}
    assert all(torch.equal(one[n], two[n]) for n in one)
    # removing b from either stack equals never having added it
    assert all(torch.equal(run([a, c])[n], run([c, a])[n]) for n in one)


def test_patch_stack_verbs_resolve_exactly_and_restore_bits(tiny_pipe):
    unet = tiny_pipe.unet
    model = Model(tiny_pipe)
    before = _snapshot(unet)
    pa, pb = _patch(unet, ["castle"], 1), _patch(unet, ["dog"], 2)
    stack = PatchStack(model, mode="fused")
    stack.load(pa, "a")
    stack.load(pb, "b", strength=0.5)
    stack.fuse()
    assert stack.is_fused and not torch.equal(dict(unet.named_parameters())[K], before[K])
    stack.unload("b")  # re-solves at once
    only_a = _snapshot(unet)
    stack.unfuse()
    fresh = PatchStack(model, mode="fused")
    fresh.load(pa, "a")
    with fresh.fused():
        assert all(torch.equal(only_a[n], p) for n, p in unet.named_parameters())
    after = _snapshot(unet)
    assert all(torch.equal(after[n], before[n]) for n in before)
    stack.set_weights(["a"], 0.3)  # a scalar broadcasts
    assert stack.list() == [("a", 0.3)]
    with pytest.raises(ValueError, match="valid: \\['a'\\]"):
        stack.set_weights("nope", 1.0)
    with pytest.raises(ValueError, match="already loaded"):
        stack.load(pa, "a")


def test_fused_mode_with_real_text_encoder_and_shipped_prompts(tiny_pipe):
    from fmn_desktop.resteer import ForgetConfig, forget

    prompts = preservation_prompts()
    assert len(prompts) >= 50 and all(p.strip() for p in prompts)
    pres = prompt_embeddings(tiny_pipe, prompts[:8])
    n_tokens = sum(len(tiny_pipe.tokenizer(p).input_ids) for p in prompts[:8])  # BOS..EOT
    assert pres.shape == (n_tokens, tiny_pipe.unet.config.cross_attention_dim)
    full = prompt_embeddings(tiny_pipe, prompts[:8], content_only=False)
    assert full.shape[0] == 8 * 77
    assert prompts_without(["a castle on a hill", "a Castle", "castles", "a dog"], ["castle"]) == [
        "castles",
        "a dog",
    ]
    cfg = dict(steps=2, num_references=1, reference_steps=1, batch_size=1)
    patch = forget(tiny_pipe, ForgetConfig(concepts=["castle"], **cfg)).patch
    deltas = compose(
        [StackEntry(patch, 1.0)],
        tiny_pipe.unet,
        ComposeSettings(mode="fused", preservation_prompts=prompts[:8]),
        tiny_pipe,
    )
    assert set(deltas) == set(patch.deltas)
    assert all(torch.isfinite(d).all() for d in deltas.values())
    kept = stack_preservation_prompts([StackEntry(patch)], ComposeSettings(mode="fused"))
    assert "a castle on a hill" in prompts and "a castle on a hill" not in kept


def test_conflicts_found_before_applying(tiny_pipe):
    unet = tiny_pipe.unet
    fa = _patch(unet, ["castle"], 1)
    other_base = _patch(unet, ["dog"], 2, base="another-fp")
    fix = _patch(unet, ["Castle"], 3, kind="correct")
    kinds = [
        c.kind for c in find_conflicts([StackEntry(fa, 1, "a"), StackEntry(other_base, 1, "b")])
    ]
    assert kinds == ["base"]
    out = find_conflicts([StackEntry(fa, 1, "a"), StackEntry(fix, 1, "fix")])
    assert [c.kind for c in out] == ["forget-and-correct"]
    assert "castle is forgotten by 'a' and corrected by 'fix'" in out[0].message
    # opposite aims on shared tokens: the same word, or the same embedding rows
    red_car = _patch(unet, ["red car"], 4)
    red = _patch(unet, ["red"], 5)
    out = find_conflicts([StackEntry(red_car, 1, "rc"), StackEntry(red, -1, "r")])
    assert [c.kind for c in out] == ["opposite-aims"] and "tokens red" in out[0].message
    assert not find_conflicts([StackEntry(red_car, 1, "rc"), StackEntry(red, 1, "r")])
    twin = _patch(unet, ["fortress"], 6)
    twin.meta.stats = dict(fa.meta.stats)
    out = find_conflicts([StackEntry(fa, 1, "a"), StackEntry(twin, -0.5, "t")])
    assert [c.kind for c in out] == ["opposite-aims"] and "same token embeddings" in out[0].message
    # applying refuses unless forced; the model is untouched
    model = Model(tiny_pipe)
    before = _snapshot(unet)
    stack = PatchStack(model)
    stack.load(fa, "a")
    stack.load(fix, "fix")
    with pytest.raises(StackConflictError, match="forgotten by"):
        stack.fuse()
    assert all(torch.equal(p, before[n]) for n, p in unet.named_parameters())
    assert [c.kind for c in stack.fuse(force=True)] == ["forget-and-correct"]
    stack.unfuse()


def test_patch_without_embeddings_cannot_fuse_without_model(tiny_pipe):
    p = _patch(tiny_pipe.unet, [], 1)
    p.meta.stats = {}
    with pytest.raises(FmnError, match="no concept embeddings"):
        compose(
            [StackEntry(p, 1, "x")],
            tiny_pipe.unet,
            ComposeSettings(mode="fused"),
            preservation=torch.zeros(1, 32),
        )


def test_export_lora_is_read_by_diffusers_and_diff_roundtrips(tiny_pipe, tmp_path):
    from tiny import tiny_sd_pipeline

    unet = tiny_pipe.unet
    model = Model(tiny_pipe)
    entries = [
        StackEntry(_patch(unet, ["castle"], 1), 1.0, "a"),
        StackEntry(_patch(unet, ["dog"], 2), 0.5, "b"),
    ]
    res = export_stack(
        model,
        entries,
        tmp_path / "s.safetensors",
        "lora",
        ComposeSettings(mode="fused"),
        max_rel_error=0.05,
    )
    assert res.lora_error is not None and res.lora_error <= 0.05 and res.rank >= 1
    theirs = tiny_sd_pipeline()
    theirs.load_lora_weights(str(res.path))
    theirs.fuse_lora()
    theirs.unload_lora_weights()
    ours = tiny_sd_pipeline()
    names = unet_module_names(ours.unet)
    PatchedUNet(ours.unet, [(load_patch(res.path, names), 1.0)]).apply()
    a, b = dict(theirs.unet.named_parameters()), dict(ours.unet.named_parameters())
    for name in (K, V):
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    back = load_patch(res.path, names)
    assert back.meta.method == "stack-fused" and back.meta.concepts == ["castle", "dog"]
    assert back.meta.stats["concept_embeddings"].shape[0] == 8  # re-stackable
    diff = export_stack(model, entries, tmp_path / "s.diff.safetensors", "diff")
    want = compose(entries, unet)
    got = load_patch(diff.path, names)
    torch.testing.assert_close(got.deltas[K].dense, want[K], rtol=0, atol=0)
    fixed = export_stack(model, entries, tmp_path / "r2.safetensors", "lora", rank=2)
    assert fixed.rank == 2 and fixed.lora_error > 0


def test_export_model_folder_and_single_file(tiny_pipe, tmp_path):
    from fmn_desktop.models import load_pipeline

    unet = tiny_pipe.unet
    model = Model(tiny_pipe)
    before = _snapshot(unet)
    entries = [StackEntry(_patch(unet, ["castle"], 1), 1.0, "a")]
    folder = export_stack(model, entries, tmp_path / "patched", "diffusers").path
    single = export_stack(model, entries, tmp_path / "patched.safetensors", "single-file").path
    assert all(torch.equal(p, before[n]) for n, p in unet.named_parameters())  # restored
    want = before[K] + entries[0].patch.deltas[K].dense
    for path in (folder, single):
        loaded = load_pipeline(path, compute_fingerprint=False)
        torch.testing.assert_close(
            dict(loaded.pipe.unet.named_parameters())[K], want, atol=1e-6, rtol=0
        )
    with pytest.raises(FmnError, match="single-file"):
        export_stack(model, entries, tmp_path / "x.bin", "single-file")


def test_wrong_shape_is_refused_naming_the_key(tiny_pipe, tmp_path):
    unet = tiny_pipe.unet
    bad = _patch(unet, ["castle"], 1)
    bad.deltas[K] = Delta(dense=torch.zeros(3, 3))
    with pytest.raises(PatchMismatchError, match="to_k.weight: delta shape"):
        export_stack(Model(tiny_pipe), [StackEntry(bad, 1, "bad")], tmp_path / "o.safetensors")
