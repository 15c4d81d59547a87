"""The message input: Enter sends, Shift+Enter adds a line; grows with its text up to 8 lines.

While a reply is generating the Send button turns into Stop. When a user message is being
edited, a banner says so and Send replaces that message (and everything after it).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QSizePolicy,
                               QToolButton, QVBoxLayout, QWidget)

MAX_LINES = 8


class PromptEdit(QPlainTextEdit):
    """A plain-text editor that submits on Enter (Shift+Enter inserts a newline)."""

    submitted = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTabChangesFocus(True)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.document().contentsChanged.connect(self._fit)
        self._fit()

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt override
        if event.key() in (Qt.Key_Return, Qt.Key_Enter):
            if event.modifiers() & Qt.ShiftModifier:
                self.insertPlainText("\n")
            else:
                self.submitted.emit()
            return
        super().keyPressEvent(event)

    def _fit(self) -> None:
        lines = max(1, min(MAX_LINES, self.document().lineCount()))
        line = self.fontMetrics().lineSpacing()
        margins = self.contentsMargins()
        doc_margin = self.document().documentMargin()
        self.setFixedHeight(int(lines * line + 2 * doc_margin + margins.top() + margins.bottom() + 4))


class InputBox(QWidget):
    """PromptEdit + Send/Stop button + an 'editing message N' banner."""

    sendRequested = Signal(str)
    stopRequested = Signal()
    editCancelled = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = PromptEdit(self)
        self.edit.setPlaceholderText("Message  (Enter to send, Shift+Enter for a new line)")
        self.button = QPushButton("Send", self)
        self.button.setDefault(False)
        self.button.setAutoDefault(False)
        self.button.setMinimumWidth(72)
        self.banner = QLabel(self)
        self.banner.setObjectName("editBanner")
        self.cancel_edit_button = QToolButton(self)
        self.cancel_edit_button.setText("Cancel edit")
        self.cancel_edit_button.setAutoRaise(True)
        banner_row = QHBoxLayout()
        banner_row.setContentsMargins(0, 0, 0, 0)
        banner_row.addWidget(self.banner, 1)
        banner_row.addWidget(self.cancel_edit_button)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.button, 0, Qt.AlignBottom)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 4, 12, 10)
        layout.setSpacing(4)
        layout.addLayout(banner_row)
        layout.addLayout(row)
        self.busy = False
        self.editing: int | None = None
        self.edit.submitted.connect(self._submit)
        self.button.clicked.connect(self._clicked)
        self.cancel_edit_button.clicked.connect(self.cancel_edit)
        self._show_banner()

    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)
        self.edit.moveCursor(self.edit.textCursor().MoveOperation.End)

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.button.setText("Stop" if busy else "Send")
        self.button.setToolTip("Stop generating (Esc)" if busy else "Send (Enter)")

    def set_placeholder(self, text: str) -> None:
        self.edit.setPlaceholderText(text)

    def begin_edit(self, index: int, text: str) -> None:
        self.editing = index
        self.set_text(text)
        self._show_banner()
        self.edit.setFocus()

    def cancel_edit(self) -> None:
        if self.editing is not None:
            self.editing = None
            self.edit.clear()
            self._show_banner()
            self.editCancelled.emit()

    def end_edit(self) -> None:
        self.editing = None
        self._show_banner()

    def _show_banner(self) -> None:
        editing = self.editing is not None
        if editing:
            self.banner.setText("Editing an earlier message: sending replaces it and drops "
                                "everything after it.")
        self.banner.setVisible(editing)
        self.cancel_edit_button.setVisible(editing)

    def _clicked(self) -> None:
        if self.busy:
            self.stopRequested.emit()
        else:
            self._submit()

    def _submit(self) -> None:
        # While busy Enter does nothing: a second request never interleaves with a running one.
        if self.busy:
            return
        self.sendRequested.emit(self.text())
