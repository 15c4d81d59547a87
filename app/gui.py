"""`llmlens [MODEL.gguf]`: start Qt, show the main window, open the file given on the command line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
ICON = RESOURCES / "llmlens.svg"


def run_gui(argv: Sequence[str]) -> int:
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from app.main_window import LensApp
    from app.settings import APP, ORG

    existing = QApplication.instance()
    app = existing or QApplication([sys.argv[0] if sys.argv else "llmlens", *argv])
    app.setOrganizationName(ORG)
    app.setApplicationName(APP)
    app.setApplicationDisplayName("LLM Lens")
    if ICON.exists():
        app.setWindowIcon(QIcon(str(ICON)))
    # Qt removed its own options (-platform, -style ...) from a QApplication it built from argv.
    args = [a for a in (argv if existing else app.arguments()[1:]) if not a.startswith("-")]
    lens = LensApp()
    lens.window.show()
    if args:
        if args[0] in ("default", ""):
            lens.open_default()
        else:
            lens.open_path(args[0])
    try:
        return int(app.exec())
    finally:
        lens.shutdown()
