"""`llmlens [MODEL.gguf]`: start Qt, show the main window, open the file given on the command line.

The window gets the GGUF browser (app.main_window) and, when available, the chat tab
(app.chat_controller.install_chat), both on the same file when one is given.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
ICON = RESOURCES / "llmlens.svg"
DEFAULT_ARGS = ("default",)


def run_gui(argv: Sequence[str], *, with_chat: bool = True) -> int:
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
    model = args[0] if args else None
    lens = LensApp()
    if with_chat:
        _install_chat(lens, None if model in DEFAULT_ARGS else model)
    lens.window.show()
    if model in DEFAULT_ARGS:
        lens.open_default(show=not with_chat)
    elif model:
        lens.open_path(model, show=not with_chat)
    try:
        return int(app.exec())
    finally:
        lens.shutdown()


def _install_chat(lens, model_path: str | None) -> None:
    try:
        from app.chat_controller import install_chat

        lens.chat = install_chat(lens.window, model_path=model_path)
    except Exception as exc:  # noqa: BLE001 - the browser must stay usable without the chat
        lens.window.show_error(f"The chat panel could not start: {type(exc).__name__}: {exc}")
