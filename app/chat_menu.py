"""The Chat menu and the chat's keyboard shortcuts (Ctrl+N, Ctrl+L, Esc, Ctrl+R, Ctrl+K, "/"),
and File → Connect to Server… (app/remote_host.py's dialog)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence, QShortcut

from ui.main_window import MainWindow


def add_chat_menu(main_window: MainWindow, ctl) -> dict[str, QAction]:
    """Fill the window's Chat menu with `ctl`'s (a ChatController) actions; returns them by name."""
    panel = ctl.panel
    menu = main_window.menu("&Chat")

    def action(text: str, shortcut: str | None, slot, window_wide: bool = True,
               tip: str = "") -> QAction:
        act = QAction(text, main_window)
        if shortcut:
            act.setShortcut(QKeySequence(shortcut))
        act.setShortcutContext(Qt.WindowShortcut if window_wide else Qt.WidgetWithChildrenShortcut)
        act.setStatusTip(tip)
        act.triggered.connect(slot)
        menu.addAction(act)
        if not window_wide:
            panel.addAction(act)  # active only while the chat tab has focus
        return act

    def ask_model() -> None:
        path = ctl.ask_model_path()
        if path:
            ctl.load_model(path)

    def load_demo() -> None:
        from engine.default_model import demo_moe_path

        ctl.load_model(str(demo_moe_path()))

    def connect_dialog():
        from app.remote_host import open_connect_dialog

        ctl.connect_dialog = open_connect_dialog(main_window, ctl)
        return ctl.connect_dialog

    def focus() -> None:
        main_window.show_panel(panel)
        panel.focus_input()

    actions = {
        "new": action("&New chat", "Ctrl+N", ctl.new_chat, tip="Start a new conversation"),
        "load": action("&Load model for chat…", "Ctrl+L", ask_model,
                       tip="Open a GGUF file and chat with it"),
        "default": action("Load the &default model", None, lambda: ctl.load_model("")),
        "demo": action("Load the demo &MoE model", None, load_demo,
                       tip="A small mixture-of-experts model, to see expert routing"),
        "stop": action("&Stop generating", "Esc", ctl.stop, window_wide=False),
        "regenerate": action("&Regenerate reply", "Ctrl+R", ctl.regenerate),
        "focus": action("&Focus input", "Ctrl+K", focus),
    }
    main_window.connect_requested.connect(lambda: connect_dialog())
    menu.addSeparator()
    menu.addAction("Export conversation as &Markdown…",
                   lambda: ctl.conv and ctl._ask_export(ctl.conv.id, "md"))
    menu.addAction("Export conversation as &JSON…",
                   lambda: ctl.conv and ctl._ask_export(ctl.conv.id, "json"))
    # "/" focuses the input when typed outside a text field (text fields keep the character:
    # they claim printable keys before shortcuts see them).
    slash = QShortcut(QKeySequence("/"), panel, context=Qt.WidgetWithChildrenShortcut)
    slash.activated.connect(panel.focus_input)
    ctl.slash_shortcut = slash
    return actions
