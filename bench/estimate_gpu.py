"""Estimate the peak GPU memory and the FLOPs of a forget job's steps at real Stable Diffusion
shapes, on a CPU, without allocating them.

    python bench/estimate_gpu.py                       # all architectures and variants
    python bench/estimate_gpu.py --arch sd1 --variants faithful-eager fast-fused
    python bench/estimate_gpu.py --tiny --arch sd1     # toy widths: a quick check of the script
    python bench/estimate_gpu.py --checkpoint fixed    # gradient checkpointing (a what-if)

Method. The real job (`fmn_desktop.resteer.forget_steps`: prompt encoding, the attn2
processors, the deltas, the loss terms, AdamW, gradient clipping) runs on a pipeline built from
the shipped configs in fp16 under `FakeTensorMode`: every tensor has its real shape, dtype and
aliasing but no data. Only the reference images are not generated (a function returns latents
of the right shape): that is sampling, not optimisation. A `TorchDispatchMode` above the fake
mode counts the bytes of every live storage (rounded up to the CUDA caching allocator's
512-byte blocks; freed through a weakref finalizer when autograd and Python drop it), so its
peak is what `torch.cuda.max_memory_allocated()` reports on a GPU, less the cuBLAS workspace and
the allocator's fragmentation. FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (matrix
products and convolutions). The job runs 2 steps (fast mode: 2 per layer); the second is one
step at steady state (AdamW's state allocated), read off between the job's progress reports,
and the job's FLOPs at the default step count follow (fast mode: per layer).

The fused Triton kernel cannot run on fake tensors. Its memory is modelled instead: the
"triton" backend is replaced by an autograd Function that allocates what
`fmn_kernels.triton_resteer.ResteerAttentionFunction` allocates (out, the fp32 log-sum-exp and
row terms, dQ, the split fp32 dK/dV partials for an H100's 132 SMs) and saves what it saves
(q, k, v, the mask weights, the log-sum-exp; never the probabilities). Its FLOPs are its
matrix products: 2 in the forward, 3 (2 without dQ) + 4 in the backward (the scores recomputed
twice).

Data-dependent steps (`.item()`, `.tolist()`, a boolean row mask) read "shadow" values: a
tensor of up to 64k elements computed only from such tensors (timesteps, indices, masks) is
also computed for real on the CPU. A scalar with no shadow (the loss for logging and the
finite checks) reads as 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import sys
import time
import weakref
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
)
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)
from torch.utils.weak import WeakIdKeyDictionary

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_forget import SIZES, job_config, random_pipeline  # noqa: E402

aten = torch.ops.aten

# Variants: (ForgetConfig mode, attention backend).
VARIANTS = {
    "faithful-eager": ("faithful", "torch"),
    "faithful-fused": ("faithful", "triton"),
    "fast-eager": ("fast", "torch"),
    "fast-fused": ("fast", "triton"),
}
# NVIDIA H100 SXM5 datasheet: FP16/BF16 Tensor Core 1,979 TFLOP/s with 2:4 sparsity, so 989.5
# dense; the H200 has the same compute (its difference is memory: 141 GB, 4.8 TB/s).
PEAK_TFLOPS = 989.5
H100_SMS = 132
ALLOCATOR_BLOCK = 512
SHADOW_LIMIT = 1 << 16
GIB = 2**30


# --------------------------------------------------------------------------------------------
# Memory: live storage bytes under the fake mode
# --------------------------------------------------------------------------------------------


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every storage alive (peak and current), and keeps real "shadow"
    values of small tensors so that data-dependent steps can run on fake tensors."""

    def __init__(self, fake_mode: FakeTensorMode):
        super().__init__()
        self.fake_mode = fake_mode
        self.live = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()
        self._made_by: dict[int, tuple[str, int]] = {}
        self.at_peak: dict[str, int] = {}
        self._snapshot_at = 0
        self._op = "?"
        self._shadow = WeakIdKeyDictionary()
        self.blind_scalars = 0  # .item()/bool() on tensors without a shadow (read as 1)
        # Off while modules are built: a weak reference to a parameter stops `Module.to`.
        self.shadowing = False

    def reset_peak(self) -> None:
        self.peak = self.live
        self.at_peak = {}
        self._snapshot_at = self.live

    def _snapshot(self) -> None:
        """Live bytes by the op that made them, at the peak (taken each 2% of growth)."""
        by_op: dict[str, int] = {}
        for op, nbytes in self._made_by.values():
            by_op[op] = by_op.get(op, 0) + nbytes
        self.at_peak = by_op
        self._snapshot_at = self.live

    def _account(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st in self._seen:
            return
        nbytes = -(-st.nbytes() // ALLOCATOR_BLOCK) * ALLOCATOR_BLOCK
        self._seen[st] = nbytes
        self.live += nbytes
        key = id(st)
        self._made_by[key] = (self._op, nbytes)
        if self.live > self.peak:
            self.peak = self.live
            if self.live > 1.02 * self._snapshot_at:
                self._snapshot()
        weakref.finalize(st, self._free, nbytes, key)

    def _free(self, nbytes: int, key: int) -> None:
        self.live -= nbytes
        self._made_by.pop(key, None)

    def track(self, tree) -> None:
        """Count tensors made outside this mode (none are, when it is entered first)."""
        for t in tree_flatten(tree)[0]:
            if isinstance(t, FakeTensor):
                self._account(t)

    @staticmethod
    def _view_key(t: torch.Tensor) -> tuple:
        return (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)

    def _real(self, x):
        if isinstance(x, FakeTensor):
            return self._shadow.get(x.untyped_storage(), {}).get(self._view_key(x))
        return x if isinstance(x, torch.Tensor) else None

    def _keep_shadow(self, fake: FakeTensor, real: torch.Tensor) -> None:
        # Keyed by storage, not by tensor: a weak reference to a tensor stops `Module.to`
        # from swapping it (a parameter, say).
        self._shadow.setdefault(fake.untyped_storage(), {})[self._view_key(fake)] = real

    def _has_all_shadows(self, args, kwargs) -> bool:
        tensors = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        return all(self._real(t) is not None for t in tensors)

    def _run_real(self, func, args, kwargs):
        rargs, rkwargs = tree_map(
            lambda x: self._real(x) if isinstance(x, torch.Tensor) else x, (args, kwargs)
        )
        with _disable_current_modes():
            return func(*rargs, **rkwargs)

    def _to_fake(self, real):
        with _disable_current_modes():
            return self.fake_mode.from_tensor(real)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            real = self._real(args[0])
            if real is not None:
                with _disable_current_modes():
                    return real.item()
            self.blind_scalars += 1
            return True if args[0].dtype == torch.bool else 1
        self._op = func.__name__
        try:
            out = func(*args, **kwargs)
        except (DynamicOutputShapeException, DataDependentOutputException):
            out = self._data_dependent(func, args, kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for t in outs:
            if isinstance(t, FakeTensor):
                self._account(t)
        small = all(t.numel() <= SHADOW_LIMIT for t in outs)
        if self.shadowing and outs and small and self._has_all_shadows(args, kwargs):
            real = self._run_real(func, args, kwargs)
            for f, r in zip(
                outs, [t for t in tree_flatten(real)[0] if isinstance(t, torch.Tensor)]
            ):
                if isinstance(f, FakeTensor):
                    self._keep_shadow(f, r)
        return out

    def _data_dependent(self, func, args, kwargs):
        """nonzero and boolean-mask indexing from a shadow."""
        if func is aten.index.Tensor:
            src, indices = args[0], list(args[1])
            for i, ix in enumerate(indices):
                if ix is not None and ix.dtype == torch.bool:
                    real = self._real(ix)
                    if real is None:
                        raise RuntimeError("a boolean index without a known value")
                    with _disable_current_modes():
                        longs = real.nonzero().unbind(1)
                    indices[i : i + 1] = [self._to_fake(x) for x in longs]
            return func(src, indices)
        if func is aten.nonzero.default and self._real(args[0]) is not None:
            return self._to_fake(self._run_real(func, args, kwargs))
        raise RuntimeError(f"data-dependent {func} on a tensor without a known value")


# --------------------------------------------------------------------------------------------
# The fused kernel's memory and FLOPs, as an autograd Function on fake tensors
# --------------------------------------------------------------------------------------------

FUSED_FLOPS = {"n": 0}


def _fused_split(m: int, bh: int, n: int, d: int) -> int:
    """`triton_resteer._choose_split` on an H100 (132 SMs)."""
    from fmn_kernels import triton_resteer as tr

    block_n, block_d = tr.block_sizes(n, d)
    n_tiles = math.ceil(n / tr._default_block_n2(block_n, block_d))
    want = math.ceil(4 * H100_SMS / max(1, bh * n_tiles))
    n_split = max(1, min(math.ceil(m / tr.MIN_ROWS_PER_SPLIT), want))
    rows = math.ceil(math.ceil(m / n_split) / tr.ROWS_ALIGN) * tr.ROWS_ALIGN
    return math.ceil(m / rows)


class FusedModel(torch.autograd.Function):
    """Allocates and saves what `ResteerAttentionFunction` does; computes nothing."""

    @staticmethod
    def forward(ctx, q, k, v, weights, scale):
        b, h, m, d = q.shape
        n = k.shape[2]
        out = torch.empty_like(q)
        lse = q.new_empty((b * h, m), dtype=torch.float32)
        row_term = q.new_zeros((b * h, m if weights is not None else 1), dtype=torch.float32)
        resteer = row_term.sum(dim=1).view(b, h)
        ctx.save_for_backward(q, k, v, weights, lse)
        FUSED_FLOPS["n"] += 2 * (2 * b * h * m * n * d)
        if weights is None:
            ctx.mark_non_differentiable(resteer)
        return out, resteer

    @staticmethod
    def backward(ctx, d_out, d_resteer):
        q, k, v, weights, lse = ctx.saved_tensors
        b, h, m, d = q.shape
        n = k.shape[2]
        needs = ctx.needs_input_grad
        dq = torch.empty_like(q) if needs[0] else None
        delta = q.new_empty((b * h, m), dtype=torch.float32)
        # The dQ kernel recomputes the scores and dP for the row term even when q needs no
        # gradient (fast mode's cached queries); the dQ product only when it does.
        FUSED_FLOPS["n"] += (2 + bool(needs[0])) * (2 * b * h * m * n * d)
        dk = dv = None
        if needs[1] or needs[2]:
            split = _fused_split(m, b * h, n, d)
            dk_part = q.new_empty((b * h, split, n, d), dtype=torch.float32)
            dv_part = torch.empty_like(dk_part)
            FUSED_FLOPS["n"] += 4 * (2 * b * h * m * n * d)
            dk = dk_part.sum(dim=1).view(b, h, n, d).to(k.dtype) if needs[1] else None
            dv = dv_part.sum(dim=1).view(b, h, n, d).to(v.dtype) if needs[2] else None
        del delta
        return dq, dk, dv, None, None


def fused_model(q, k, v, concept_mask=None, scale=None):
    """`resteer_attention_triton`'s wrapper around the modelled Function."""
    bsz = q.shape[0]
    if k.shape[0] != bsz:
        k = k.expand(bsz, *k.shape[1:])
    if v.shape[0] != bsz:
        v = v.expand(bsz, *v.shape[1:])
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    weights = None
    if concept_mask is not None:
        weights = concept_mask.to(device=q.device, dtype=torch.float32).contiguous()
        if weights.shape[0] != bsz:
            weights = weights.expand(bsz, weights.shape[1])
    out, resteer = FusedModel.apply(q, k, v, weights, scale)
    if concept_mask is None:
        resteer = q.new_zeros(bsz, q.shape[1], dtype=torch.float32)
    return out, resteer


@contextlib.contextmanager
def fused_backend_modelled():
    """Register the modelled kernel as the "triton" backend (constraints: shapes only)."""
    from fmn_kernels import backends as bk

    saved = bk._REGISTRY[bk.Backend.TRITON]
    bk.register_backend(bk.BackendSpec(bk.Backend.TRITON, lambda: fused_model, bk.check_torch))
    try:
        yield
    finally:
        bk.register_backend(saved)


def _cpu_flash_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_flash_bwd_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


# On a CPU, SDPA runs the CPU flash kernel (what CUDA's flash kernel saves: out and the LSE);
# FlopCounterMode knows only the CUDA names.
FLOP_MAPPING = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd_flops,
}


# --------------------------------------------------------------------------------------------
# One estimate
# --------------------------------------------------------------------------------------------


def _fake_references(shape):
    def reference_latents(pipe, prompts, config, generator, cache=None):
        # a generator like the real one (which yields its progress); it draws nothing
        return torch.zeros((config.num_references, *shape), dtype=torch.float32)
        yield

    return reference_latents


@contextlib.contextmanager
def module_to_noop_in_place():
    """`Module.to(device)` with nothing to move returns the module untouched. On fake tensors
    it would swap every parameter for an equal one, which fails once a weak reference to the
    parameter exists (the fake mode's own bookkeeping makes some); the job's deltas call it."""
    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        tensors = list(self.parameters()) + list(self.buffers())
        if all(
            (device is None or t.device == device) and (dtype is None or t.dtype == dtype)
            for t in tensors
        ):
            return self
        return real_to(self, *args, **kwargs)

    torch.nn.Module.to = to
    try:
        yield
    finally:
        torch.nn.Module.to = real_to


@contextlib.contextmanager
def checkpointing_allowed(unet):
    """A what-if: the re-steering hooks refuse a UNet with gradient checkpointing on (with
    reentrant checkpointing the collected terms would lose their graph). diffusers' is
    non-reentrant, which keeps it; this hides the flag from that check for the estimate."""
    cls = type(unet)
    prop = cls.__dict__.get("is_gradient_checkpointing")
    cls.is_gradient_checkpointing = property(lambda self: False)
    try:
        yield
    finally:
        if prop is None:
            del cls.is_gradient_checkpointing
        else:
            cls.is_gradient_checkpointing = prop


@contextlib.contextmanager
def recompute_keeps_no_terms():
    """A what-if beside `checkpointing_allowed`: non-reentrant checkpointing re-runs each
    block's forward inside backward, and the re-steering processors would append that run's
    terms (and the graph they hold) to the job's state until the next step. Here a processor
    called during backward writes to a throwaway state instead."""
    from fmn_desktop.resteer.processor import ResteerProcessor

    real_call = ResteerProcessor.__call__

    def call(self, *args, **kwargs):
        if torch._C._current_graph_task_id() == -1:  # not inside backward
            return real_call(self, *args, **kwargs)
        state = self.state
        self.state = dataclasses.replace(state, terms=[], preserve_errors=[], anchor_errors=[])
        try:
            return real_call(self, *args, **kwargs)
        finally:
            self.state = state

    ResteerProcessor.__call__ = call
    try:
        yield
    finally:
        ResteerProcessor.__call__ = real_call


def run_fake_job(pipe, config, tracker: LiveBytes, latent_shape) -> tuple[int, int, int]:
    """Run forget_steps to the end under the tracker, 2 steps (fast: per layer); returns the
    peak bytes, the job's FLOPs and the FLOPs of one step (fast: one step of every layer)."""
    forget_mod = importlib.import_module(
        "fmn_desktop.resteer.forget"
    )  # the package exports `forget`
    if config.steps != 2:
        raise ValueError("the FLOPs of a step are read off the second steps")
    tracker.reset_peak()
    FUSED_FLOPS["n"] = 0
    counter = FlopCounterMode(display=False, custom_mapping=FLOP_MAPPING)
    real_refs = forget_mod.reference_latents
    forget_mod.reference_latents = _fake_references(latent_shape)
    step_flops, last = 0, 0
    try:
        with counter, module_to_noop_in_place():
            job = forget_mod.forget_steps(pipe, config)
            with contextlib.suppress(StopIteration):
                while True:
                    prog = next(job)
                    now = counter.get_total_flops() + FUSED_FLOPS["n"]
                    # Steps are numbered on across layers in fast mode: each even number
                    # closes the interval of one layer's second step.
                    if prog.phase == "train" and prog.step % 2 == 0:
                        step_flops += now - last
                    last = now
    finally:
        forget_mod.reference_latents = real_refs
    return tracker.peak, counter.get_total_flops() + FUSED_FLOPS["n"], step_flops


def estimate(arch: str, variants: list[str], args) -> list[dict]:
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    tracker = LiveBytes(fake)
    rows = []
    with fake, tracker:
        pipe = random_pipeline(arch, "cpu", torch.float16, tiny=args.tiny)
        if args.checkpoint:
            pipe.unet.enable_gradient_checkpointing()  # diffusers: non-reentrant
        weights = tracker.live
        tracker.shadowing = True
        unet_params = sum(p.numel() for p in pipe.unet.parameters())
        size = pipe.unet.config.sample_size
        latent_shape = (pipe.unet.config.in_channels, size, size)
        n_layers = sum(1 for n, _ in pipe.unet.named_modules() if n.endswith("attn2"))
        # One UNet forward of one sample (reference generation runs 2 per sampler step).
        counter = FlopCounterMode(display=False, custom_mapping=FLOP_MAPPING)
        with torch.no_grad(), counter:
            from fmn_desktop.prompts.encode import encode_prompts

            emb, added = encode_prompts(pipe, ["a photo of a castle"])
            x = torch.zeros((1, *latent_shape), dtype=torch.float16)
            pipe.unet(x, torch.tensor([500]), encoder_hidden_states=emb, added_cond_kwargs=added)
        unet_fwd = counter.get_total_flops()
        del emb, added, x
        for variant in variants:
            mode, backend = VARIANTS[variant]
            started = time.perf_counter()
            tracker.blind_scalars = 0
            ctx = contextlib.ExitStack()
            if backend == "triton":
                ctx.enter_context(fused_backend_modelled())
            if args.checkpoint:
                ctx.enter_context(checkpointing_allowed(pipe.unet))
                if args.checkpoint == "fixed":
                    ctx.enter_context(recompute_keeps_no_terms())
            with ctx:
                config = job_config(mode, 2, args.batch_size, args.references, backend)
                peak, total, per_step = run_fake_job(pipe, config, tracker, latent_shape)
            default_steps = job_config(mode, None, args.batch_size, args.references).steps
            setup = total - 2 * per_step  # prompt encoding, fast mode's query caching
            job_flops = setup + default_steps * per_step
            row = {
                "arch": arch,
                "px": SIZES[arch] if not args.tiny else size * 8,
                "variant": variant,
                "batch": args.batch_size,
                "references": args.references,
                "checkpointing": args.checkpoint or "",
                "unet_params_m": round(unet_params / 1e6, 1),
                "attn2_layers": n_layers,
                "weights_gib": weights / GIB,
                "peak_gib": peak / GIB,
                "step_tflop": per_step / 1e12,
                "step_s_bound": per_step / (PEAK_TFLOPS * 1e12),
                "setup_tflop": setup / 1e12,
                "default_steps": default_steps,
                "job_tflop": job_flops / 1e12,
                "job_s_bound": job_flops / (PEAK_TFLOPS * 1e12),
                "unet_fwd_tflop_per_sample": unet_fwd / 1e12,
                "blind_scalars": tracker.blind_scalars,
                # What was alive at the peak, by the op that made it (GiB, the largest 8).
                "at_peak_gib": {
                    op: round(n / GIB, 3)
                    for op, n in sorted(tracker.at_peak.items(), key=lambda kv: -kv[1])[:8]
                },
                "estimate_s": round(time.perf_counter() - started, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        del pipe
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| arch | px | variant | batch (UNet rows) | weights GiB | peak GiB (est.) | "
        "TFLOP/step | s/step >= | steps | job TFLOP | job s >= | peak GiB (meas.) | "
        "s/step (meas.) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fast = r["variant"].startswith("fast")
        per = "per layer" if fast else ""
        # Faithful: the batch and as many preservation rows; fast: max(references, batch)
        # cached samples, each run once with the concept and once with preservation prompts.
        unet_rows = f"2x{max(r['references'], r['batch'])}" if fast else str(2 * r["batch"])
        lines.append(
            f"| {r['arch']} | {r['px']} | {r['variant']}"
            f"{' +ckpt ' + r['checkpointing'] if r['checkpointing'] else ''} | {r['batch']} ({unet_rows}) | "
            f"{r['weights_gib']:.2f} | {r['peak_gib']:.2f} | {r['step_tflop']:.3g} | "
            f"{r['step_s_bound']:.2g} | {r['default_steps']}{' ' + per if per else ''} | "
            f"{r['job_tflop']:.3g} | {r['job_s_bound']:.2g} |  |  |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=list(SIZES), action="append")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--batch-size", type=int, default=8, help="samples per step (product: 8)")
    ap.add_argument("--references", type=int, default=16, help="reference images (product: 16)")
    ap.add_argument(
        "--checkpoint",
        choices=("as-is", "fixed"),
        help="what-if: UNet gradient checkpointing on, with the processors as they are, or "
        "with recomputed terms dropped (see recompute_keeps_no_terms)",
    )
    ap.add_argument("--tiny", action="store_true", help="toy widths: a quick check of the script")
    ap.add_argument("--json", type=Path, help="write the rows here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for arch in args.arch or list(SIZES):
        rows += estimate(arch, args.variants, args)
    print(format_table(rows))
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
