"""Application services: each product action written once, end to end.

The CLI (`fmn_desktop.cli`) and the desktop app (`fmn_desktop.ui`) only parse, show and call
these functions; they hold no orchestration of their own. Below this layer sit the core
packages (models, patch, resteer, correct, inversion, attack, evaluate, registry, toyworld).

- `model`: open a model with the one device/precision policy; whether it has a judge.
- `patches`: patch specs (`FILE[:STRENGTH]`), reading patches against a model, describing.
- `defaults`: the settings a job takes on a given model (the embedded model's measured ones).
- `forget`, `photos`, `correct`: create patches (to a file, evaluated, registered).
- `evaluate`, `attack`: score a patch or a stack on a model that has a judge.
- `library`: the registry's verbs that need tensors (import, export, stacks, apply).
- `images`: sample grids, before/after comparison.
- `demo`: the tour on the embedded model.

Long actions take `progress` and `should_cancel` callbacks (or a `JobContext` that holds
both) and write nothing when they fail or are cancelled.
"""
