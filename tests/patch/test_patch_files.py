import pickle

import pytest
import torch
from safetensors.torch import save_file

from fmn_desktop.errors import PatchFormatError, PatchMismatchError
from fmn_desktop.patch import (
    Delta,
    Patch,
    PatchedUNet,
    PatchMeta,
    load_patch,
    read_metadata,
    save_patch,
    svd_lowrank,
    to_lora,
    unet_module_names,
)

K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
V = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"


def _dense_patch(unet, scale=0.05, fingerprint="base-fp"):
    params = dict(unet.named_parameters())
    g = torch.Generator().manual_seed(3)
    deltas = {n: Delta(dense=torch.randn(params[n].shape, generator=g) * scale) for n in (K, V)}
    meta = PatchMeta(
        concepts=["castle"],
        family="sd1",
        base_fingerprint=fingerprint,
        hyperparameters={"steps": 3},
    )
    return Patch(deltas, meta)


def _snapshot(unet):
    return {n: p.detach().clone() for n, p in unet.named_parameters()}


def test_diff_roundtrip_keeps_values_and_metadata(tiny_pipe, tmp_path):
    patch = _dense_patch(tiny_pipe.unet)
    path = save_patch(patch, tmp_path / "p.safetensors", "diff")
    meta = read_metadata(path)
    assert meta["fmn.base_fingerprint"] == "base-fp"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/diff"
    back = load_patch(path, unet_module_names(tiny_pipe.unet))
    assert set(back.deltas) == {K, V}
    torch.testing.assert_close(back.deltas[K].dense, patch.deltas[K].dense, rtol=0, atol=0)
    assert back.meta.concepts == ["castle"] and back.meta.hyperparameters == {"steps": 3}


def test_kohya_key_names(tiny_pipe, tmp_path):
    lora, _ = to_lora(_dense_patch(tiny_pipe.unet), rank=2)
    path = save_patch(lora, tmp_path / "p.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
        meta = fh.metadata()
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= keys
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["ss_network_dim"] == "2"


def test_apply_and_restore_is_bit_exact(tiny_pipe):
    unet = tiny_pipe.unet
    before = _snapshot(unet)
    patch = _dense_patch(unet)
    with PatchedUNet(unet, [(patch, 0.7), (patch, -0.2)]):
        params = dict(unet.named_parameters())
        expected = before[K] + 0.5 * patch.deltas[K].dense
        torch.testing.assert_close(params[K], expected, atol=1e-6, rtol=0)
        assert not torch.equal(params[K], before[K])
    after = _snapshot(unet)
    assert all(torch.equal(after[n], before[n]) for n in before)


def test_our_apply_equals_diffusers_load_lora_weights(tiny_pipe, tmp_path):
    """diffusers' kohya reader is the independent check of the files we write."""
    from tiny import tiny_sd_pipeline

    patch, err = to_lora(_dense_patch(tiny_pipe.unet), max_rel_error=0.3)
    path = save_patch(patch, tmp_path / "p.safetensors")
    ours = tiny_sd_pipeline()
    PatchedUNet(ours.unet, [(load_patch(path, unet_module_names(ours.unet)), 1.0)]).apply()
    theirs = tiny_sd_pipeline()
    theirs.load_lora_weights(str(path))
    theirs.fuse_lora()
    theirs.unload_lora_weights()
    a, b = dict(theirs.unet.named_parameters()), dict(ours.unet.named_parameters())
    assert set(a) == set(b)
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    assert not torch.equal(b[K], dict(tiny_sd_pipeline().unet.named_parameters())[K])


def test_svd_error_bound_and_exact_rank():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(40, 3, generator=g) @ torch.randn(3, 24, generator=g)
    delta, err = svd_lowrank(low, rank=3)
    assert err < 1e-5
    torch.testing.assert_close(delta.to_dense(), low, atol=1e-4, rtol=1e-4)
    noisy = low + 0.05 * torch.randn(40, 24, generator=g)
    delta, err = svd_lowrank(noisy, max_rel_error=0.05)
    assert err <= 0.05 and delta.rank < 24
    measured = (delta.to_dense() - noisy).norm() / noisy.norm()
    assert abs(measured.item() - err) < 1e-4


def test_truncated_file_is_refused(tiny_pipe, tmp_path):
    path = save_patch(_dense_patch(tiny_pipe.unet), tmp_path / "p.safetensors", "diff")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(PatchFormatError):
        load_patch(cut)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(PatchFormatError):
        load_patch(garbage)


def test_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "patch.ckpt"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(PatchFormatError, match="pickled"):
        load_patch(path)
    renamed = tmp_path / "patch.safetensors"
    renamed.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(PatchFormatError):
        load_patch(renamed)
    assert not marker.exists()


def test_patch_for_another_base_is_refused_unless_forced(tiny_pipe):
    patch = _dense_patch(tiny_pipe.unet, fingerprint="aaaa")
    before = _snapshot(tiny_pipe.unet)
    with pytest.raises(PatchMismatchError, match="another base|base model"):
        PatchedUNet(tiny_pipe.unet, [(patch, 1.0)], fingerprint="bbbb").apply()
    assert all(torch.equal(p, before[n]) for n, p in tiny_pipe.unet.named_parameters())
    with PatchedUNet(tiny_pipe.unet, [(patch, 1.0)], fingerprint="bbbb", force=True):
        pass


def test_wrong_shapes_and_keys_name_the_keys(tiny_pipe, tmp_path):
    bad = Patch({K: Delta(dense=torch.zeros(3, 3))}, PatchMeta(concepts=["x"]))
    with pytest.raises(PatchMismatchError, match="attn2.to_k.weight"):
        PatchedUNet(tiny_pipe.unet, [(bad, 1.0)]).apply()
    path = tmp_path / "foreign.safetensors"
    save_file({"lora_unet_input_blocks_99_to_k.diff": torch.zeros(2, 2)}, str(path))
    with pytest.raises(PatchMismatchError, match="input_blocks_99"):
        load_patch(path, unet_module_names(tiny_pipe.unet))


def test_nan_patch_is_refused(tiny_pipe, tmp_path):
    from safetensors.torch import save_file

    from fmn_desktop.errors import NonFiniteError

    patch = _dense_patch(tiny_pipe.unet)
    patch.deltas[K].dense[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):  # never written ...
        save_patch(patch, tmp_path / "nan.safetensors", "diff")
    assert not (tmp_path / "nan.safetensors").exists()
    path = tmp_path / "theirs.safetensors"  # ... nor read from someone else's file
    save_file(
        {"lora_unet_" + K.rpartition(".")[0].replace(".", "_") + ".diff": patch.deltas[K].dense},
        path,
    )
    with pytest.raises(NonFiniteError, match="NaN"):
        load_patch(path)


def test_stats_travel_in_metadata_not_as_weights(tiny_pipe, tmp_path):
    patch = _dense_patch(tiny_pipe.unet)
    emb = torch.randn(5, 32).half()
    patch.meta.stats["concept_embeddings"] = emb
    path = save_patch(patch, tmp_path / "p.safetensors", "diff")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        assert all(k.startswith("lora_unet_") for k in fh.keys())
    back = load_patch(path)
    assert torch.equal(back.meta.stats["concept_embeddings"], emb)


def test_forget_records_concept_embeddings(tiny_pipe):
    from fmn_desktop.resteer import ForgetConfig, forget

    res = forget(
        tiny_pipe,
        ForgetConfig(
            concepts=["castle"], steps=1, num_references=1, reference_steps=1, batch_size=1
        ),
    )
    emb = res.patch.meta.stats["concept_embeddings"]
    # 3 object templates ("a photo of {}", "a picture of {}", "{}"): castle at positions 4, 4
    # and 1, re-steered with every later position (default), text width 32
    assert emb.shape == ((77 - 4) + (77 - 4) + (77 - 1), 32)


def test_written_files_get_the_usual_mode_not_the_temporary_files(tmp_path):
    # Atomic writes go through a private temporary file (mkstemp: 0600); the file the user
    # gets has the mode of any file they create: 0666 minus the umask (0644 under umask 022).
    from fmn_desktop import fileio

    path = tmp_path / "p.safetensors"
    fileio.atomic_write_bytes(path, b"data")
    assert path.read_bytes() == b"data"
    assert path.stat().st_mode & 0o777 == 0o666 & ~fileio._UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temporary left


def test_streamed_patched_export_equals_patching_in_place(tiny_pipe, tmp_path):
    """`export_single_file(unet_weights=patched_weights(...))` writes the very file that
    exporting a model patched in place writes, and leaves the model untouched."""
    from safetensors.torch import load_file

    from fmn_desktop.errors import NonFiniteError
    from fmn_desktop.models import export_single_file
    from fmn_desktop.patch import patched_weights

    unet = tiny_pipe.unet
    before = _snapshot(unet)
    patch = _dense_patch(unet)
    patches = [(patch, 0.7), (patch, -0.2)]
    streamed = export_single_file(
        tiny_pipe,
        tmp_path / "streamed.safetensors",
        unet_weights=patched_weights(unet, patches, "base-fp"),
    )
    assert all(torch.equal(p, before[n]) for n, p in unet.named_parameters())
    with PatchedUNet(unet, patches, fingerprint="base-fp"):
        in_place = export_single_file(tiny_pipe, tmp_path / "in_place.safetensors")
    a, b = load_file(str(streamed)), load_file(str(in_place))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert streamed.read_bytes() == in_place.read_bytes()
    ldm_k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert not torch.equal(
        a[ldm_k],
        load_file(str(export_single_file(tiny_pipe, tmp_path / "base.safetensors")))[ldm_k],
    )

    with pytest.raises(PatchMismatchError):
        patched_weights(unet, patches, "another-base")
    huge = Patch({K: Delta(dense=torch.full(before[K].shape, 1e37))}, PatchMeta([]))
    with pytest.raises(NonFiniteError):
        export_single_file(
            tiny_pipe,
            tmp_path / "bad.safetensors",
            unet_weights=patched_weights(unet, [(huge, 100.0)]),
        )
    assert not (tmp_path / "bad.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "base.safetensors",
        "in_place.safetensors",
        "streamed.safetensors",
    ]
