"""Apply patches to a loaded UNet non-destructively and restore it bit-exactly.

Each touched weight is backed up once (a clone of the original tensor), the sum
``W0 + sum_i s_i dW_i`` is computed in fp32 and cast back, and `restore` copies the backups
back, so the weights after removal are the very bits they were before. Strengths are bounded
(`limits.MAX_STRENGTH`) and a sum that is not finite in the weight's own dtype (fp16
overflows at 65504) is refused with every weight left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from fmn_desktop.errors import NonFiniteError, PatchMismatchError
from fmn_desktop.patch.format import Patch
from fmn_desktop.patch.validate import check_strength


def check_compatible(
    patch: Patch, unet: torch.nn.Module, fingerprint: str | None, force: bool = False
) -> None:
    """Refuse a patch whose keys, shapes or base fingerprint do not fit this UNet."""
    params = dict(unet.named_parameters())
    problems = []
    for name, delta in patch.deltas.items():
        if name not in params:
            problems.append(f"{name}: not a parameter of this UNet")
            continue
        shape = params[name].shape
        try:
            delta.to_dense(shape)
        except RuntimeError:
            got = (
                tuple(delta.dense.shape)
                if delta.dense is not None
                else (f"up {tuple(delta.up.shape)} x down {tuple(delta.down.shape)}")
            )
            problems.append(f"{name}: delta shape {got} does not fit weight {tuple(shape)}")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise PatchMismatchError(f"patch does not fit this model: {shown}")
    want = patch.meta.base_fingerprint
    if fingerprint and want and want != fingerprint and not force:
        raise PatchMismatchError(
            f"patch was made for base model {want[:12]}, this model is {fingerprint[:12]}; "
            "apply with force to use it anyway"
        )


class PatchedUNet:
    """Apply a list of (patch, strength) to a UNet; `restore()` (or leaving the `with`) undoes it.

    >>> with PatchedUNet(pipe.unet, [(patch, 1.0)], fingerprint=fp):
    ...     images = pipe(prompt).images
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        patches: Iterable[tuple[Patch, float]],
        fingerprint: str | None = None,
        force: bool = False,
    ):
        self.unet = unet
        self.patches = [(p, check_strength(s)) for p, s in patches]
        self.fingerprint = fingerprint
        self.force = force
        self._backup: dict[str, torch.Tensor] = {}

    def apply(self) -> PatchedUNet:
        for patch, _ in self.patches:
            check_compatible(patch, self.unet, self.fingerprint, self.force)
        params = dict(self.unet.named_parameters())
        names = dict.fromkeys(n for patch, _ in self.patches for n in patch.deltas)
        with torch.no_grad():
            for name in names:
                weight = params[name]
                base = self._backup[name] if name in self._backup else weight.detach()
                try:
                    new = _patched(name, base, self.patches)
                except NonFiniteError:
                    self.restore()
                    raise
                if name not in self._backup:
                    self._backup[name] = weight.detach().clone()
                weight.copy_(new)
        return self

    def restore(self) -> None:
        params = dict(self.unet.named_parameters())
        with torch.no_grad():
            for name, original in self._backup.items():
                params[name].copy_(original)
        self._backup.clear()

    def __enter__(self) -> PatchedUNet:
        return self.apply()

    def __exit__(self, *exc) -> None:
        self.restore()


def _patched(name: str, base: torch.Tensor, patches: list[tuple[Patch, float]]) -> torch.Tensor:
    """`base + sum_i s_i dW_i` for parameter `name`, summed in fp32 and cast back to the
    weight's dtype; NonFiniteError if the result holds NaN or inf."""
    total = None
    for patch, strength in patches:
        delta = patch.deltas.get(name)
        if delta is not None:
            dense = delta.to_dense(base.shape).to(base.device) * float(strength)
            total = dense if total is None else total + dense
    if total is None:
        return base
    new = (base.float() + total).to(base.dtype)
    if not bool(torch.isfinite(new).all()):
        raise NonFiniteError(
            f"{name}: the patched weight would hold NaN or inf ({base.dtype}); "
            "lower the strength, or the patch is broken"
        )
    return new


def patched_weights(
    unet: torch.nn.Module,
    patches: Iterable[tuple[Patch, float]],
    fingerprint: str | None = None,
    force: bool = False,
) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """The patches as a function `(parameter name, weight) -> patched weight`, for writing a
    patched copy tensor by tensor while `unet` itself stays untouched (no backups, no second
    copy of the model). Checked like `PatchedUNet`; the weights are the same bits."""
    patches = [(p, check_strength(s)) for p, s in patches]
    for patch, _ in patches:
        check_compatible(patch, unet, fingerprint, force)

    def weight(name: str, base: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _patched(name, base.detach(), patches)

    return weight
