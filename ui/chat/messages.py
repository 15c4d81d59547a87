"""The conversation as a column of message widgets: role, rendered text, per-message actions.

`MessageWidget` shows one message (Markdown in Chat mode, exact text in Complete mode) with
Copy, Edit (user messages) and Regenerate (the last reply). `MessageList` stacks them in a
scroll area that follows the bottom while a reply streams, unless the user scrolled up.
Only plain data comes in (role, text, a stats line); the widgets know nothing of the engine.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QPalette
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QScrollArea, QSizePolicy,
                               QTextBrowser, QToolButton, QVBoxLayout, QWidget)

from ui.chat.markdown_render import document_css, render_markdown, render_plain
from ui.chat.theme import is_dark, mix, palette_watcher

ROLE_LABELS = {
    "chat": {"user": "You", "assistant": "Assistant"},
    "complete": {"user": "Text", "assistant": "Model continuation"},
}


class MessageBody(QTextBrowser):
    """A read-only rich-text view that is exactly as tall as its content (no inner scrollbar)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenExternalLinks(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.viewport().setAutoFillBackground(False)
        self.setStyleSheet("QTextBrowser { background: transparent; }")
        self.document().setDocumentMargin(2)
        self.document().documentLayout().documentSizeChanged.connect(self._fit)

    def _fit(self, *_) -> None:
        height = int(self.document().size().height() + 0.5) + 2
        if height != self.height():
            self.setFixedHeight(height)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self.document().setTextWidth(self.viewport().width())
        self._fit()

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(200, int(self.document().size().height()) + 2)


class MessageWidget(QFrame):
    """One message: header (role, stats, actions) over the rendered text."""

    copyRequested = Signal(int)
    editRequested = Signal(int)
    regenerateRequested = Signal(int)

    def __init__(self, index: int, role: str, text: str = "", mode: str = "chat",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.index = index
        self.role = role
        self.mode = mode
        self.text = text
        self.setObjectName(f"message-{role}")
        self.role_label = QLabel()
        self.role_label.setObjectName("role")
        self.stats_label = QLabel()
        self.stats_label.setObjectName("stats")
        self.copy_button = self._tool("Copy", "Copy this message's text", self.copyRequested)
        self.edit_button = self._tool("Edit", "Edit this message and continue from here",
                                      self.editRequested)
        self.regen_button = self._tool("Regenerate", "Generate this reply again (Ctrl+R)",
                                       self.regenerateRequested)
        self.edit_button.setVisible(role == "user")
        self.regen_button.setVisible(False)

        header = QHBoxLayout()
        header.setContentsMargins(0, 0, 0, 0)
        header.addWidget(self.role_label)
        header.addWidget(self.stats_label, 1)
        for b in (self.copy_button, self.edit_button, self.regen_button):
            header.addWidget(b)
        self.body = MessageBody(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.setSpacing(2)
        layout.addLayout(header)
        layout.addWidget(self.body)
        self.set_mode(mode)
        self.restyle()
        palette_watcher().changed.connect(self.restyle)

    def _tool(self, text: str, tip: str, signal: Signal) -> QToolButton:
        b = QToolButton(self)
        b.setText(text)
        b.setToolTip(tip)
        b.setAutoRaise(True)
        b.setCursor(Qt.PointingHandCursor)
        b.clicked.connect(lambda: signal.emit(self.index))
        return b

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.role_label.setText(ROLE_LABELS.get(mode, ROLE_LABELS["chat"]).get(self.role, self.role))
        self.set_text(self.text)

    def set_text(self, text: str) -> None:
        self.text = text
        # Chat replies are Markdown; Complete mode is raw text, shown exactly as the model saw it.
        html = render_markdown(text) if self.mode == "chat" else render_plain(text)
        self.body.setHtml(html)

    def set_stats(self, text: str) -> None:
        self.stats_label.setText(text)

    def set_regenerate_visible(self, visible: bool) -> None:
        self.regen_button.setVisible(visible)

    def set_actions_enabled(self, enabled: bool) -> None:
        for b in (self.edit_button, self.regen_button):
            b.setEnabled(enabled)

    def restyle(self) -> None:
        """Colours from the current palette, so light and dark themes both work."""
        pal = QGuiApplication.palette()  # not self.palette(): our own style sheets alter that
        base, text = pal.color(QPalette.Base), pal.color(QPalette.Text)
        accent = pal.color(QPalette.Highlight)
        dark = is_dark(pal)
        if self.role == "user":
            bg = mix(base, accent, 0.22 if dark else 0.10)
        else:
            bg = mix(base, text, 0.05 if dark else 0.025)
        border = mix(bg, text, 0.12)
        code_bg = mix(base, text, 0.12 if dark else 0.07)
        sheet = (
            f"QFrame#{self.objectName()} {{ background-color: {bg.name()};"
            f" border: 1px solid {border.name()}; border-radius: 10px; }}"
            f"QLabel#role {{ font-weight: 600; color: {text.name()}; }}"
            f"QLabel#stats {{ color: {mix(text, bg, 0.45).name()}; padding-left: 8px; }}"
            f"QToolButton {{ color: {mix(text, bg, 0.3).name()}; border: none; padding: 1px 4px; }}"
            f"QToolButton:hover {{ color: {accent.name()}; }}"
        )
        if sheet == self.styleSheet():
            return  # unchanged: skip re-rendering the text
        self.setStyleSheet(sheet)
        self.body.document().setDefaultStyleSheet(
            document_css(code_bg.name(), text.name(), pal.color(QPalette.Link).name()))
        self.set_text(self.text)



class MessageList(QScrollArea):
    """The scrolling column of messages; follows the bottom while at the bottom."""

    copyRequested = Signal(int)
    editRequested = Signal(int)
    regenerateRequested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self._content = QWidget()
        self._layout = QVBoxLayout(self._content)
        self._layout.setContentsMargins(16, 12, 16, 12)
        self._layout.setSpacing(10)
        self.placeholder = QLabel()
        self.placeholder.setAlignment(Qt.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.placeholder.setObjectName("placeholder")
        self._layout.addWidget(self.placeholder)
        self._layout.addStretch(1)
        self.setWidget(self._content)
        self.widgets: list[MessageWidget] = []
        self.mode = "chat"
        self._follow = True
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._on_scrolled)
        bar.rangeChanged.connect(self._on_range)
        self._set_placeholder()

    # -- content -------------------------------------------------------------------------------

    def clear(self) -> None:
        for w in self.widgets:
            w.setParent(None)
            w.deleteLater()
        self.widgets.clear()
        self._follow = True
        self._set_placeholder()

    def add_message(self, role: str, text: str = "", stats: str = "") -> MessageWidget:
        w = MessageWidget(len(self.widgets), role, text, self.mode, self._content)
        w.set_stats(stats)
        w.copyRequested.connect(self.copyRequested)
        w.editRequested.connect(self.editRequested)
        w.regenerateRequested.connect(self.regenerateRequested)
        self._layout.insertWidget(self._layout.count() - 1, w)
        self.widgets.append(w)
        self._set_placeholder()
        self._update_regenerate()
        return w

    def remove_from(self, index: int) -> None:
        """Drop the messages at `index` and after."""
        for w in self.widgets[index:]:
            w.setParent(None)
            w.deleteLater()
        del self.widgets[index:]
        self._set_placeholder()
        self._update_regenerate()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        for w in self.widgets:
            w.set_mode(mode)
        self._set_placeholder()

    def set_busy(self, busy: bool) -> None:
        for w in self.widgets:
            w.set_actions_enabled(not busy)

    def scroll_to_bottom(self) -> None:
        self._follow = True
        QTimer.singleShot(0, lambda: self.verticalScrollBar().setValue(
            self.verticalScrollBar().maximum()))

    def _update_regenerate(self) -> None:
        for i, w in enumerate(self.widgets):
            w.set_regenerate_visible(w.role == "assistant" and i == len(self.widgets) - 1)

    def _set_placeholder(self) -> None:
        if self.mode == "complete":
            hint = ("Complete mode: type the beginning of a text and the model continues it.\n"
                    "Enter sends · Shift+Enter adds a line · Enter on an empty box continues.")
        else:
            hint = "Ask the model anything.\nEnter sends · Shift+Enter adds a line."
        self.placeholder.setText(hint)
        self.placeholder.setVisible(not self.widgets)

    # -- following the bottom ------------------------------------------------------------------

    def _on_scrolled(self, value: int) -> None:
        self._follow = value >= self.verticalScrollBar().maximum() - 4

    def _on_range(self, _lo: int, hi: int) -> None:
        if self._follow:
            self.verticalScrollBar().setValue(hi)


def copy_to_clipboard(text: str) -> None:
    QGuiApplication.clipboard().setText(text)
