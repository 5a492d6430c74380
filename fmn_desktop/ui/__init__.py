"""The desktop app (PySide6). Qt is imported only inside this package.

`models/` hold state and actions (QObjects with typed properties and `*_changed` signals),
`widgets/` bind to them and hold none, `workers.py` runs the CLI's job functions in a thread,
`jobs.py` composes those functions. Start it with `fmn gui` or `fmn-desktop`.
"""
