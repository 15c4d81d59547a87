"""Streaming Markdown (ui/chat/markdown_render.py): a reply rendered piece by piece while it
grows must equal, at every step, the full render of the text so far, both as HTML
(`StreamingMarkdown`) and as the Qt document a message shows (`MarkdownView`).

References are the plain full render (`render_markdown`, and `setHtml` of it into a fresh
document); the samples are cut at every few characters, so fences, list items and table rows
are split mid-stream.
"""

from __future__ import annotations

import random

import pytest
from PySide6.QtGui import QTextDocument
from PySide6.QtWidgets import QTextBrowser

from ui.chat.markdown_render import (MarkdownView, StreamingMarkdown, document_css,
                                     render_markdown)

SAMPLES = {
    "fences": "Intro line.\n\n```python\ndef f(x):\n\n    return x\n```\n\nAfter the code.\n\n"
              "~~~\ntilde fence\n~~~\n\n```\nnever closed\n\nstill inside?\n\nmore text\n",
    "lists": "Steps:\n\n1. one\n2. two\n    - nested\n\n3. three, loose\n\nA paragraph.\n\n"
             "- a\n- b\n\n  continued b\n\n* star list\n\nEnd.\n",
    "tables": "| name | value |\n|---|---|\n| a | 1 |\n| b | 2 |\n\nText between.\n\n"
              "| x | y |\n|:--|--:|\n| **bold** | `code` |\n\nDone.\n",
    "mixed": "# Title\n\nPara *em* and **strong**\nsecond line\n\n> quoted\n\n> more quote\n\n"
             "    indented code\n\n\n\n    more code\n\nSetext\n======\n\n---\n\n"
             "<b>raw html is text</b> & entities &amp;\n\nThe end",
    "references": "See [the docs][d] and [x].\n\nMiddle paragraph.\n\n[d]: https://example.org\n"
                  "[x]: /local\n\nAfter the definitions.\n",
}


def _prefixes(text: str, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    cuts, i = [], 0
    while i < len(text):
        i = min(len(text), i + rng.randint(1, 5))
        cuts.append(text[:i])
    return cuts


@pytest.mark.parametrize("name", SAMPLES)
def test_streamed_html_equals_the_full_render_at_every_step(name):
    stream = StreamingMarkdown()
    for prefix in _prefixes(SAMPLES[name]):
        assert stream.render(prefix) == render_markdown(prefix), repr(prefix[-30:])


def test_completed_blocks_are_frozen_so_only_the_tail_is_converted_again():
    stream = StreamingMarkdown()
    text = "".join(f"Paragraph {i} with some words.\n\n" for i in range(50))
    for prefix in _prefixes(text):
        stream.render(prefix)
    assert len(stream.frozen) >= 40  # otherwise the "incremental" path never ran
    # The last paragraph freezes once the next block's first line is complete.
    assert stream.feed(text + "One more") == (False, [], render_markdown("Paragraph 49 with "
                                                                        "some words.\n\nOne more"))
    assert stream.feed(text + "One more\n") == (False, ["<p>Paragraph 49 with some words.</p>"],
                                                "<p>One more</p>")


def test_a_text_that_does_not_extend_the_last_one_starts_over():
    stream = StreamingMarkdown()
    stream.render("First paragraph.\n\nSecond paragraph.\n\nThird")
    assert stream.feed("Other text")[0] is True
    assert stream.render("Other text\n\n- item") == render_markdown("Other text\n\n- item")


CSS = document_css("#eeeeee", "#111111", "#0000ff")


def _reference_html(view: QTextBrowser, text: str) -> str:
    doc = QTextDocument()
    doc.setDefaultStyleSheet(view.document().defaultStyleSheet())
    doc.setDefaultFont(view.document().defaultFont())
    doc.setDocumentMargin(view.document().documentMargin())
    doc.setHtml(render_markdown(text))
    return doc.toHtml()


@pytest.mark.parametrize("name", SAMPLES)
def test_the_streamed_document_equals_a_full_render(qtbot, name):
    view = QTextBrowser()
    qtbot.addWidget(view)
    view.document().setDefaultStyleSheet(CSS)
    shown = MarkdownView(view)
    for k, prefix in enumerate(_prefixes(SAMPLES[name], seed=1)):
        shown.show(prefix)
        if k % 7 == 0:
            assert view.document().toHtml() == _reference_html(view, prefix), repr(prefix[-30:])
    assert view.document().toHtml() == _reference_html(view, SAMPLES[name])


def test_the_document_is_appended_to_not_rebuilt(qtbot, monkeypatch):
    view = QTextBrowser()
    qtbot.addWidget(view)
    view.document().setDefaultStyleSheet(CSS)
    shown = MarkdownView(view)
    rebuilds = []
    original = view.setHtml
    monkeypatch.setattr(view, "setHtml", lambda html: (rebuilds.append(1), original(html)))
    text = "".join(f"Paragraph {i}: `code` and **bold**.\n\n```\nblock {i}\n```\n\n"
                   for i in range(30))
    steps = _prefixes(text, seed=2)
    for prefix in steps:
        shown.show(prefix)
    assert view.document().toHtml() == _reference_html(view, text)
    # Only while nothing is frozen yet (the first paragraph) is the document set whole.
    assert 0 < len(rebuilds) < len(steps) // 20


def test_message_widget_streams_then_restyles_and_switches_mode(qtbot):
    from ui.chat.messages import MessageWidget

    w = MessageWidget(0, "assistant", "", "chat")
    qtbot.addWidget(w)
    text = SAMPLES["mixed"]
    for prefix in _prefixes(text, seed=3):
        w.set_text(prefix)
    assert w.body.document().toHtml() == _reference_html(w.body, text)
    w.setStyleSheet("")  # forces restyle() to apply the style sheet and render again
    w.restyle()
    assert w.body.document().toHtml() == _reference_html(w.body, text)
    w.set_mode("complete")
    assert w.body.toPlainText() == text
    w.set_mode("chat")
    assert w.body.document().toHtml() == _reference_html(w.body, text)
