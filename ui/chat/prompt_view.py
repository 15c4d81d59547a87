"""The exact prompt the model sees: the rendered chat template (or raw text), token by token.

Tokens are shown with alternating backgrounds so their boundaries are visible; special tokens
(BOS, turn markers) appear as the model sees them. Data in: `show(text, token_texts, note)`.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication, QPalette
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QPushButton, QTextEdit, QVBoxLayout,
                               QWidget)

from ui.chat.theme import is_dark, mix, palette_watcher


class PromptView(QWidget):
    refreshRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.summary = QLabel("Not rendered yet.")
        self.summary.setWordWrap(True)
        self.refresh_button = QPushButton("Refresh")
        self.view = QTextEdit()
        self.view.setReadOnly(True)
        self.view.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        top.addWidget(self.refresh_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(top)
        layout.addWidget(self.view, 1)
        self.refresh_button.clicked.connect(self.refreshRequested)
        self._last: tuple[str, list[str], str] | None = None
        palette_watcher().changed.connect(self._restyle)

    def _restyle(self) -> None:
        if self._last:
            self.show_prompt(*self._last)

    def show_prompt(self, text: str, token_texts: list[str], note: str) -> None:
        self._last = (text, token_texts, note)
        self.summary.setText(f"{len(token_texts)} tokens · {note}")
        pal = QGuiApplication.palette()  # not self.palette(): our own style sheets alter that
        base, fg = pal.color(QPalette.Base), pal.color(QPalette.Text)
        shades = (mix(base, pal.color(QPalette.Highlight), 0.25 if is_dark(pal) else 0.15).name(),
                  mix(base, fg, 0.12 if is_dark(pal) else 0.07).name())
        parts = []
        for i, piece in enumerate(token_texts):
            esc = html.escape(piece).replace("\n", "↵<br>")
            parts.append(f'<span style="background-color:{shades[i % 2]}">{esc}</span>')
        self.view.setHtml(f'<div style="white-space: pre-wrap;">{"".join(parts)}</div>')
        self.view.setToolTip("Alternating backgrounds mark token boundaries; ↵ is a newline.")

    def plain_text(self) -> str:
        return self._last[0] if self._last else ""

