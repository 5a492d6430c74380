"""Widgets: views bound to the QObject models in `ui.models`; they keep no state of their own."""
