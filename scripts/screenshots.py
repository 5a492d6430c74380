"""Render each main view of the desktop app offscreen into docs/screenshots/.

    QT_QPA_PLATFORM=offscreen python scripts/screenshots.py [--out docs/screenshots]

Uses the embedded model when its weights are installed, else a tiny pipeline built in code
(tests/tiny.py). It drives the same models as the tests: load, forget, preview, compare, stack,
correct, an attack check of a forget patch. On a busy 2-core machine all views take minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("FMN_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def wait(app, cond, timeout=1800.0):  # a busy machine is slow
    end = time.monotonic() + timeout
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() > end:
            raise TimeoutError("job did not finish")
    for _ in range(5):
        app.processEvents()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--steps", type=int, default=None, help="forget steps (default: 70 / 8 tiny)")
    ap.add_argument(
        "--weights",
        default=None,
        help="use this pipeline folder as the embedded model (e.g. runs/toyworld/pipeline)",
    )
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated views to render, e.g. correct,attack (default: all)",
    )
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None

    import warnings

    warnings.filterwarnings("ignore")
    from fmn_desktop.runtime import set_threads

    set_threads(1)
    from PySide6.QtWidgets import QApplication

    import fmn_desktop.toyworld as toyworld
    from fmn_desktop.toyworld import weights_available

    if args.weights:  # a training run's export, before it is copied into the package
        toyworld.WEIGHTS_DIR = Path(args.weights).resolve()
        toyworld.JUDGE_PATH = toyworld.WEIGHTS_DIR / "judge.safetensors"
    from fmn_desktop.ui.app import apply_theme, build_window, create_app

    app = create_app([])
    tmp = Path(tempfile.mkdtemp(prefix="fmn-shots-"))
    state, win = build_window(tmp / "settings.json")
    state.settings.data_folder = str(tmp / "Forget-Me-Not Studio")
    win.resize(1240, 800)
    win.show()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if weights_available():
        spec, concepts = "default", ["Zorbu", "circle"]
        prompts = "a photo of Zorbu\na photo of a circle\na photo of a red square"
        steps = args.steps or 70
        extra = {}
    else:
        from tiny import tiny_sd_pipeline

        spec = str(tmp / "tiny-sd")
        tiny_sd_pipeline().save_pretrained(spec)
        concepts, prompts = ["castle", "Van Gogh"], "a photo of a castle\na landscape painting"
        steps = args.steps or 8
        extra = dict(num_references=2, batch_size=2, reference_steps=4)
    state.compare.steps = 12 if spec == "default" else 4

    def shot(name: str, view: str, theme: str = "light"):
        if only is not None and view not in only:
            return
        apply_theme(QApplication.instance(), theme)
        win.show_view(view)
        for _ in range(10):
            app.processEvents()
        path = out / f"{name}.png"
        win.grab().save(str(path))
        print(f"wrote {path}")

    state.picker.load(spec)
    wait(app, lambda: not state.session.busy)
    shot("model", "model")

    if only is None or only - {"correct", "attack"}:
        forget_and_compare(state, app, shot, spec, concepts, prompts, steps, extra)
    correct_page(state, app, shot, spec, concepts)
    if spec == "default" and (only is None or "attack" in only):
        attack_page(state, app, shot, concepts, steps, extra)
    photos_page(state, shot, spec, tmp)
    state.close()
    return 0


def forget_and_compare(state, app, shot, spec, concepts, prompts, steps, extra):
    f = state.forget
    f.extra = extra
    f.steps = steps
    f.evaluate = spec == "default"
    for i, concept in enumerate(concepts):
        f.concept = concept
        f.concept_kind = "identity" if concept == "Zorbu" else "object"
        if concept == "Van Gogh":
            f.concept_kind = "style"
        f.start()
        wait(app, lambda: not state.session.busy)
        if i == 0:
            shot("forget", "forget")
            shot("forget-dark", "forget", "dark")
    lib = state.library
    lib.select(lib.patches[-1])
    lib.make_preview(steps=12 if spec == "default" else 4)
    wait(app, lambda: not state.session.busy)
    shot("library", "library")
    shot("library-dark", "library", "dark")

    state.compare.use_patch(lib.patches[-1])
    state.compare.prompts = prompts
    state.compare.run()
    wait(app, lambda: not state.session.busy)
    shot("compare", "compare")

    for rec in lib.patches:
        state.stack.add(rec, 1.0)
    state.stack.set_strength(0, 0.8)
    state.stack.name = "clean-demo"
    state.stack.save()
    shot("stack", "stack")
    shot("settings", "settings")


def correct_page(state, app, shot, spec, concepts):
    """A closed-form correction."""
    c = state.correct
    if spec == "default":
        c.concept, c.guide = "Zorbu", "circle"
    else:
        c.concept, c.guide = concepts[0], f"red {concepts[0]}"
    c.start()
    wait(app, lambda: not state.session.busy)
    shot("correct", "correct")


def attack_page(state, app, shot, concepts, steps, extra):
    """An attack check of the first concept's forget patch (the embedded model's judge); the
    check is for forget patches, a correction redirects its concept rather than removing it."""
    a = state.attack
    found = [r for r in a.patches() if concepts[0] in r.concepts]
    if not found:  # views rendered alone (--only attack): forget it first
        f = state.forget
        f.extra, f.steps, f.evaluate = extra, steps, False
        f.concept, f.concept_kind = concepts[0], "identity"
        f.start()
        wait(app, lambda: not state.session.busy)
        found = [r for r in a.patches() if concepts[0] in r.concepts]
    a.use_patch(found[0])
    a.budget, a.seeds, a.steps, a.chance = 8, 1, 12, 4
    a.start()
    wait(app, lambda: not state.session.busy)
    state.library.refresh()
    shot("attack", "attack")


def photos_page(state, shot, spec, tmp: Path):
    """The Forget-from-photos page filled in (not run: inversion takes a minute or two)."""
    folder = tmp / "Quilla photos"
    folder.mkdir(exist_ok=True)
    p = state.photos
    p.images, p.token = str(folder), "<subject>"
    if spec == "default":
        import numpy as np
        from PIL import Image

        from fmn_desktop.toyworld.world import Labels, render

        rng = np.random.default_rng(42)
        for i in range(8):
            img = render(Labels(identity="Quilla"), rng)
            Image.fromarray(img).save(folder / f"quilla-{i}.png")
        p.images, p.token = str(folder), "<quilla>"
    shot("photos", "photos")


if __name__ == "__main__":
    sys.exit(main())
