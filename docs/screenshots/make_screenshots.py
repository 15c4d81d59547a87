"""Retake the README screenshots from the real app, on the default model and the demo MoE.

    QT_QPA_PLATFORM=offscreen .venv/bin/python docs/screenshots/make_screenshots.py

Builds the window as `llmlens` does (app.gui.run_gui: LensApp plus the chat tab), with its
settings and conversations in a temporary directory so the user's own are never touched, then:

- browser.png: the Tensors view with token_embd.weight analysed (histogram and heatmap);
  browser-summary.png and browser-metadata.png: the Summary and Metadata views;
- chat-light.png: the Chat tab after a greedy Complete-mode reply to a short question;
- chat-dark.png: the same under ui.chat.theme.dark_palette(), with the Prompt side tab;
- inspect-*.png: the inspection panels (View → Inspect → Show all), each in light and dark,
  and the whole window with the panels docked beside the chat (inspect-gemma-window.png in
  the light theme, inspect-moe-window.png in the dark one), on two models:
  the default Gemma 3 270M (dense; a greedy Complete-mode reply to GEMMA_PROMPT) and the
  demo MoE (Chat → Load the demo MoE model; a greedy continuation of MOE_PROMPT).
  See INSPECT_SHOTS for the list.

Everything goes through the real window, the real models and the real engine worker (greedy,
so a rerun gives the same pictures). `--only inspect` (or `browser`, `chat`) retakes a part.

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
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
SIZE = (1440, 900)
PROMPT = "Question: Why is the sky blue?\nAnswer:"
MAX_NEW_TOKENS = 40
MAX_BYTES = 300_000
PARTS = ("browser", "chat", "inspect")

# The inspection shots: a short greedy reply on each model, then one token selected.
GEMMA_PROMPT = "The Eiffel Tower is in the city of"  # greedy: " Paris, France. ..."
GEMMA_NEW_TOKENS = 12
GEMMA_LAYER = 11  # a global-attention layer for the matrix and head view (as a user picks it)
# Code, punctuation, digits and a comment: the kinds of text the demo MoE's experts split.
MOE_PROMPT = "def add(a, b):\n    return a + b  # 42"
MOE_NEW_TOKENS = 16
INSPECT_MAPS = ("viridis", "inferno")  # the inspection heatmaps' colour maps
INSPECT_TIMEOUT_S = 180
# Panel shots: each panel at a fixed size, the same in every run and both themes, in a
# window large enough for it (the strip: STRIP_WIDTH wide, tall enough for its lines).
PANEL_WINDOW = (1800, 1200)
PANEL_SIZE = (760, 560)
STRIP_WIDTH = 1200
SHORT_PANELS = {"probs": 330, "routing-dense": 330}  # panels with little to show: less height
QWIDGETSIZE_MAX = (1 << 24) - 1  # Qt's "no maximum size"
# The window shots: wider than SIZE, so the chat keeps ~60 % of it beside the panels.
INSPECT_WINDOW = (1600, 960)
STRIP_HEIGHT = 150
# (file stem, dock, what to show) per model; each is saved as <stem>-light.png and -dark.png.
INSPECT_SHOTS = {
    "gemma": [
        ("inspect-attention-grid", "attention", "the selected token's attention, layers × heads"),
        ("inspect-attention-matrix", "attention", "query × key matrix of one layer"),
        ("inspect-attention-heads", "attention", "head view: lines to the keys it attends to"),
        ("inspect-token-probs", "probs", "the candidates for the selected generated token"),
        ("inspect-logit-lens", "lens", "logit lens at the last prompt token"),
        ("inspect-throughput", "throughput", "tokens per second and the reply's timings"),
        ("inspect-strip-surprise", "strip", "the token strip coloured by surprise"),
        ("inspect-routing-dense", "routing", "the routing panel's empty state on a dense model"),
    ],
    "moe": [
        ("inspect-moe-routing-token", "routing", "router probabilities of the selected token"),
        ("inspect-moe-routing-load", "routing", "expert load per layer and for one layer"),
        ("inspect-moe-routing-text", "routing", "the text coloured by first-choice expert"),
        ("inspect-moe-routing-coactivation", "routing", "experts chosen together"),
        ("inspect-moe-strip-expert", "strip", "the token strip coloured by expert"),
    ],
}


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


def save_small(widget, path: Path, maps: tuple[str, ...] = ("CET-D1",)) -> int:
    """Save `widget` as a 256-colour PNG; returns its size in bytes.

    The palette is the image's 160 most frequent colours (the UI uses few) plus 96 samples
    shared out among the colour maps `maps` that the shot's heatmaps use, so both the widgets
    and the colour bars keep their colours.
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
    for name in maps:
        lut = pg.colormap.get(name).getLookupTable(nPts=96 // len(maps), alpha=False)
        table += [int(0xFF000000 | (int(r) << 16) | (int(g) << 8) | int(b)) for r, g, b in lut]
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


def type_and_send(ctl, text: str) -> None:
    """Type `text` into the chat input as a user would, press Enter, wait for the reply."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    panel = ctl.panel
    edit = panel.input.edit
    edit.setFocus()
    for i, line in enumerate(text.split("\n")):
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


def shoot_chat(lens) -> None:
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
    type_and_send(ctl, PROMPT)
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


@contextmanager
def dark_theme():
    """The app under ui.chat.theme.dark_palette() for the duration (panels restyle themselves)."""
    from PySide6.QtWidgets import QApplication

    from ui.chat.theme import dark_palette

    app = QApplication.instance()
    light = app.palette()
    app.setPalette(dark_palette())
    try:
        settle()
        yield
    finally:
        app.setPalette(light)
        settle()


def inspected(ins, index: int) -> bool:
    """The panels show token `index` and no engine pass is pending or about to start."""
    view = ins.attention._view
    lens = ins.lens.model.lens()
    return (ins.selection.index == index and ins._pending is None
            and not ins._debounce.isActive() and view is not None and view.query == index
            and view.matrix is not None and view.matrix_layer == ins.attention.layer_head()[0]
            and not ins.lens.is_busy()
            and lens is not None and lens.position == index)


def wait_inspected(ins, index: int) -> None:
    try:
        wait_until(lambda: inspected(ins, index), INSPECT_TIMEOUT_S,
                   f"the inspection of token #{index}")
    except TimeoutError as e:
        view, lens = ins.attention._view, ins.lens.model.lens()
        raise TimeoutError(
            f"{e}: selected {ins.selection.index}, pending {ins._pending} {ins._pending_what}, "
            f"debounce {ins._debounce.isActive()}, attention #{view and view.query} "
            f"matrix {view is not None and view.matrix is not None}, lens busy "
            f"{ins.lens.is_busy()} at #{lens and lens.position}, open "
            f"{[n for n in ins.docks if ins.is_open(n)]}") from None


def first_word(tokens) -> int:
    """The first generated token with a letter or digit in it (not a newline or a space)."""
    return next((i for i in range(tokens.n_prompt, len(tokens))
                 if any(c.isalnum() for c in tokens.texts[i])), tokens.n_prompt)


def select_token(ins, index: int) -> None:
    """Select token `index` as a click in the token strip does, and wait for the panels."""
    ins.select_by_user(index)
    wait_inspected(ins, index)
    settle(0.5)


def reply_greedy(ctl, prompt: str, max_new_tokens: int) -> None:
    """A new conversation, greedy settings through the form, then `prompt` typed and sent."""
    ctl.new_chat()
    panel = ctl.panel
    if ctl.conversation_settings()["mode"] != "complete":
        raise RuntimeError(f"expected Complete mode for {ctl.model_info['name']}")
    panel.settings.temperature.setValue(0.0)
    panel.settings.max_new_tokens.setValue(max_new_tokens)
    type_and_send(ctl, prompt)


def layout_window(ins) -> None:
    """The window shots' layout: View → Inspect → Show all in an INSPECT_WINDOW-sized window."""
    from PySide6.QtCore import Qt

    win, docks = ins.window, ins.docks
    win.resize(*INSPECT_WINDOW)
    settle(0.2)
    ins.show_all()
    half = (win.height() - STRIP_HEIGHT) // 2
    win.resizeDocks([docks["attention"], docks["routing"]], [half, half], Qt.Vertical)
    win.resizeDocks([docks["strip"]], [STRIP_HEIGHT - 40], Qt.Vertical)


def panel_size(ins, dock: str) -> tuple[int, int]:
    if dock == "strip":  # the whole width, every line
        lines = ins.strip.canvas.minimumHeight() + ins.strip.header.sizeHint().height() + 20
        return STRIP_WIDTH, max(100, min(320, lines))
    dense = dock == "routing" and not (ins.chat.model_info or {}).get("moe_layers")
    return PANEL_SIZE[0], SHORT_PANELS.get("routing-dense" if dense else dock, PANEL_SIZE[1])


def shoot_panel(ins, stem: str, dock: str, show: Callable[[], None], theme: str) -> None:
    """One panel, raised in its dock and held at a fixed size while it is grabbed (the dock
    layout makes room), so every run and both themes give the same picture size."""
    win, panel = ins.window, ins.panels[dock]
    if win.size().toTuple() != PANEL_WINDOW:
        win.resize(*PANEL_WINDOW)
        settle(0.2)
    ins.docks[dock].raise_()
    show()
    if dock == "strip":  # its height follows from its lines at that width
        panel.setFixedWidth(STRIP_WIDTH)
        settle(0.2)
    panel.setFixedSize(*panel_size(ins, dock))
    try:
        settle(0.3)
        if dock == "strip":
            ins.strip.scroll.verticalScrollBar().setValue(0)  # from the first line, the prompt
        # Raising a dock asks for the panels' data again: wait for that pass, not a busy panel.
        wait_inspected(ins, ins.selection.index)
        settle(0.3)
        save_small(panel, OUT / f"{stem}-{theme}.png", INSPECT_MAPS)
    finally:
        panel.setMinimumSize(0, 0)
        panel.setMaximumSize(QWIDGETSIZE_MAX, QWIDGETSIZE_MAX)


def gemma_views(ins) -> dict[str, Callable[[], None]]:
    """What to show before each Gemma shot (the tab, the colour mode)."""
    att = ins.attention
    return {
        "inspect-attention-grid": lambda: att.tabs.setCurrentIndex(0),
        "inspect-attention-matrix": lambda: (att.tabs.setCurrentIndex(1),
                                             att.layer_box.setCurrentIndex(GEMMA_LAYER),
                                             att.set_view_mode("mean")),
        "inspect-attention-heads": lambda: att.tabs.setCurrentIndex(2),
        "inspect-strip-surprise": lambda: ins.strip.set_color_mode("surprise"),
    }


def moe_views(ins) -> dict[str, Callable[[], None]]:
    r = ins.routing
    return {
        "inspect-moe-routing-token": lambda: r.tabs.setCurrentIndex(0),
        "inspect-moe-routing-load": lambda: r.tabs.setCurrentIndex(1),
        "inspect-moe-routing-text": lambda: r.tabs.setCurrentIndex(2),
        "inspect-moe-routing-coactivation": lambda: r.tabs.setCurrentIndex(3),
        "inspect-moe-strip-expert": lambda: ins.strip.set_color_mode("expert"),
    }


def shoot_panels(ins, model: str, views: dict[str, Callable[[], None]],
                 stems: set[str] | None = None) -> None:
    """The shots of INSPECT_SHOTS[model] (those in `stems`, default all), light then dark."""
    shots = [(stem, dock) for stem, dock, _ in INSPECT_SHOTS[model]
             if stems is None or stem in stems]
    for theme in ("light", "dark"):
        with dark_theme() if theme == "dark" else nullcontext():
            for stem, dock in shots:
                shoot_panel(ins, stem, dock, views.get(stem, lambda: None), theme)


def window_shot(ins, model: str, theme: str) -> None:
    """The whole window: chat on the left, the panels docked on the right and below.

    As a user makes room for the panels: the chat's settings column dragged shut and the
    "no chat template" notice closed (both models are base models in Complete mode)."""
    layout_window(ins)
    panel = ins.chat.panel
    panel.notice.hide()
    sizes = panel.splitter.sizes()
    panel.splitter.setSizes([160, sizes[0] + sizes[1] + sizes[2] - 160, 0])
    ins.strip.scroll.verticalScrollBar().setValue(0)  # the first line: the prompt
    if model == "gemma":
        ins.attention.tabs.setCurrentIndex(0)
        ins.docks["attention"].raise_()
        ins.docks["probs"].raise_()
        ins.strip.set_color_mode("surprise")
    else:
        ins.routing.tabs.setCurrentIndex(2)
        ins.docks["routing"].raise_()
        ins.docks["attention"].raise_()
        ins.strip.set_color_mode("expert")
    with dark_theme() if theme == "dark" else nullcontext():
        settle(1.2)  # one tick of the status bar's memory timer
        save_small(ins.window, OUT / f"inspect-{model}-window.png", INSPECT_MAPS)


def shoot_inspect(lens) -> None:
    ctl, win = lens.chat, lens.window
    ins = ctl.inspect
    win.show_panel(ctl.panel)
    wait_until(lambda: ctl.model_info is not None, 300, "the chat model to load")
    ins.show_all()  # View → Inspect → Show all

    # The default model: dense, sliding-window attention.
    reply_greedy(ctl, GEMMA_PROMPT, GEMMA_NEW_TOKENS)
    n_prompt = ctl.tokens.n_prompt
    select_token(ins, first_word(ctl.tokens))  # " Paris"
    lens_shot = {"inspect-logit-lens"}
    shoot_panels(ins, "gemma", gemma_views(ins),
                 {stem for stem, _, _ in INSPECT_SHOTS["gemma"]} - lens_shot)
    window_shot(ins, "gemma", "light")
    # The logit lens at the last prompt token: which layer first predicts " Paris".
    select_token(ins, n_prompt - 1)
    shoot_panels(ins, "gemma", {}, lens_shot)

    # The demo MoE, as Chat → Load the demo MoE model loads it.
    ctl.actions["demo"].trigger()
    wait_until(lambda: ctl.model_info is not None and bool(ctl.model_info.get("moe_layers"))
               or not ctl.panel.error.isHidden(), 300, "the demo MoE to load")
    if not ctl.panel.error.isHidden():
        raise RuntimeError(ctl.panel.error.label.text())
    reply_greedy(ctl, MOE_PROMPT, MOE_NEW_TOKENS)
    select_token(ins, first_word(ctl.tokens))
    wait_until(lambda: ins.routing._t() is not None, INSPECT_TIMEOUT_S, "the routing pass")
    shoot_panels(ins, "moe", moe_views(ins))
    window_shot(ins, "moe", "dark")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=PARTS, action="append",
                        help="retake only these shots (repeatable; default: all)")
    args = parser.parse_args(argv)
    parts = args.only or PARTS
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="llmlens-shots-") as tmp:
        # Isolated settings (recent files) and conversations; the model cache is shared.
        os.environ["LLMLENS_CONFIG_DIR"] = str(Path(tmp) / "config")
        os.environ["LLMLENS_DATA_DIR"] = str(Path(tmp) / "data")
        app, lens = build_app()
        try:
            if "browser" in parts:
                shoot_browser(lens)
            if "chat" in parts:
                shoot_chat(lens)
            if "inspect" in parts:
                shoot_inspect(lens)
        finally:
            lens.window.close()  # its `closing` signal shuts the chat engine and workers down
            lens.shutdown(10.0)
            app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
