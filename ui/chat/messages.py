"""The conversation as a column of message widgets: role, rendered text, per-message actions.

`MessageWidget` shows one message (Markdown in Chat mode, exact text in Complete mode) with
Copy, Edit (user messages) and Regenerate (the last reply). `MessageList` stacks them in a
scroll area that follows the bottom while a reply streams, unless the user scrolled up.
Only plain data comes in (role, text, a stats line); the widgets know nothing of the engine.

Tokens: a click in a message's text emits `positionClicked(message, offset)` with `offset` a
character offset into the message's source text (not the rendered document: Markdown drops
and adds characters), and `set_highlight(start, end)` marks a source range, so the app can
map both to tokens. `SourceMap` aligns the rendered document with the source text.

Reasoning: a reply may come with a reasoning text (gpt-oss's analysis channel, a `<think>`
block) and the slice of its source text that is the answer. The reasoning sits in a block of
its own above the answer, collapsed behind a "Reasoning (n words) ▸" toggle ("Thinking…" while
it streams); offsets stay offsets into the whole source text.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QPoint, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QPalette, QTextCharFormat, QTextCursor, QTextDocument
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QScrollArea, QSizePolicy,
                               QTextBrowser, QTextEdit, QToolButton, QVBoxLayout, QWidget)

from ui.chat.markdown_render import MarkdownView, document_css, render_plain
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
        if self.document().textWidth() != self.viewport().width():  # it relayouts everything
            self.document().setTextWidth(self.viewport().width())
        self._fit()

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(200, int(self.document().size().height()) + 2)


class SourceMap:
    """Character positions between a message's source text and its rendered QTextDocument.

    The document's characters are read fragment by fragment with their positions (tables and
    code frames add positions that hold no character). Each rendered character is then matched
    to the next equal source character within LOOKAHEAD: rendering only drops characters
    (Markdown syntax, a link's URL) or adds block breaks, so one linear pass aligns them. A
    source character the rendering dropped maps to the next rendered one.
    """

    LOOKAHEAD = 256  # longer than a link's URL or a table row's syntax

    def __init__(self, source: str, doc: QTextDocument) -> None:
        self._doc_of = [-1] * len(source)  # source offset -> document position (-1: dropped)
        self._source_of: dict[int, int] = {}
        i = 0
        block = doc.begin()
        while block.isValid():
            it = block.begin()
            while not it.atEnd():
                frag = it.fragment()
                # Line breaks and pre-formatted spaces come back as U+2028 and U+00A0.
                text = frag.text().replace("\u2028", "\n").replace("\u00a0", " ")
                for k, ch in enumerate(text):
                    at = source.find(ch, i, i + self.LOOKAHEAD)
                    if at >= 0:
                        self._doc_of[at] = frag.position() + k
                        self._source_of[frag.position() + k] = at
                        i = at + 1
                it += 1
            block = block.next()  # block breaks are the document's own: never matched

    def to_doc(self, offset: int) -> int | None:
        """Document position of source character `offset` (or of the next one rendered)."""
        for k in range(max(0, offset), len(self._doc_of)):
            if self._doc_of[k] >= 0:
                return self._doc_of[k]
        return None

    def to_source(self, position: int) -> int | None:
        """Source offset of the character at document `position`; None off the text."""
        return self._source_of.get(position)


class MessageWidget(QFrame):
    """One message: header (role, stats, actions) over the rendered text."""

    copyRequested = Signal(int)
    editRequested = Signal(int)
    regenerateRequested = Signal(int)
    positionClicked = Signal(int, int)  # (message index, character offset in the source text)

    def __init__(self, index: int, role: str, text: str = "", mode: str = "chat",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.index = index
        self.role = role
        self.mode = mode
        self.text = text
        self.reasoning: str | None = None  # None: the reply has no reasoning part
        self._answer_start = 0
        self._answer_end: int | None = None
        self._thinking = False
        self._reasoning_open = False
        self._reasoning_shown: str | None = None  # what reasoning_body holds
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
        self.reasoning_button = QToolButton(self)
        self.reasoning_button.setObjectName("reasoning")
        self.reasoning_button.setAutoRaise(True)
        self.reasoning_button.setCursor(Qt.PointingHandCursor)
        self.reasoning_button.setToolTip("Show or hide the model's reasoning")
        self.reasoning_button.clicked.connect(self.toggle_reasoning)
        self.reasoning_button.hide()
        self.reasoning_body = MessageBody(self)
        self.reasoning_body.setObjectName("reasoning-body")
        self.reasoning_body.hide()
        self.body = MessageBody(self)
        self._markdown = MarkdownView(self.body)  # streaming appends blocks, no rebuild
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.setSpacing(2)
        layout.addLayout(header)
        layout.addWidget(self.reasoning_button, 0, Qt.AlignLeft)
        layout.addWidget(self.reasoning_body)
        layout.addWidget(self.body)
        self._map: SourceMap | None = None
        self._highlight: tuple[int, int] | None = None
        self._press: QPoint | None = None
        self.body.viewport().installEventFilter(self)
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
        self._render()

    def set_text(self, text: str, reasoning: str | None = None, answer_start: int = 0,
                 answer_end: int | None = None, thinking: bool = False) -> None:
        """Show `text`; with `reasoning` (Chat mode only), show `reasoning` in the collapsible
        block and `text[answer_start:answer_end]` as the answer (`thinking`: still reasoning)."""
        self.text = text
        self.reasoning = reasoning
        self._answer_end = answer_end
        self._answer_start = answer_start
        self._thinking = thinking
        self._render()

    @property
    def text_offset(self) -> int:
        """Where the shown text starts in `text` (the answer's start when the reasoning is
        apart, 0 in Complete mode, which shows the raw text)."""
        return self._answer_start if self.mode == "chat" and self.reasoning is not None else 0

    def shown_text(self) -> str:
        """The part of `text` the body shows: the answer when the reasoning is apart."""
        if self.mode != "chat" or self.reasoning is None:
            return self.text
        end = len(self.text) if self._answer_end is None else self._answer_end
        return self.text[self.text_offset:end]

    def _render(self) -> None:
        # Chat replies are Markdown; Complete mode is raw text, shown exactly as the model saw it.
        if self.mode == "chat":
            self._markdown.show(self.shown_text())
        else:
            self._markdown.reset()
            self.body.setHtml(render_plain(self.text))
        self._render_reasoning()
        self._map = None  # rebuilt on demand: streaming never pays for it
        if self._highlight is not None:
            self._apply_highlight()

    def _render_reasoning(self) -> None:
        split = self.mode == "chat" and self.reasoning is not None
        self.reasoning_button.setVisible(split)
        self.reasoning_body.setVisible(split and self._reasoning_open)
        if not split:
            return
        words = len(self.reasoning.split())
        what = "Thinking…" if self._thinking else "Reasoning"
        arrow = "▾" if self._reasoning_open else "▸"
        self.reasoning_button.setText(f"{what} ({words} word{'s' * (words != 1)}) {arrow}")
        # Collapsed, the block is not rendered at all: a long stream of reasoning costs nothing.
        if self._reasoning_open and self._reasoning_shown != self.reasoning:
            self.reasoning_body.setHtml(render_plain(self.reasoning))
            self._reasoning_shown = self.reasoning

    def toggle_reasoning(self) -> None:
        self._reasoning_open = not self._reasoning_open
        self._render_reasoning()

    def reasoning_open(self) -> bool:
        return self._reasoning_open

    def set_stats(self, text: str) -> None:
        self.stats_label.setText(text)

    # -- tokens: clicks and highlight in source-text offsets ------------------------------------

    def source_map(self) -> SourceMap:
        if self._map is None:
            self._map = SourceMap(self.shown_text(), self.body.document())
        return self._map

    def offset_at(self, pos: QPoint) -> int | None:
        """Source offset of the character under viewport point `pos`, or None."""
        cursor = self.body.cursorForPosition(pos)
        p = cursor.position()
        # cursorForPosition gives the nearest gap between characters: the character under the
        # point is the one before the gap when the point lies left of it on the same line.
        rect = self.body.cursorRect(cursor)
        if p > 0 and pos.x() < rect.left() and rect.top() <= pos.y() <= rect.bottom():
            p -= 1
        at = self.source_map().to_source(p)
        return None if at is None else at + self.text_offset

    def set_highlight(self, start: int | None, end: int | None = None) -> None:
        """Mark source characters [start, end); None clears."""
        self._highlight = None if start is None else (start, end if end is not None else start)
        self._apply_highlight()

    def highlight(self) -> tuple[int, int] | None:
        return self._highlight

    def _apply_highlight(self) -> None:
        selections = []
        shown = len(self.shown_text())
        start, end = ((max(0, self._highlight[0] - self.text_offset),
                       min(shown, self._highlight[1] - self.text_offset))
                      if self._highlight is not None else (0, 0))
        if end > start:  # a range inside the reasoning, or outside the answer, marks nothing
            smap = self.source_map()
            a = smap.to_doc(start)
            b = smap.to_doc(end - 1)
            if a is not None and b is not None and b >= a:
                cursor = QTextCursor(self.body.document())
                cursor.setPosition(a)
                cursor.setPosition(b + 1, QTextCursor.KeepAnchor)
                sel = QTextEdit.ExtraSelection()
                sel.cursor = cursor
                fmt = QTextCharFormat()
                pal = QGuiApplication.palette()
                fmt.setBackground(mix(pal.color(QPalette.Base), pal.color(QPalette.Highlight), 0.45))
                sel.format = fmt
                selections.append(sel)
        self.body.setExtraSelections(selections)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        kind = event.type()
        if kind == QEvent.MouseButtonPress and event.button() == Qt.LeftButton:
            self._press = event.position().toPoint()
        elif kind == QEvent.MouseButtonRelease and event.button() == Qt.LeftButton:
            pos, press, self._press = event.position().toPoint(), self._press, None
            # A click, not a drag that selects text, and not on a link.
            if (press is not None and (pos - press).manhattanLength() < 4
                    and not self.body.anchorAt(pos)):
                offset = self.offset_at(pos)
                if offset is not None:
                    self.positionClicked.emit(self.index, offset)
        return False

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
            f"QToolButton#reasoning {{ font-style: italic; padding: 1px 0px; }}"
        )
        if sheet == self.styleSheet():
            return  # unchanged: skip re-rendering the text
        self.setStyleSheet(sheet)
        self.body.document().setDefaultStyleSheet(
            document_css(code_bg.name(), text.name(), pal.color(QPalette.Link).name()))
        self.reasoning_body.document().setDefaultStyleSheet(
            f"p {{ color: {mix(text, bg, 0.35).name()}; }}")
        self._reasoning_shown = None
        self._markdown.reset()  # the new style sheet applies to a fresh render only
        self._render()



class MessageList(QScrollArea):
    """The scrolling column of messages; follows the bottom while at the bottom."""

    copyRequested = Signal(int)
    editRequested = Signal(int)
    regenerateRequested = Signal(int)
    positionClicked = Signal(int, int)  # (message index, character offset in its source text)

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
        w.positionClicked.connect(self.positionClicked)
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

    def set_highlight(self, message: int | None, start: int = 0, end: int = 0,
                      ensure_visible: bool = True) -> None:
        """Mark [start, end) of message `message` (None: no mark anywhere)."""
        for i, w in enumerate(self.widgets):
            if i == message:
                w.set_highlight(start, end)
            elif w.highlight() is not None:
                w.set_highlight(None)
        if message is not None and ensure_visible and 0 <= message < len(self.widgets):
            w = self.widgets[message]
            pos = w.source_map().to_doc(start - w.text_offset)
            if pos is not None:
                cursor = QTextCursor(w.body.document())
                cursor.setPosition(pos)
                y = w.body.cursorRect(cursor).center().y()
                self.ensureVisible(0, w.body.mapTo(self._content, QPoint(0, y)).y(), 0, 40)

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
