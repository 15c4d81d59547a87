"""Retake the README screenshots from the real app on the default model.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots/make_screenshots.py

Builds the window as `llmlens` does (app.gui.run_gui: LensApp plus the chat tab), with its
settings and conversations in a temporary directory so the user's own are never touched, then:

- browser.png: the Tensors view with token_embd.weight analysed (histogram and heatmap);
  browser-summary.png and browser-metadata.png: the Summary and Metadata views;
- chat-light.png: the Chat tab after a greedy Complete-mode reply to a short question;
- chat-dark.png: the same under ui.chat.theme.dark_palette(), with the Prompt side tab.

PNGs are saved with a 256-colour palette: the heatmap's noise makes true-colour shots several
times larger, and the README should stay light (each file < 300 KB).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
SIZE = (1440, 900)
PROMPT = "Question: Why is the sky blue?\nAnswer:"
MAX_NEW_TOKENS = 40
MAX_BYTES = 300_000


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Run the Qt event loop until `condition()` holds (the app's workers report via signals)."""
    from PySide6.QtCore import QCoreApplication, QEventLoop

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        QCoreApplication.processEvents(QEventLoop.AllEvents, 50)
        time.sleep(0.01)


def settle(seconds: float = 0.3) -> None:
    """Let pending layouts, repaints and the status bar's 1 s memory timer catch up."""
    deadline = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() > deadline, seconds + 5, "the window to settle")


def save_small(widget, path: Path) -> int:
    """Save `widget` as a 256-colour PNG; returns its size in bytes.

    The palette is the image's 160 most frequent colours (the UI uses few) plus 96 samples of
    the heatmap's colour map, so both the widgets and the colour bar keep their colours.
    """
    import numpy as np
    import pyqtgraph as pg
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage

    image = widget.grab().toImage().convertToFormat(QImage.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), dtype=np.uint32,
                           count=image.bytesPerLine() * image.height() // 4)
    colors, counts = np.unique(pixels, return_counts=True)
    table = [int(c) for c in colors[np.argsort(counts)[::-1][:160]]]
    lut = pg.colormap.get("CET-D1").getLookupTable(nPts=96, alpha=False).astype(np.uint32)
    table += [int(0xFF000000 | (r << 16) | (g << 8) | b) for r, g, b in lut]
    small = image.convertToFormat(QImage.Format_Indexed8, table, Qt.ThresholdDither)
    if not small.save(str(path), "PNG", 0):
        raise OSError(f"could not write {path}")
    size = path.stat().st_size
    print(f"{path.relative_to(ROOT)}: {image.width()} x {image.height()}, {size / 1000:.0f} KB")
    if size >= MAX_BYTES:
        raise RuntimeError(f"{path.name} is {size} bytes, over the {MAX_BYTES} limit")
    return size


def build_app():
    """The window `llmlens default` shows: browser + chat tab, default model in both."""
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from app import gui
    from app.main_window import LensApp
    from app.settings import APP, ORG

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setOrganizationName(ORG)
    app.setApplicationName(APP)
    app.setApplicationDisplayName("LLM Lens")
    if gui.ICON.exists():
        app.setWindowIcon(QIcon(str(gui.ICON)))
    lens = LensApp()
    gui._install_chat(lens, None)  # None: the chat loads the embedded default model
    if getattr(lens, "chat", None) is None:
        raise RuntimeError("the chat tab did not start: " + lens.window.banner.message())
    lens.window.resize(*SIZE)
    lens.window.show()
    lens.open_default(show=False)  # as run_gui does: the Chat tab stays in front
    return app, lens


def shoot_browser(lens) -> None:
    win, b = lens.window, lens.browser
    wait_until(lambda: lens.current is not None or lens.open_worker is None, 300,
               "the default model to open in the browser")
    if lens.current is None:
        raise RuntimeError("the browser could not open the default model: "
                           + win.banner.message())
    win.show_panel(b)
    b.tabs.setCurrentWidget(b.tensor_split)
    # The 262144 x 640 embedding: shows the pooled heatmap and compresses well.
    b.tensors.select_tensor("token_embd.weight")
    ctl = lens.browser_controller
    wait_until(lambda: ctl.worker is None and ctl._pending is None and not b.detail.is_running
               and b.detail.info is not None and b.detail.info.name == "token_embd.weight",
               300, "the token_embd.weight analysis")
    if b.detail.status.text().startswith("Error"):
        raise RuntimeError(b.detail.status.text())
    settle()
    save_small(win, OUT / "browser.png")
    b.tabs.setCurrentWidget(b.summary)
    settle(0.1)
    save_small(win, OUT / "browser-summary.png")
    b.tabs.setCurrentWidget(b.metadata)
    b.metadata.select_key("tokenizer.ggml.tokens")
    settle(0.1)
    save_small(win, OUT / "browser-metadata.png")


def shoot_chat(lens) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from ui.chat.theme import dark_palette

    ctl, win = lens.chat, lens.window
    panel = ctl.panel
    win.show_panel(panel)
    wait_until(lambda: ctl.model_info is not None or not panel.error.isHidden(), 300,
               "the chat model to load")
    if ctl.model_info is None:
        raise RuntimeError(panel.error.label.text())
    if ctl._settings()["mode"] != "complete":
        raise RuntimeError("expected Complete mode for the default (base) model")
    # Through the settings form, as a user would: greedy, short.
    panel.settings.temperature.setValue(0.0)
    panel.settings.max_new_tokens.setValue(MAX_NEW_TOKENS)
    edit = panel.input.edit
    edit.setFocus()
    for i, line in enumerate(PROMPT.split("\n")):
        if i:
            QTest.keyClick(edit, Qt.Key_Return, Qt.ShiftModifier)  # QTest cannot type "\n"
        if line:
            QTest.keyClicks(edit, line)
    QTest.keyClick(edit, Qt.Key_Return)
    wait_until(lambda: ctl.busy, 10, "the reply to start")
    wait_until(lambda: not ctl.busy, 300, "the reply to finish")
    if not panel.error.isHidden():
        raise RuntimeError(panel.error.label.text())
    print("reply:", repr(ctl.messages[-1].content))
    settle(1.5)  # one tick of the status bar's memory timer after the reply
    save_small(win, OUT / "chat-light.png")

    app = QApplication.instance()
    light = app.palette()
    try:
        app.setPalette(dark_palette())
        # The dark shot shows the Prompt side tab: the exact prompt, token by token.
        panel.side_tabs.setCurrentWidget(panel.prompt_view)
        wait_until(lambda: "sky" in panel.prompt_view.plain_text(), 60, "the prompt preview")
        settle()
        save_small(win, OUT / "chat-dark.png")
    finally:
        app.setPalette(light)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="llmlens-shots-") as tmp:
        # Isolated settings (recent files) and conversations; the model cache is shared.
        os.environ["LLMLENS_CONFIG_DIR"] = str(Path(tmp) / "config")
        os.environ["LLMLENS_DATA_DIR"] = str(Path(tmp) / "data")
        app, lens = build_app()
        try:
            shoot_browser(lens)
            shoot_chat(lens)
        finally:
            lens.window.close()  # its `closing` signal shuts the chat engine and workers down
            lens.shutdown(10.0)
            app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
