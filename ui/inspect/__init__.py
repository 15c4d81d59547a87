"""Inspection panels: plain widgets fed the plain data of `ui.inspect.model` by `app/`."""
