"""Half precision on the CPU: what a half model needs there to run the CUDA path at a
usable speed.

The product runs half base weights on CUDA (fp16 by default). On the CPU that path is for
checking (tests, `--dtype fp16/bf16` on the CPU), and one op is the problem: PyTorch has no
fast fp16 convolution on the CPU (it falls back to `_slow_conv2d_forward`, measured 23x
slower than fp32 for a UNet forward on the embedded model), while bf16 convolutions are fast.
So fp16 convolutions there run on fp32 copies of the operands and round the result back to
fp16, the way a CUDA fp16 convolution accumulates in fp32 and stores fp16. The weights and
activations stay fp16; only the arithmetic inside each convolution is wider.

>>> notes = fit_half_to_cpu(pipe)  # doctest: +SKIP
"""

from __future__ import annotations

import types

import torch
from torch import nn


def _conv_in_fp32(self: nn.Conv2d, input: torch.Tensor, weight, bias):
    """`Conv2d._conv_forward` computed in fp32, the result in the input's dtype."""
    out = type(self)._conv_forward(
        self, input.float(), weight.float(), None if bias is None else bias.float()
    )
    return out.to(input.dtype)


def fit_half_to_cpu(pipe) -> list[str]:
    """Make an fp16 pipeline on the CPU compute its convolutions in fp32 (see the module
    docstring); returns notes for the model's record (none when nothing was changed)."""
    count = 0
    for component in pipe.components.values():
        if not isinstance(component, nn.Module):
            continue
        for module in component.modules():
            if not isinstance(module, nn.Conv2d):
                continue
            weight = module.weight
            if weight.device.type != "cpu" or weight.dtype != torch.float16:
                continue
            module._conv_forward = types.MethodType(_conv_in_fp32, module)
            count += 1
    if not count:
        return []
    return [f"fp16 on the CPU: {count} convolutions compute in fp32 (weights stay fp16)"]
