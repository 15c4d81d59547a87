"""The chat template(s) stored in a GGUF file, as read-only monospaced text."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPlainTextEdit, QVBoxLayout, QWidget

NO_TEMPLATE = "This file has no chat template (tokenizer.chat_template is not set)."


class ChatTemplateView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QLabel("Template:")
        self.choice = QComboBox()  # files may hold named variants: tokenizer.chat_template.tool_use
        self.choice.currentIndexChanged.connect(self._show_current)
        self.info = QLabel("")
        top = QHBoxLayout()
        top.addWidget(self.label)
        top.addWidget(self.choice)
        top.addWidget(self.info, 1)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setLineWrapMode(QPlainTextEdit.NoWrap)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.text.setTextInteractionFlags(Qt.TextSelectableByMouse | Qt.TextSelectableByKeyboard)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(top)
        layout.addWidget(self.text, 1)
        self._templates: dict[str, str] = {}
        self.set_templates({})

    def set_templates(self, templates: dict[str, str]) -> None:
        """templates: metadata key -> template text (empty dict: the file has none)."""
        self._templates = dict(templates)
        self.choice.blockSignals(True)
        self.choice.clear()
        self.choice.addItems(list(self._templates))
        self.choice.blockSignals(False)
        many = len(self._templates) > 1
        self.label.setVisible(many)
        self.choice.setVisible(many)
        self._show_current()

    def has_template(self) -> bool:
        return bool(self._templates)

    def _show_current(self) -> None:
        key = self.choice.currentText()
        if not self._templates or key not in self._templates:
            self.text.setPlainText(NO_TEMPLATE)
            self.info.setText("")
            self.text.setEnabled(False)
            return
        body = self._templates[key]
        self.text.setEnabled(True)
        self.text.setPlainText(body)
        self.info.setText(f"{key} · {len(body):,} characters, {body.count(chr(10)) + 1} lines")
