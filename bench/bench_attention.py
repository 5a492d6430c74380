"""Benchmark: fused re-steering attention vs eager and SDPA paths, at SD cross-attention shapes.

Providers, all computing the attention output AND the re-steering term, all differentiable:

* ``triton``       the fused kernel (`fmn_kernels.resteer_attention(backend="triton")`);
* ``torch-eager``  scores, softmax and ``P v`` in the input dtype with P materialised and kept
                   for backward (`fmn_kernels.resteer_attention_eager`, what an attention
                   processor does today);
* ``torch-sdpa``   `F.scaled_dot_product_attention` for the output, plus the probabilities
                   computed separately (materialised) for the term.

Modes ``fwd`` (inputs requiring grad), ``bwd`` (backward of both outputs only) and ``full``.
Times are medians (with p20-p80) from `triton.testing.do_bench`, all providers measured side
by side in one run; memory is what the forward keeps alive for backward and the peak of
fwd+bwd, above the inputs. The bandwidth floor is the minimum traffic of the fused kernel
(read q, k, v and dO; write out, dq, dk, dv; the row LSE once each way) divided by the
device-to-device copy bandwidth measured in the same run.

Usage (on a CUDA machine)::

    python bench/bench_attention.py                 # all presets, fp16, appends docs/research/BENCHMARKS.md
    python bench/bench_attention.py --preset sdxl --dtype bf16 --no-write
    python bench/bench_attention.py --smoke         # CPU interpreter, tiny shapes, checks the
                                                    # script only: figures are NOT benchmarks
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "docs" / "research" / "BENCHMARKS.md"

# (label, M = H*W of the latent at that level, heads, head dim); key length N = 77, batch 2.
PRESETS: dict[str, list[tuple[str, int, int, int]]] = {
    # SD1.5 at 512 px: 64x64 latent, channels 320/640/1280, 8 heads.
    "sd15": [
        ("sd15-512 64x64", 4096, 8, 40),
        ("sd15-512 32x32", 1024, 8, 80),
        ("sd15-512 16x16", 256, 8, 160),
        ("sd15-512 mid 8x8", 64, 8, 160),
    ],
    # SD2.1 at 768 px: 96x96 latent, head dim 64, 5/10/20 heads.
    "sd21": [
        ("sd21-768 96x96", 9216, 5, 64),
        ("sd21-768 48x48", 2304, 10, 64),
        ("sd21-768 24x24", 576, 20, 64),
        ("sd21-768 mid 12x12", 144, 20, 64),
    ],
    # SDXL at 1024 px: attention at 64x64 (10 heads) and 32x32 (20 heads), head dim 64.
    "sdxl": [("sdxl-1024 64x64", 4096, 10, 64), ("sdxl-1024 32x32", 1024, 20, 64)],
}
SMOKE_SHAPES = [("smoke 48", 48, 2, 40), ("smoke 70", 70, 2, 64)]
PROVIDERS = ("triton", "torch-eager", "torch-sdpa")
MODES = ("fwd", "bwd", "full")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="all", choices=["all", *PRESETS])
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--keys", type=int, default=77, help="key length N (77 per prompt chunk)")
    ap.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    ap.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="CPU interpreter, tiny shapes, wall-clock: checks the script, never writes figures",
    )
    return ap.parse_args(argv)


ARGS = parse_args()
if ARGS.smoke:
    os.environ["TRITON_INTERPRET"] = "1"  # before fmn_kernels.triton_resteer is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from fmn_kernels import resteer_attention, resteer_attention_eager  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def sdpa_with_probs(q, k, v, mask, scale=None):
    """SDPA for the output, the probabilities computed again (and kept) for the term."""
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probs = (torch.matmul(q, k.transpose(-1, -2)) * scale).float().softmax(-1).to(q.dtype)
    resteer = (probs.float().square() * mask[:, None, None, :]).sum(dim=(-1, -2))
    return out, resteer


FNS = {
    "triton": lambda q, k, v, m: resteer_attention(q, k, v, m, backend="triton"),
    "torch-eager": lambda q, k, v, m: resteer_attention_eager(q, k, v, m),
    "torch-sdpa": lambda q, k, v, m: sdpa_with_probs(q, k, v, m),
}


def make_inputs(b, h, m, n, d, dtype, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (
        torch.randn(b, h, L, d, generator=gen).to(device, dtype).requires_grad_() for L in (m, n, n)
    )
    mask = torch.zeros(b, n, device=device)
    for i in range(b):
        mask[i, 2 + i : 4 + i] = 1.0  # a different concept span per sample
    d_out = torch.randn(b, h, m, d, generator=gen).to(device, dtype)
    d_res = torch.randn(b, h, generator=gen).to(device) / m
    return q, k, v, mask, d_out, d_res


def timer(smoke: bool):
    """(fn, grad_to_none) -> (median, p20, p80) in ms."""
    if not smoke:

        def bench(fn, grad_to_none):
            med, lo, hi = triton.testing.do_bench(
                fn, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8]
            )
            return med, lo, hi

        return bench

    def wall(fn, grad_to_none):  # the interpreter has no driver for do_bench
        times = []
        for _ in range(3):
            for t in grad_to_none:
                t.grad = None
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), min(times), max(times)

    return wall


def time_provider(bench, fn, inputs):
    q, k, v, mask, d_out, d_res = inputs
    grads = [q, k, v]
    res = {}
    res["fwd"] = bench(lambda: fn(q, k, v, mask), grads)
    outputs = fn(q, k, v, mask)
    res["bwd"] = bench(
        lambda: torch.autograd.backward(outputs, (d_out, d_res), retain_graph=True), grads
    )

    def full():
        o, r = fn(q, k, v, mask)
        torch.autograd.backward((o, r), (d_out, d_res))

    res["full"] = bench(full, grads)
    return res


def memory_provider(fn, inputs) -> tuple[float, float]:
    """(MiB kept alive by the forward, MiB peak of fwd+bwd), both above the inputs."""
    q, k, v, mask, d_out, d_res = inputs
    for t in (q, k, v):
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out, resteer = fn(q, k, v, mask)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - base
    torch.autograd.backward((out, resteer), (d_out, d_res))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out, resteer
    for t in (q, k, v):
        t.grad = None
    return kept / 2**20, peak / 2**20


def copy_bandwidth(device) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), measured now."""
    x = torch.empty(2**28, dtype=torch.float16, device=device)  # 512 MiB
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), quantiles=[0.5])
    ms = ms[0] if isinstance(ms, list | tuple) else ms
    return 2 * 2**28 * 2 / (ms * 1e-3)


def floor_bytes(b, h, m, n, d, itemsize) -> dict[str, float]:
    """Minimum traffic of the fused kernel per mode."""
    qo = b * h * m * d * itemsize
    kv = b * h * n * d * itemsize
    lse = b * h * m * 4
    fwd = qo + 2 * kv + qo + lse  # read q, k, v; write out, lse
    bwd = 2 * qo + 2 * kv + lse + qo + 2 * kv  # read q, dO, k, v, lse; write dq, dk, dv
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}


def environment(device) -> dict[str, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cuda = torch.version.cuda or "?"
    else:
        name, cuda = "CPU (interpreter smoke run)", "-"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": cuda,
        "python": sys.version.split()[0],
    }


def fmt_ms(t) -> str:
    return f"{t[0]:.3f}"


def main() -> int:
    args = ARGS
    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        print(
            "bench_attention: no CUDA device. Timings are only taken on a GPU; use --smoke "
            "to check the script on the CPU.",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    dtype = DTYPES[args.dtype]
    if smoke and dtype == torch.bfloat16:
        print("bf16 is wrong under the interpreter; smoke runs use fp16/fp32", file=sys.stderr)
        return 2
    shapes = (
        SMOKE_SHAPES
        if smoke
        else (
            [s for p in PRESETS.values() for s in p]
            if args.preset == "all"
            else PRESETS[args.preset]
        )
    )
    env = environment(device)
    bench = timer(smoke)
    bw = None if smoke else copy_bandwidth(device)
    itemsize = torch.empty((), dtype=dtype).element_size()

    rows, mem_rows = [], []
    stopped = ""

    def on_term(signum, frame):  # `timeout` sends SIGTERM: keep what was measured so far
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        for label, m, h, d in shapes:
            rows_for_shape, mem_row = bench_shape(
                args, bench, bw, itemsize, dtype, device, label, m, h, d, smoke
            )
            rows += rows_for_shape
            if mem_row:
                mem_rows.append(mem_row)
    except KeyboardInterrupt:
        stopped = (
            f"**Partial run: stopped (time limit or interrupt) after {len(rows) // 3} "
            f"of {len(shapes)} shapes.**\n"
        )

    title = (
        f"### bench_attention, {env['date']}, {env['device']}, {args.dtype}\n\n"
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
        f"python {env['python']}; batch {args.batch}, N {args.keys}; "
        + (
            f"copy bandwidth (measured now) {bw / 1e12:.2f} TB/s.\n"
            if bw
            else "smoke run: NOT a benchmark.\n"
        )
        + stopped
    )
    text = "\n".join([title, TIME_HEADER, "|" + "---|" * 8, *rows, ""])
    if mem_rows:
        text += "\n".join(["", MEM_HEADER, "|" + "---|" * 4, *mem_rows, ""])
    print("\n" + text)
    if smoke or args.no_write or not rows:
        print("(not written to", args.out, ")")
        return 0 if not stopped else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as fh:
        fh.write("\n" + text)
    print("appended to", args.out)
    return 0 if not stopped else 1


TIME_HEADER = (
    "| shape (B,H,M,N,D) | mode | triton ms [p20-p80] | eager ms | sdpa ms "
    "| eager/triton | sdpa/triton | triton % of floor |"
)
MEM_HEADER = (
    "| shape (B,H,M,N,D) | kept MiB triton / eager / sdpa "
    "| peak MiB triton / eager / sdpa | eager/triton peak |"
)


def bench_shape(args, bench, bw, itemsize, dtype, device, label, m, h, d, smoke):
    """Table rows (one per mode) and the memory row for one layer shape."""
    b, n = args.batch, args.keys
    inputs = make_inputs(b, h, m, n, d, dtype, device)
    times = {p: time_provider(bench, FNS[p], inputs) for p in PROVIDERS}
    shape = f"{label} ({b},{h},{m},{n},{d})"
    floors = floor_bytes(b, h, m, n, d, itemsize)
    rows = []
    for mode in MODES:
        t = {p: times[p][mode] for p in PROVIDERS}
        tri = t["triton"]
        pct = "-" if bw is None else f"{100 * (floors[mode] / bw) / (tri[0] * 1e-3):.0f}%"
        rows.append(
            f"| {shape} | {mode} | {tri[0]:.3f} [{tri[1]:.3f}-{tri[2]:.3f}] "
            f"| {fmt_ms(t['torch-eager'])} | {fmt_ms(t['torch-sdpa'])} "
            f"| {t['torch-eager'][0] / tri[0]:.2f}x "
            f"| {t['torch-sdpa'][0] / tri[0]:.2f}x | {pct} |"
        )
        print(rows[-1], flush=True)
    mem_row = None
    if not smoke:
        mem = {p: memory_provider(FNS[p], inputs) for p in PROVIDERS}
        kept = " / ".join(f"{mem[p][0]:.1f}" for p in PROVIDERS)
        peak = " / ".join(f"{mem[p][1]:.1f}" for p in PROVIDERS)
        ratio = mem["torch-eager"][1] / max(mem["triton"][1], 1e-9)
        mem_row = f"| {shape} | {kept} | {peak} | {ratio:.2f}x |"
        print(mem_row, flush=True)
    return rows, mem_row


if __name__ == "__main__":
    sys.exit(main())
