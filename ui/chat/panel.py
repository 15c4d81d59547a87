"""The chat tab: conversation sidebar | messages + input | settings and prompt preview.

`ChatPanel` only arranges the pieces and forwards their signals; `app/chat_controller.py`
decides what they mean. It also shows two transient strips above the input: a notice (why a
mode was picked, model loading with a Cancel button) and an error strip (worker errors), so
errors never need a modal dialog and the window stays usable.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QProgressBar, QPushButton, QSplitter,
                               QTabWidget, QToolButton, QVBoxLayout, QWidget)

from ui.chat.input_box import InputBox
from ui.chat.messages import MessageList
from ui.chat.prompt_view import PromptView
from ui.chat.settings_panel import SettingsPanel
from ui.chat.sidebar import ConversationSidebar
from ui.chat.theme import is_dark, mix, palette_watcher


class _Strip(QWidget):
    """A one-line coloured message with optional progress bar and action button."""

    def __init__(self, kind: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.kind = kind
        self.setAttribute(Qt.WA_StyledBackground, True)
        self.setObjectName(f"strip-{kind}")
        self.label = QLabel(self)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)  # percent: model loading reports how far it got
        self.progress.setMaximumWidth(140)
        self.progress.setFormat("%p%")
        self.button = QPushButton(self)
        self.close_button = QToolButton(self)
        self.close_button.setText("✕")
        self.close_button.setAutoRaise(True)
        self.close_button.clicked.connect(self.hide)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 6, 6)
        row.addWidget(self.label, 1)
        row.addWidget(self.progress)
        row.addWidget(self.button)
        row.addWidget(self.close_button)
        self.progress.hide()
        self.button.hide()
        self.restyle()
        palette_watcher().changed.connect(self.restyle)
        self.hide()

    def show_text(self, text: str, progress: bool = False, button: str = "",
                  closable: bool = True) -> None:
        self.label.setText(text)
        if progress:
            self.progress.setValue(0)  # a new task starts from the beginning
        self.progress.setVisible(progress)
        self.button.setVisible(bool(button))
        self.button.setText(button)
        self.close_button.setVisible(closable)
        self.show()

    def set_progress(self, percent: int) -> None:
        self.progress.setValue(max(0, min(100, int(percent))))

    def restyle(self) -> None:
        pal = QGuiApplication.palette()  # not self.palette(): our own style sheets alter that
        base, text = pal.color(QPalette.Base), pal.color(QPalette.Text)
        tint = pal.color(QPalette.Highlight) if self.kind == "notice" else QColor(220, 60, 60)
        bg = mix(base, tint, 0.28 if is_dark(pal) else 0.14)
        sheet = (f"QWidget#{self.objectName()} {{ background-color: {bg.name()};"
                 f" border-radius: 6px; }} QLabel {{ color: {text.name()}; }}")
        if sheet != self.styleSheet():  # a style sheet sends PaletteChange: avoid the loop
            self.setStyleSheet(sheet)



class ChatPanel(QWidget):
    """The whole chat tab. Public parts: sidebar, messages, input, settings, prompt_view."""

    def __init__(self, settings_defaults: dict[str, Any], max_threads: int,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.sidebar = ConversationSidebar(self)
        self.messages = MessageList(self)
        self.input = InputBox(self)
        self.settings = SettingsPanel(settings_defaults, max_threads, self)
        self.prompt_view = PromptView(self)
        self.notice = _Strip("notice", self)
        self.error = _Strip("error", self)

        center = QWidget(self)
        strips = QVBoxLayout()
        strips.setContentsMargins(12, 0, 12, 0)
        strips.setSpacing(4)
        strips.addWidget(self.notice)
        strips.addWidget(self.error)
        col = QVBoxLayout(center)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(4)
        col.addWidget(self.messages, 1)
        col.addLayout(strips)
        col.addWidget(self.input)

        self.side_tabs = QTabWidget(self)
        self.side_tabs.addTab(self.settings, "Settings")
        self.side_tabs.addTab(self.prompt_view, "Prompt")
        self.side_tabs.setDocumentMode(True)

        self.splitter = QSplitter(Qt.Horizontal, self)
        self.splitter.addWidget(self.sidebar)
        self.splitter.addWidget(center)
        self.splitter.addWidget(self.side_tabs)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setStretchFactor(2, 0)
        self.splitter.setSizes([200, 640, 300])
        self.splitter.setCollapsible(1, False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)

    def show_error(self, text: str) -> None:
        self.error.show_text(text)

    def set_busy(self, busy: bool) -> None:
        self.input.set_busy(busy)
        self.messages.set_busy(busy)

    def focus_input(self) -> None:
        self.input.edit.setFocus(Qt.ShortcutFocusReason)
