"""Several judges on the same generated images (for old-beside-new figures).

    panel = JudgePanel.from_specs(["old=/tmp/old/judge.safetensors", "new=..."])
    evals = generate_eval_set(pipe, panel, concepts, settings)   # judged by the first
    by_judge = panel.relabel(evals)                              # name -> list[EvalImage]

A judge that predates the abstain threshold (`Judge.abstain` 0) never reads "unsure". The
judge of an earlier commit: `git show COMMIT:fmn_desktop/toyworld/weights/judge.safetensors`
(and `judge.json`) into a folder.
"""

from __future__ import annotations

import torch

from fmn_desktop.evaluate.scores import EvalImage
from fmn_desktop.toyworld import JUDGE_PATH
from fmn_desktop.toyworld.judge import Judge


class JudgePanel:
    def __init__(self, judges: dict[str, Judge]):
        self.judges = judges
        self.first = next(iter(judges))
        self.abstain = judges[self.first].abstain
        self._batches: list[dict] = []

    @classmethod
    def from_specs(cls, specs: list[str]) -> JudgePanel:
        """NAME=PATH each; none: the shipped judge as 'shipped'."""
        pairs = [s.split("=", 1) for s in specs] or [["shipped", str(JUDGE_PATH)]]
        return cls({name: Judge.load(path) for name, path in pairs})

    def predict(self, images, batch_size: int = 256) -> dict[str, torch.Tensor]:
        self._batches.append({n: j.predict(images, batch_size) for n, j in self.judges.items()})
        return self._batches[-1][self.first]

    def relabel(self, evals: list[EvalImage]) -> dict[str, list[EvalImage]]:
        """`evals` (everything judged since the last call, in order) as read by each judge."""
        out = {}
        for name, judge in self.judges.items():
            probs = (
                {h: torch.cat([b[name][h] for b in self._batches]) for h in self._batches[0][name]}
                if self._batches
                else {}
            )
            n = len(next(iter(probs.values()))) if probs else 0
            if n != len(evals):
                raise ValueError(f"{len(evals)} images to relabel, {n} judged")
            out[name] = [
                EvalImage(
                    e.prompt, e.concept, e.seed, {h: p[i] for h, p in probs.items()}, judge.abstain
                )
                for i, e in enumerate(evals)
            ]
        self._batches = []
        return out
