"""Peak memory of loading real-size checkpoints, and of `fmn apply` on them.

Builds RANDOM-weight checkpoints with the exact tensor layout of the shipped SD1.5 / SDXL
configs (UNet, VAE, text encoder(s)): one LDM-layout `.safetensors` file and one diffusers
folder, written tensor by tensor (the builder itself stays small). Each measurement then runs
in a fresh Python process that imports everything first, loads the model the way the product
does (`load_pipeline`, or `fmn apply` with a one-tensor patch to a new single file), and
reports its peak resident memory (`ru_maxrss`). The ratio is peak / weights on disk; "over
imports" leaves out what the process held before loading (torch, diffusers, transformers).

    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/measure_loading_memory.py \
        --family sd1 --dtype fp32 --tmp /tmp/fmn-mem
    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/measure_loading_memory.py \
        --family sdxl --dtype fp16 --tmp /tmp/fmn-mem

The checkpoints are deleted afterwards unless `--keep`. SD1.5 fp32 needs ~8.6 GB of disk
(file and folder) and ~5 GB of RAM; SDXL fp16 ~14 GB of disk and ~8 GB of RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

DTYPES = {"fp32": "float32", "fp16": "float16"}
SCENARIOS = ("file", "folder", "apply")


# --------------------------------------------------------------------------- building
def _meta_components(family: str):
    """The family's UNet, VAE and text encoder(s) on the meta device (shapes only)."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from fmn_desktop.models import config_dir

    folder = config_dir(family)

    def text(sub):
        cfg = json.loads((folder / sub / "config.json").read_text())
        cls = getattr(transformers, cfg["architectures"][0])
        return cls(cls.config_class.from_pretrained(str(folder / sub), local_files_only=True))

    with torch.device("meta"):
        parts = {
            "unet": UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(str(folder / "unet"))
            ),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder / "vae"))),
            "text_encoder": text("text_encoder"),
        }
        if family == "sdxl":
            parts["text_encoder_2"] = text("text_encoder_2")
    return folder, parts


def _random(spec, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    if spec.dtype.is_floating_point:
        return (torch.randn(spec.shape, generator=gen) * 0.02).to(spec.dtype)
    return torch.zeros(spec.shape, dtype=spec.dtype)


def build(family: str, dtype_name: str, root: Path, file: bool, folder: bool) -> tuple[Path, Path]:
    """A random LDM single file and a random diffusers folder of `family`'s real layout."""
    import torch

    dtype = getattr(torch, DTYPES[dtype_name])
    folder_cfg, parts = _meta_components(family)
    root.mkdir(parents=True, exist_ok=True)

    single = root / f"{family}-{dtype_name}.safetensors"
    out = root / f"{family}-{dtype_name}"
    if file:
        _build_file(family, dtype, parts, single)
    if folder:
        _build_folder(dtype, folder_cfg, parts, out)
    return single, out


def _build_file(family, dtype, parts, single: Path) -> None:
    from types import SimpleNamespace

    from fmn_desktop.models.ldm import pipeline_to_ldm
    from fmn_desktop.models.tensorfile import TensorSpec, write_tensors

    ldm = pipeline_to_ldm(SimpleNamespace(**parts), family)
    specs = {k: TensorSpec(dtype, tuple(v.shape)) for k, v in ldm.items()}
    names = sorted(specs)
    seeds = {n: i for i, n in enumerate(names)}
    write_tensors(single, specs, lambda n: _random(specs[n], seeds[n]), {"format": "pt"})


def _build_folder(dtype, folder_cfg, parts, folder: Path) -> None:
    from fmn_desktop.models.tensorfile import TensorSpec, write_tensors

    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(folder_cfg, folder)
    for name, module in parts.items():
        sd = module.state_dict()
        specs = {
            k: TensorSpec(dtype if v.is_floating_point() else v.dtype, tuple(v.shape))
            for k, v in sd.items()
        }
        file = (
            "model.safetensors"
            if name.startswith("text")
            else "diffusion_pytorch_model.safetensors"
        )
        seeds = {n: i for i, n in enumerate(sorted(specs))}
        write_tensors(
            folder / name / file,
            specs,
            lambda n, specs=specs, seeds=seeds: _random(specs[n], seeds[n]),
            {"format": "pt"},
        )


def _patch(family: str, root: Path) -> Path:
    """A one-tensor dense patch for the family's UNet (what `fmn apply` adds)."""
    import torch

    from fmn_desktop.patch.format import Delta, Patch, PatchMeta, save_patch

    _, parts = _meta_components(family)
    name = next(n for n, _ in parts["unet"].named_parameters() if n.endswith("attn2.to_k.weight"))
    shape = tuple(parts["unet"].get_parameter(name).shape)
    delta = Delta(dense=torch.full(shape, 1e-3))
    return save_patch(
        Patch({name: delta}, PatchMeta(concepts=["x"], family=family)), root / "p.safetensors"
    )


# --------------------------------------------------------------------------- measuring
def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(scenario: str, path: str, dtype_name: str, patch: str | None, out: str | None) -> None:
    import diffusers  # noqa: F401  (the libraries are imported before the baseline)
    import torch
    import transformers  # noqa: F401

    from fmn_desktop.cli import main as cli_main
    from fmn_desktop.models import load_pipeline

    torch.set_num_threads(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if scenario == "apply":
        code = cli_main(["apply", path, patch, "--out", out, "--dtype", dtype_name])
        if code:
            raise SystemExit(code)
    else:
        model = load_pipeline(path, dtype=getattr(torch, DTYPES[dtype_name]))
        assert model.unet is not None
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before_mb": before, "peak_mb": peak, "after_mb": _rss_mb(), "s": seconds}))


def weights_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*.safetensors"))
    return path.stat().st_size


def measure(scenario: str, path: Path, dtype_name: str, patch=None, out=None, code=None) -> dict:
    cmd = [sys.executable, __file__, "--child", scenario, str(path), "--dtype", dtype_name]
    if patch:
        cmd += ["--patch", str(patch), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if code:  # measure another checkout of the package (e.g. the code before a change)
        env["PYTHONPATH"] = str(code)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"{scenario} failed:\n{res.stderr[-3000:]}")
    row = json.loads(res.stdout.strip().splitlines()[-1])
    size = weights_bytes(path) / 2**20
    row.update(
        scenario=scenario,
        weights_mb=size,
        ratio=row["peak_mb"] / size,
        ratio_over_imports=(row["peak_mb"] - row["before_mb"]) / size,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/fmn-loading-memory"))
    ap.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--keep", action="store_true", help="keep the built checkpoints")
    ap.add_argument(
        "--code", type=Path, help="load with the package from this checkout (default: this one)"
    )
    ap.add_argument("--child", nargs=2, metavar=("SCENARIO", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--patch", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.dtype, args.patch, args.out)
        return

    root = args.tmp / f"{args.family}-{args.dtype}"
    try:
        single = root / f"{args.family}-{args.dtype}.safetensors"
        folder = root / f"{args.family}-{args.dtype}"
        need_file = not single.is_file() and {"file", "apply"} & set(args.scenarios)
        need_folder = not (folder / "unet").is_dir() and "folder" in args.scenarios
        if need_file or need_folder:
            t0 = time.perf_counter()
            build(args.family, args.dtype, root, bool(need_file), need_folder)
            print(f"built {single} and {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for scenario in args.scenarios:
            if scenario == "folder":
                rows.append(measure("folder", folder, args.dtype, code=args.code))
            elif scenario == "file":
                rows.append(measure("file", single, args.dtype, code=args.code))
            elif args.dtype != "fp32":
                print("apply skipped: fmn apply runs in fp32 on the CPU (fp16 is for CUDA)")
                continue
            else:
                patch = _patch(args.family, root)
                out = root / "applied.safetensors"
                rows.append(measure("apply", single, args.dtype, patch, out, args.code))
                out.unlink(missing_ok=True)
            r = rows[-1]
            print(
                f"{args.family} {args.dtype} {r['scenario']:<6} weights {r['weights_mb']:8.0f} MB  "
                f"imports {r['before_mb']:6.0f} MB  peak {r['peak_mb']:8.0f} MB  "
                f"after {r['after_mb']:8.0f} MB  ratio {r['ratio']:.2f}  "
                f"over imports {r['ratio_over_imports']:.2f}  {r['s']:.0f} s",
                flush=True,
            )
        print(json.dumps(rows))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
