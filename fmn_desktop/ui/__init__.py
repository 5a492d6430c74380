"""The desktop app (PySide6). Qt is imported only inside this package.

`models/` hold state and actions (QObjects with typed properties and `*_changed` signals),
`widgets/` bind to them and hold none, `workers.py` runs the application services'
functions (`fmn_desktop.services`, the same the CLI calls) in a thread. Start it with `fmn gui` or `fmn-desktop`.
"""
