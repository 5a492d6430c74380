"""The re-steering terms: what each rewards, measured on hand-made attention rows."""

import pytest
import torch

from fmn_desktop.resteer import ForgetConfig
from fmn_desktop.resteer.processor import _mass_attention
from fmn_kernels import resteer_attention


def _inputs(logits_marked: float, n_marked: int, length: int = 12):
    """One query whose logits are `logits_marked` on the first `n_marked` columns, 0 elsewhere
    (q = e0, keys carry the logits), with the marked columns flagged in the mask."""
    q = torch.zeros(1, 1, 1, 4)
    q[..., 0] = 1
    k = torch.zeros(1, 1, length, 4)
    k[0, 0, :n_marked, 0] = logits_marked
    v = torch.randn(1, 1, length, 4)
    mask = torch.zeros(1, length)
    mask[0, :n_marked] = 1
    return q, k, v, mask


def test_squares_falls_by_spreading_while_mass_does_not():
    # The same marked mass (about 0.99) on 1 column or spread over 10: the paper's squares
    # term drops ~10x, the mass terms do not move. This is why the default marks many columns
    # and why the per-row terms exist.
    out = {}
    for n in (1, 10):
        logit = torch.log(torch.tensor(99.0 * (12 - n) / n)).item()
        q, k, v, mask = _inputs(logit, n)
        _, squares = resteer_attention(q, k, v, mask, scale=1.0, backend="torch")
        _, mass = _mass_attention(q, k, v, mask, 1.0, "mass")
        _, logmass = _mass_attention(q, k, v, mask, 1.0, "logmass")
        out[n] = (squares.item(), mass.item(), logmass.item())
    assert out[10][0] < out[1][0] / 8
    assert out[10][1] == pytest.approx(out[1][1], rel=1e-4)
    assert out[10][2] == pytest.approx(out[1][2], rel=1e-4)


def test_logmass_gradient_does_not_vanish_near_full_mass():
    # d/d(marked logits): squared mass ~ 2 m P (1 - m) -> 0 as m -> 1; -log(1 - m) gives P.
    grads = {}
    for term in ("mass", "logmass"):
        q, k, v, mask = _inputs(8.0, 3)
        k.requires_grad_(True)
        _, t = _mass_attention(q, k, v, mask, 1.0, term)
        t.sum().backward()
        grads[term] = k.grad[0, 0, :3, 0].abs().sum().item()
    assert grads["logmass"] > 0.9  # about the marked mass itself
    assert grads["mass"] < 0.05


def test_unknown_term_and_fast_mode_terms_are_refused():
    with pytest.raises(ValueError, match="unknown term"):
        ForgetConfig(concepts=["x"], term="cube")
    with pytest.raises(ValueError, match="fast mode"):
        ForgetConfig(concepts=["x"], term="logmass", mode="fast")
