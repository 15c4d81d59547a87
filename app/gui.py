"""`llmlens [MODEL.gguf]`: start Qt, show the main window, open the file given on the command line.

The window gets the GGUF browser (app.main_window) and, when available, the chat tab
(app.chat_controller.install_chat), both on the same file when one is given. Without a file and
without the default model's package (the standalone bundle), a first-run dialog asks for one
(app/first_run.py). LLMLENS_READY_LINE=1 prints one line once the window is up (packaging's
smoke test waits for it); SIGINT/SIGTERM close the window as File → Quit does.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
ICON = RESOURCES / "llmlens.svg"
DEFAULT_ARGS = ("default",)
DEMO_ARGS = ("demo-moe",)  # the small trained MoE shipped in engine/assets


def run_gui(argv: Sequence[str], *, with_chat: bool = True) -> int:
    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from app.first_run import default_model_available, show_first_run
    from app.main_window import LensApp
    from app.settings import APP, ORG
    from app.version import about_sections

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
    first_run = (model is None or model in DEFAULT_ARGS) and not default_model_available()
    lens = LensApp()
    lens.window.about_sections = about_sections
    if with_chat:
        _install_chat(lens, None if model in DEFAULT_ARGS else model, autoload=not first_run)
    lens.window.show()
    if first_run:
        lens.first_run_dialog = show_first_run(lens)
    elif model in DEMO_ARGS:
        # The chat's loader resolves "demo-moe" itself; the browser needs the file's path.
        from engine.default_model import demo_moe_path
        from engine.errors import LLMLensError

        try:
            lens.open_path(demo_moe_path(), show=not with_chat)
        except LLMLensError as exc:
            lens.window.show_error(str(exc))
    elif model in DEFAULT_ARGS:
        lens.open_default(show=not with_chat)
    elif model:
        lens.open_path(model, show=not with_chat)
    if os.environ.get("LLMLENS_READY_LINE", "") not in ("", "0"):
        state = ("first-run dialog (default model not installed)" if first_run
                 else f"opening {model or 'the default model'}")
        QTimer.singleShot(0, lambda: print(f"llmlens: ready: main window shown; {state}",
                                           flush=True))
    _quit_on_signals(app)
    try:
        return int(app.exec())
    finally:
        lens.shutdown()
        _delete_windows(lens)


def _delete_windows(lens) -> None:
    """Destroy the window and its dialogs now, while the interpreter is whole.

    Left to PySide's exit hook, the remaining wrapped objects (pyqtgraph's plot items among them)
    are destroyed in no particular order once Python has begun finalising; a child's destructor
    then calls a Python override that fails, and shiboken crashes reporting it (SIGSEGV at about
    one exit in ten). Deleting parents first runs those overrides while they can still work.
    """
    import shiboken6

    for widget in (getattr(lens, "first_run_dialog", None), lens.window):
        if widget is not None and shiboken6.isValid(widget):
            shiboken6.delete(widget)
    gc.collect()


def _quit_on_signals(app) -> None:
    """Ctrl+C in the terminal (or SIGTERM) closes the window like File → Quit, instead of a
    KeyboardInterrupt traceback out of whichever slot Python happens to be running."""
    from PySide6.QtCore import QTimer

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (app.closeAllWindows(), app.quit()))
    # Python runs signal handlers only between bytecodes: wake it while Qt waits for events.
    wakeup = QTimer(app, interval=250)  # owned by app (its parent)
    wakeup.timeout.connect(lambda: None)
    wakeup.start()


def _install_chat(lens, model_path: str | None, *, autoload: bool = True) -> None:
    try:
        from app.chat_controller import install_chat

        lens.chat = install_chat(lens.window, model_path=model_path, autoload=autoload)
    except Exception as exc:  # noqa: BLE001 - the browser must stay usable without the chat
        lens.window.show_error(f"The chat panel could not start: {type(exc).__name__}: {exc}")
