"""The judge: a small CNN that reads the world's attributes back from an image.

Example::

    judge = Judge.load(path)               # or fmn_desktop.toyworld.load_judge()
    probs = judge.predict(pil_images)      # {"object": (N, 8), "colour": (N, 6), ...}
    names = judge.labels(pil_images)       # {"object": ["circle", ...], ...}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fmn_desktop.toyworld.model import JudgeNet
from fmn_desktop.toyworld.world import HEADS, SIZE


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

    def __init__(self, net: JudgeNet):
        self.net = net.eval()

    @classmethod
    def load(cls, path: str | Path) -> Judge:
        from safetensors.torch import load_file

        path = Path(path)
        meta_path = path.with_suffix(".json")
        widths = (
            tuple(json.loads(meta_path.read_text())["widths"])
            if meta_path.exists()
            else (24, 48, 96, 128)
        )
        net = JudgeNet(widths)
        net.load_state_dict(load_file(str(path)))
        return cls(net)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(
            json.dumps({"widths": list(self.net.widths), "heads": HEADS}, indent=1)
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

    def labels(self, images) -> dict[str, list[str]]:
        probs = self.predict(images)
        return {h: [HEADS[h][i] for i in p.argmax(-1).tolist()] for h, p in probs.items()}
