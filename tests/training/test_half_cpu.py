"""The CUDA default's half-precision path run on the CPU: half base weights, fp32 deltas, the
casts, loss scaling for fp16, the step trace, and the precision policy that allows it."""

from __future__ import annotations

import pytest
import torch

from fmn_desktop.errors import FmnError
from fmn_desktop.models.precision import fit_half_to_cpu
from fmn_desktop.resteer import ForgetConfig, forget
from fmn_desktop.resteer.trainable import TrainableDeltas, target_parameters
from fmn_desktop.services.model import half_on_cpu_note, resolve_device
from fmn_desktop.training.loop import DeltaTrace, Optimiser, watch_steps

HALF = [torch.float16, torch.bfloat16]
FAST = dict(num_references=2, reference_steps=2, batch_size=2)


def _half_pipe(dtype):
    from tiny import tiny_sd_pipeline

    pipe = tiny_sd_pipeline().to(dtype=dtype)
    fit_half_to_cpu(pipe)
    return pipe


def _drive(job):
    for _ in job:
        pass


def test_policy_keeps_auto_fp32_on_the_cpu_and_allows_half_only_when_asked():
    if not torch.cuda.is_available():
        assert resolve_device("auto", "auto") == ("cpu", torch.float32)
    with pytest.raises(FmnError, match="fp32"):
        resolve_device("cpu", "fp16")
    assert resolve_device("cpu", "fp16", half_on_cpu=True) == ("cpu", torch.float16)
    assert resolve_device("cpu", "bf16", half_on_cpu=True) == ("cpu", torch.bfloat16)
    assert "slow" in half_on_cpu_note("cpu", torch.bfloat16)
    assert half_on_cpu_note("cpu", torch.float32) is None
    assert half_on_cpu_note("cuda", torch.float16) is None


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_one_step_trains_fp32_deltas_on_half_base_weights(dtype):
    """One faithful forget step on a half UNet: the base weights stay half and untouched, the
    deltas are fp32 and moved, nothing became NaN."""
    pipe = _half_pipe(dtype)
    unet = pipe.unet
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    trace = DeltaTrace()
    with watch_steps(trace):
        result = forget(pipe, ForgetConfig(concepts=["castle"], steps=1, **FAST))
    assert len(trace.norms) == 1 and trace.norms[0] > 0
    assert trace.deltas[0].dtype == torch.float32
    assert trace.frozen < 0.5  # a dense delta: most entries moved in the first Adam step
    for name, p in unet.named_parameters():
        assert p.dtype == dtype and torch.equal(p, before[name]), name
    dense = [d.dense for d in result.patch.deltas.values()]
    assert dense and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in dense)
    assert all(t.abs().sum() > 0 for t in dense)


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_half_base_plus_delta_is_summed_in_fp32_and_rounded_once(dtype):
    """A delta below half a unit in the last place of a half weight is not lost before the
    sum: W0 + delta rounds once, as the fp32 sum rounded to half."""
    pipe = _half_pipe(dtype)
    unet = pipe.unet
    name = target_parameters(unet, "kv", False)[0]
    module = unet.get_submodule(name.rpartition(".")[0])
    w0 = module.weight.detach().clone()
    deltas = TrainableDeltas(unet, [name])
    try:
        (delta,) = deltas.parameters()
        assert delta.dtype == torch.float32 and module.weight.dtype == dtype
        with torch.no_grad():
            delta.fill_(1e-8)  # flushes to zero in fp16 alone, survives in the fp32 sum
            delta[0, 0] = 0.75 * float(torch.finfo(dtype).eps) * float(w0[0, 0].abs())
        expected = (w0.float() + delta.detach()).to(dtype)
        assert torch.equal(module.weight, expected)
    finally:
        deltas.remove()
    assert torch.equal(module.weight, w0)


def _underflowing_loss(w, base_dtype, factor):
    """A loss whose gradient reaches the fp32 parameter through a half tensor: `factor` sets
    the size of that gradient (1e-9 underflows fp16, whose smallest value is 6e-8)."""
    x = torch.ones(4, dtype=base_dtype)

    def loss():
        y = (x.float() + w).to(base_dtype)  # the half activation the gradient crosses
        return factor * y.float().sum()

    return loss


def test_loss_scaling_keeps_fp16_gradients_that_would_underflow():
    plain, scaled, ref = (torch.nn.Parameter(torch.zeros(4)) for _ in range(3))
    _drive(Optimiser([ref], 0.1).run(_underflowing_loss(ref, torch.float32, 1e-9), 1))
    _drive(Optimiser([plain], 0.1).run(_underflowing_loss(plain, torch.float16, 1e-9), 1))
    _drive(
        Optimiser([scaled], 0.1, loss_scale=True).run(
            _underflowing_loss(scaled, torch.float16, 1e-9), 1
        )
    )
    assert torch.equal(plain, torch.zeros(4))  # the update was lost to underflow
    assert ref.abs().min() > 0
    assert torch.allclose(scaled, ref, rtol=1e-3)  # the fp32 run's step


def test_loss_scale_backs_off_on_overflow_and_keeps_the_step():
    """Gradients of 10 scaled by 2^16 overflow fp16: the scale halves until they fit, and the
    step is that of the unscaled gradient."""
    w, ref = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    opt = Optimiser([w], 0.1, loss_scale=True)
    _drive(opt.run(_underflowing_loss(w, torch.float16, 10.0), 2))
    _drive(Optimiser([ref], 0.1).run(_underflowing_loss(ref, torch.float32, 10.0), 2))
    assert opt.loss_scale < Optimiser.INITIAL_SCALE
    assert 10.0 * opt.loss_scale <= torch.finfo(torch.float16).max
    assert torch.allclose(w, ref)


def test_delta_trace_lays_several_optimisers_end_to_end():
    """Fast mode runs one optimiser per layer: the trace covers them all, in order."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    trace = DeltaTrace()
    with watch_steps(trace):
        _drive(Optimiser([a], 0.5).run(lambda: (a - 1).pow(2).sum(), 2))
        _drive(Optimiser([b], 0.5).run(lambda: (b + 1).pow(2).sum(), 1))
    assert len(trace.norms) == 3 and [d.numel() for d in trace.deltas] == [2, 2, 5]
    assert torch.equal(trace.deltas[-1][:2], a.detach())
    assert torch.equal(trace.deltas[-1][2:], b.detach())
    assert trace.norms[-1] == pytest.approx(float(torch.cat([a, b]).norm()))
    assert trace.zero_grads == [0.0, 0.0, 0.0] and trace.frozen == 0.0
    outside = Optimiser([torch.nn.Parameter(torch.zeros(1))], 0.1)
    with watch_steps(DeltaTrace()), pytest.raises(ValueError, match="outside"):
        _drive(outside.run(lambda: outside.params[0].sum(), 1))


def test_fp16_convolutions_compute_in_fp32_and_stay_fp16():
    from tiny import tiny_sd_pipeline

    pipe32 = tiny_sd_pipeline()
    pipe16 = tiny_sd_pipeline().to(dtype=torch.float16)
    notes = fit_half_to_cpu(pipe16)
    assert notes and "convolutions compute in fp32" in notes[0]
    conv16, conv32 = pipe16.unet.conv_in, pipe32.unet.conv_in
    x = torch.randn(1, conv32.in_channels, 8, 8)
    out = conv16(x.half())
    assert out.dtype == torch.float16
    # One rounding of the fp32 result of the fp16 operands: what a CUDA fp16 conv stores.
    exact = torch.nn.functional.conv2d(
        x.half().float(), conv16.weight.float(), conv16.bias.float(), padding=conv32.padding
    ).half()
    assert torch.equal(out, exact)
    assert fit_half_to_cpu(tiny_sd_pipeline().to(dtype=torch.bfloat16)) == []
