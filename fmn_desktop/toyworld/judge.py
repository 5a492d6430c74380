"""The judge: a small CNN that reads the world's attributes back from an image.

Example::

    judge = Judge.load(path)               # or fmn_desktop.toyworld.load_judge()
    probs = judge.predict(pil_images)      # {"object": (N, 8), "colour": (N, 6), ...}
    names = judge.labels(pil_images)       # {"object": ["circle", ...], ...}
    names = judge.labels(pil_images, abstain=judge.abstain)   # "unsure" where not confident

Besides each head's "none" (no object, no colour, no identity: what it says on an empty
frame), a reading can abstain: where the head's largest probability is under a threshold,
`labels(..., abstain=threshold)` returns "unsure". `judge.abstain` is the threshold calibrated
when the judge was trained (`calibrate_abstain`; 0.0, never abstaining, for a judge without
one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fmn_desktop.toyworld.model import JudgeNet
from fmn_desktop.toyworld.world import HEADS, SIZE

UNSURE = "unsure"


def to_tensor(images) -> torch.Tensor:
    """PIL images, uint8 arrays (N, H, W, 3) or a float tensor (N, 3, H, W) in [0, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.dim() == 3:
            x = x[None]
    elif isinstance(images, np.ndarray):
        x = torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2)
    else:
        arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
        x = torch.from_numpy(arr).float().div(255).permute(0, 3, 1, 2)
    if x.shape[-1] != SIZE or x.shape[-2] != SIZE:
        x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="area")
    return x.clamp(0, 1)


class Judge:
    """Wraps a trained `JudgeNet`; `predict` gives per-head probabilities."""

    heads = HEADS

    def __init__(self, net: JudgeNet, abstain: float = 0.0):
        self.net = net.eval()
        self.abstain = abstain

    @classmethod
    def load(cls, path: str | Path) -> Judge:
        from safetensors.torch import load_file

        path = Path(path)
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        net = JudgeNet(tuple(meta.get("widths", (24, 48, 96, 128))))
        net.load_state_dict(load_file(str(path)))
        return cls(net, float(meta.get("abstain", 0.0)))

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(
            json.dumps(
                {"widths": list(self.net.widths), "heads": HEADS, "abstain": self.abstain}, indent=1
            )
        )

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> dict[str, torch.Tensor]:
        x = to_tensor(images)
        outs: dict[str, list[torch.Tensor]] = {h: [] for h in HEADS}
        for i in range(0, len(x), batch_size):
            logits = self.net(x[i : i + batch_size])
            for h in HEADS:
                outs[h].append(logits[h].softmax(-1))
        return {h: torch.cat(v) for h, v in outs.items()}

    def labels(self, images, abstain: float | None = None) -> dict[str, list[str]]:
        """Each head's most probable label; with `abstain`, "unsure" where that label's
        probability is under `abstain` (pass `self.abstain` for the calibrated threshold)."""
        return {h: read(p, h, abstain) for h, p in self.predict(images).items()}


def read(probs: torch.Tensor, head: str, abstain: float | None = None) -> list[str]:
    """Labels of (N, labels) or (labels,) probabilities of `head`; "unsure" under `abstain`."""
    p = probs if probs.dim() == 2 else probs[None]
    top, idx = p.max(-1)
    return [
        UNSURE if abstain and t < abstain else HEADS[head][i]
        for t, i in zip(top.tolist(), idx.tolist(), strict=True)
    ]


ABSTAIN_GRID = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def calibrate_abstain(
    judge: Judge,
    x: torch.Tensor,
    targets: dict[str, torch.Tensor],
    grid=ABSTAIN_GRID,
    max_loss: float = 0.001,
) -> tuple[float, dict]:
    """The abstain threshold on calibration images `x` with per-head target probabilities.

    Readings whose target is clear (one label >= 0.9) should be right and not abstain;
    readings whose target is even (no label above 0.65: a near 50/50 blend, half a shape)
    should abstain. The threshold is the grid value that abstains on the most even readings
    while keeping right clear readings within `max_loss` (0.1 point) of the best grid value:
    an abstention on a clear image is a false failure in every retention figure, so it is
    priced higher than a confident reading of a blend. Returns it with the rates at every
    grid value, pooled over heads."""
    probs = judge.predict(x)
    top, idx, clear_ok, even = [], [], [], []
    for h in HEADS:
        t = targets[h]
        p_top, p_idx = probs[h].max(-1)
        top.append(p_top)
        idx.append(p_idx)
        clear_ok.append(
            torch.where(t.max(-1).values >= 0.9, (p_idx == t.argmax(-1)).float(), torch.nan)
        )
        even.append(t.max(-1).values <= 0.65)
    top, clear_ok, even = torch.cat(top), torch.cat(clear_ok), torch.cat(even)
    clear = ~clear_ok.isnan()
    rates = {}
    for g in grid:
        kept_right = float(((clear_ok[clear] == 1) & (top[clear] >= g)).float().mean())
        abstained = float((top[even] < g).float().mean()) if even.any() else 0.0
        rates[float(g)] = {"clear_right_and_kept": kept_right, "even_abstained": abstained}
    return select_abstain(rates, max_loss), {
        "clear_readings": int(clear.sum()),
        "even_readings": int(even.sum()),
        "rates": rates,
    }


def select_abstain(rates: dict[float, dict], max_loss: float = 0.001) -> float:
    """The rule of `calibrate_abstain` on its per-threshold rates."""
    floor = max(r["clear_right_and_kept"] for r in rates.values()) - max_loss
    ok = [g for g, r in rates.items() if r["clear_right_and_kept"] >= floor]
    return max(ok, key=lambda g: (rates[g]["even_abstained"], -g))
