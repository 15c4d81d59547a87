"""Markdown -> the HTML subset QTextDocument renders, for chat messages.

Raw HTML in a model's output is shown as text, never interpreted: the `html_block`
preprocessor and the inline `html` pattern are removed from python-markdown.

`StreamingMarkdown` renders a reply that grows token by token: blocks that nothing appended
can change any more are converted once and kept, only the open tail is converted again, so a
streamed reply costs linear, not quadratic, Markdown work; its output always equals
`render_markdown` of the whole text. `MarkdownView` does the same for the Qt document: it
appends the completed blocks and replaces only the tail.
"""

from __future__ import annotations

import html
import re

import markdown
from markdown.extensions.fenced_code import FencedBlockPreprocessor
from PySide6.QtGui import QTextCursor, QTextDocument, QTextDocumentFragment
from PySide6.QtWidgets import QTextEdit

_EXTENSIONS = ["fenced_code", "tables", "sane_lists", "nl2br"]


def _converter() -> markdown.Markdown:
    md = markdown.Markdown(extensions=_EXTENSIONS, output_format="html")
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md


_MD = _converter()


def render_markdown(text: str) -> str:
    """HTML for `text` as Markdown; code blocks come out as <pre><code>."""
    _MD.reset()
    # python-markdown keeps the newline before </code>: an empty last line in every block.
    return _MD.convert(text).replace("\n</code></pre>", "</code></pre>")


# A line that may open a fence (python-markdown's own regex decides whether it does).
_FENCE_START = re.compile(r"^(?:`{3,}|~{3,})", re.MULTILINE)
# A reference-link definition changes links anywhere in the text, before it too.
_REFERENCE_DEF = re.compile(r"^[ ]{0,3}\[[^\]\n]+\]:", re.MULTILINE)
# One or more blank lines, then the start of the next non-blank line.
_BLANK_RUN = re.compile(r"\n(?:[ \t]*\n)+")
# Lines that continue the block before a blank line: indented (list item, code), list items
# (a loose list), quotes (python-markdown joins consecutive quotes), and the ambiguous starts of
# those. Conservative on purpose: a missed split costs time, a wrong one a different render.
_CONTINUES = re.compile(r"[ \t]|[*+-](?:[ \t]|$)|\d+[.)]?(?:[ \t]|$)|>")
# A thematic break (<hr>): Qt's HTML import folds it into the block after a table, so a block
# boundary just before one is not the same in a piece as in the whole.
_BREAK_LINE = re.compile(r"[ ]{0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$", re.MULTILINE)


def _stable_length(tail: str) -> int:
    """Length of the longest prefix of `tail` (a text starting at a block boundary) that is whole
    blocks whose HTML nothing appended to `tail` can change; 0 if there is none yet.

    A split point is a run of blank lines outside every fenced code block, before any fence
    opener not closed yet, between a block whose last line is not indented and a complete next
    line that starts a new block by itself (see `_CONTINUES`).
    """
    fences = [m.span() for m in FencedBlockPreprocessor.FENCED_BLOCK_RE.finditer(tail)]
    limit = len(tail)
    for m in _FENCE_START.finditer(tail):
        if not any(a <= m.start() < b for a, b in fences):
            limit = m.start()  # an open fence may swallow everything after it
            break
    best = 0
    for m in _BLANK_RUN.finditer(tail, 0, limit):
        start, nxt = m.start(), m.end()
        if nxt > limit or any(a <= start < b for a, b in fences):
            continue
        end_of_next = tail.find("\n", nxt)
        if end_of_next < 0:
            break  # the next line is still being written: its start may change meaning
        prev_line = tail[tail.rfind("\n", 0, start) + 1:start]
        if (prev_line[:1] in (" ", "\t") or _CONTINUES.match(tail, nxt)
                or _BREAK_LINE.match(tail, nxt, end_of_next)):
            continue
        best = start
    return best


class StreamingMarkdown:
    """`render_markdown` for a text that grows at its end, converting each block about once."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._text: str | None = None
        self._frozen_end = 0  # text[:_frozen_end] is converted for good, into _frozen
        self._frozen: list[str] = []
        self._whole = False  # a reference definition: every render converts the whole text

    @property
    def frozen(self) -> list[str]:
        """HTML of the completed blocks so far, one string per `feed` that completed some."""
        return self._frozen

    def feed(self, text: str) -> tuple[bool, list[str], str]:
        """Take the text so far: (restarted, HTML frozen by this call, HTML of the open tail).

        restarted: `text` does not extend the previous one (or links need the whole text), so
        earlier output is void; then `frozen` holds everything frozen. The full render is always
        "\n".join(frozen + [tail]) (without an empty tail).
        """
        restarted = self._text is None or not text.startswith(self._text)
        if restarted:
            self.reset()
        self._text = text
        if not self._whole and _REFERENCE_DEF.search(text, self._frozen_end):
            self._whole, self._frozen, self._frozen_end = True, [], 0
        if self._whole:
            return True, [], render_markdown(text)
        tail = text[self._frozen_end:]
        new: list[str] = []
        cut = _stable_length(tail)
        piece = render_markdown(tail[:cut]) if cut else ""
        if piece.endswith("<pre><code></code></pre>"):
            # Qt drops an empty code block's line only when something follows it in the same
            # import: keep it in the tail until the next split point.
            cut, piece = 0, ""
        if cut:
            if piece:
                new.append(piece)
                self._frozen.append(piece)
            # The next block starts after the blank lines: python-markdown skips them too.
            skip = _BLANK_RUN.match(tail, cut)
            self._frozen_end += skip.end() if skip else cut
            tail = text[self._frozen_end:]
        return restarted, new, render_markdown(tail)

    def render(self, text: str) -> str:
        """HTML equal to `render_markdown(text)`; cheap when `text` extends the last one."""
        _restarted, _new, tail = self.feed(text)
        return "\n".join(self._frozen + ([tail] if tail else []))


class MarkdownView:
    """Shows a growing Markdown text in a QTextEdit's document without rebuilding it: completed
    blocks are appended once, only the open tail is replaced, so each update costs the size of
    the change, not of the reply. The document always equals `setHtml(render_markdown(text))`
    (tests/test_markdown_stream.py compares `toHtml()`).
    """

    def __init__(self, view: QTextEdit) -> None:
        self.view = view
        self.markdown = StreamingMarkdown()
        # Appends must not pile up undo records (they would hold every replaced tail).
        view.document().setUndoRedoEnabled(False)
        self._tail_at: int | None = None  # where the open tail starts, when one is shown
        self._has_frozen = False

    def reset(self) -> None:
        """Forget what is shown: the next `show` renders from scratch (new style sheet, or the
        document was set by someone else)."""
        self.markdown.reset()
        self._tail_at = None
        self._has_frozen = False

    def show(self, text: str) -> None:
        restarted, new, tail = self.markdown.feed(text)
        doc = self.view.document()
        if restarted or not self._has_frozen:
            frozen = self.markdown.frozen
            self._tail_at = None
            if not frozen:  # everything is still open: small, or links need the whole text
                self._has_frozen = False
                self.view.setHtml(tail)
                return
            self.view.setHtml("\n".join(frozen))
            self._has_frozen = True
            new = []
        if not new and not tail:  # nothing to append after the old tail: rare, start over
            self.reset()
            self.show(text)
            return
        # One edit block: the layout and the size signals run once, after the last edit.
        edit = QTextCursor(doc)
        edit.beginEditBlock()
        edit.movePosition(QTextCursor.End)
        old_tail, old_end = self._tail_at, edit.position()
        for piece in new:
            self._append(piece)
        tail_at = self._append(tail) if tail else None
        if old_tail is not None:
            # Cut the old tail only now, with the new blocks after it (cutting up to the end of
            # the document would leave an empty last block behind).
            _cut(doc, old_tail, old_end)
            if tail_at is not None:
                tail_at -= old_end - old_tail
        self._tail_at = tail_at
        edit.endEditBlock()

    def _append(self, html_text: str) -> int:
        """Append rendered blocks at the end as `setHtml` of the whole would lay them out;
        returns the position where they start (the separator before them)."""
        doc = self.view.document()
        cursor = QTextCursor(doc)
        cursor.movePosition(QTextCursor.End)
        mark = cursor.position()
        cursor.insertBlock()
        # A fragment's first block is merged into the block it lands in and loses its own format
        # (list, <pre>, heading): a throwaway first paragraph takes that hit and is cut below.
        part = QTextDocument()
        part.setDefaultStyleSheet(doc.defaultStyleSheet())
        part.setDefaultFont(doc.defaultFont())
        part.setHtml("<p>x</p>\n" + html_text)
        cursor.insertFragment(QTextDocumentFragment(part))
        first = doc.findBlock(mark + 1)
        _cut(doc, mark, first.position() + first.length() - 1)
        return mark


def _cut(doc: QTextDocument, start: int, end: int) -> None:
    """Remove [start, end), where `start` ends a block that must stay as it is.

    Qt merges what follows into that block and keeps the block's format, except when the block
    is empty (an <hr>): then it takes the format of the block after; so put it back.
    """
    cursor = QTextCursor(doc)
    cursor.setPosition(start)
    block_format, char_format = cursor.blockFormat(), cursor.blockCharFormat()
    cursor.setPosition(end, QTextCursor.KeepAnchor)
    cursor.removeSelectedText()
    cursor.setBlockFormat(block_format)
    cursor.setBlockCharFormat(char_format)


def render_plain(text: str) -> str:
    """HTML that shows `text` exactly (whitespace and newlines kept), for raw completions."""
    return f'<p style="white-space: pre-wrap;">{html.escape(text)}</p>'


def document_css(code_bg: str, code_fg: str, link: str) -> str:
    """Default stylesheet for a message document (colours come from the palette)."""
    return (
        f"pre {{ background-color: {code_bg}; color: {code_fg}; font-family: monospace;"
        f" padding: 6px; margin-top: 4px; margin-bottom: 4px; }}"
        f"code {{ font-family: monospace; background-color: {code_bg}; }}"
        f"a {{ color: {link}; }}"
        "p { margin-top: 2px; margin-bottom: 6px; }"
        "table { border-collapse: collapse; } td, th { padding: 2px 6px; }"
    )
