"""A reply's reasoning shown apart from its answer (issue #15): the Qt-free splitter
(app/harmony.py) on whole and streamed replies, the next turn's prompt for gpt-oss's real
template, and the message widget's collapsed reasoning block (pytest-qt, no model)."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app.conversation_settings import prompt_request
from app.conversations import Message
from app.harmony import prompt_content, split_reply

REASONING = "The user greets me. I should greet back, briefly."
ANSWER = "Hello! **How** can I help?"
HARMONY = ("<|channel|>analysis<|message|>" + REASONING + "<|end|>"
           "<|start|>assistant<|channel|>final<|message|>" + ANSWER)
THINK = "<think>\n" + REASONING + "\n</think>\n\n" + ANSWER


@pytest.mark.parametrize("text", [HARMONY, HARMONY + "<|return|>", THINK,
                                  REASONING + "</think>" + ANSWER])  # DeepSeek-R1: tag in prompt
def test_whole_reply_splits_into_reasoning_and_answer(text):
    s = split_reply(text)
    assert (s.reasoning, s.answer(text), s.thinking, s.has_reasoning) == (
        REASONING, ANSWER, False, True)
    assert text[s.answer_start:].startswith(ANSWER)


def test_plain_reply_is_all_answer():
    text = "Just an answer, with a < sign and <b>tags</b>."
    s = split_reply(text)
    assert (s.reasoning, s.answer(text), s.has_reasoning) == ("", text, False)


def test_harmony_commentary_and_constrain_are_not_the_answer():
    text = ("<|channel|>analysis<|message|>plan<|end|>"
            "<|start|>assistant<|channel|>commentary<|message|>note<|end|>"
            "<|start|>assistant<|channel|>final <|constrain|>text<|message|>done")
    s = split_reply(text)
    assert (s.reasoning, s.answer(text)) == ("plan\n\nnote", "done")


def test_stopped_during_reasoning_has_no_answer():
    text = "<|channel|>analysis<|message|>half a thou"
    s = split_reply(text)
    assert (s.reasoning, s.answer(text), s.thinking) == ("half a thou", "", False)
    assert split_reply(text, streaming=True).thinking


@pytest.mark.parametrize("full, decided", [
    (HARMONY, HARMONY.index(ANSWER)),  # the final channel's header is complete
    (THINK, THINK.index("</think>") + len("</think>")),
], ids=["harmony", "think"])
def test_streamed_at_every_position(full, decided):
    """Each prefix is what the chat holds after a chunk boundary there (markers included: a
    remote backend's chunk may end inside "<|channel|>"): no piece of a marker shows, the
    reasoning and the answer only grow, and the model is thinking until the answer starts."""
    whole = split_reply(full)
    answer_at = whole.answer_start
    assert full[answer_at:] == ANSWER
    last_reasoning, last_answer = "", ""
    for cut in range(len(full) + 1):
        text = full[:cut]
        s = split_reply(text, streaming=True)
        reasoning, answer = s.reasoning, s.answer(text)
        for shown in (reasoning, answer):
            assert "<|" not in shown and "<think" not in shown and "</" not in shown, (cut, shown)
        assert whole.reasoning.startswith(reasoning), (cut, reasoning)
        assert ANSWER.startswith(answer), (cut, answer)
        assert len(reasoning) >= len(last_reasoning) and len(answer) >= len(last_answer), cut
        if s.has_reasoning:
            assert s.thinking == (cut < decided), cut
        else:  # the opening marker is still arriving: nothing is shown yet
            assert cut <= full.index(">") and reasoning == answer == "", cut
        if cut >= answer_at:
            assert s.answer_start == answer_at and answer == full[answer_at:cut]
        last_reasoning, last_answer = reasoning, answer
    assert (last_reasoning, last_answer) == (REASONING, ANSWER)


def test_prompt_gets_the_final_answer(llama_cpp_source):
    """gpt-oss's template refuses channel markers in an assistant content, so the stored raw
    reply would make the next turn fail; with the final answer it renders as the template
    wants (earlier turns' reasoning dropped)."""
    from engine.chat_template import render_chat
    from engine.errors import TemplateError

    template = (llama_cpp_source / "models" / "templates" / "openai-gpt-oss-120b.jinja").read_text()
    messages = [Message("user", "Hi"), Message("assistant", HARMONY + "<|return|>"),
                Message("user", "Thanks")]
    raw = [{"role": m.role, "content": m.content} for m in messages]
    with pytest.raises(TemplateError):
        render_chat(template, raw, True, eos_token="<|return|>")
    request = prompt_request({"mode": "chat", "system_prompt": "", "max_new_tokens": 8},
                             messages)
    assert request.messages[1] == ("assistant", ANSWER)
    prompt = render_chat(template, [{"role": r, "content": c} for r, c in request.messages],
                         True, eos_token="<|return|>")
    assert "<|start|>assistant<|channel|>final<|message|>" + ANSWER + "<|end|>" in prompt
    assert REASONING not in prompt
    # Complete mode sends the raw text, and non-harmony replies pass through untouched.
    complete = prompt_request({"mode": "complete", "system_prompt": "", "max_new_tokens": 8},
                              messages)
    assert complete.messages[1][1] == messages[1].content
    assert prompt_content(THINK) == THINK


# ----------------------------------------------------------------------------- the widget

def show(widget, text: str, streaming: bool = False) -> None:
    from app.reply_stream import show_reply
    show_reply(widget, text, streaming)


def test_widget_shows_collapsed_reasoning_above_the_answer(qtbot):
    from ui.chat.messages import MessageWidget

    w = MessageWidget(0, "assistant")
    qtbot.addWidget(w)
    w.show()
    show(w, HARMONY)
    n = len(REASONING.split())
    assert w.reasoning_button.isVisible() and not w.reasoning_body.isVisible()
    assert w.reasoning_button.text() == f"Reasoning ({n} words) ▸"
    body = w.body.toPlainText()
    assert "Hello! How can I help?" in body and "greet" not in body and "<|" not in body
    qtbot.mouseClick(w.reasoning_button, Qt.LeftButton)
    assert w.reasoning_body.isVisible() and w.reasoning_open()
    assert w.reasoning_button.text().endswith("▾")
    assert w.reasoning_body.toPlainText().strip() == REASONING
    w.toggle_reasoning()
    assert not w.reasoning_body.isVisible()


def test_widget_offsets_stay_in_the_raw_text(qtbot):
    """Token clicks and highlights use offsets into the stored raw reply."""
    from ui.chat.messages import MessageWidget

    w = MessageWidget(0, "assistant")
    qtbot.addWidget(w)
    show(w, HARMONY)
    at = HARMONY.index("Hello")
    w.set_highlight(at, at + 5)
    (sel,) = w.body.extraSelections()
    assert sel.cursor.selectedText() == "Hello"
    assert w.source_map().to_source(sel.cursor.selectionStart()) + w.text_offset == at
    w.set_highlight(HARMONY.index("greets"), HARMONY.index("greets") + 6)  # in the reasoning
    assert w.body.extraSelections() == []


def test_widget_streams_thinking_then_answer_and_complete_mode_is_raw(qtbot):
    from ui.chat.messages import MessageWidget

    w = MessageWidget(0, "assistant")
    qtbot.addWidget(w)
    w.show()
    cut = HARMONY.index("I should")
    show(w, HARMONY[:cut], streaming=True)
    assert w.reasoning_button.text() == "Thinking… (4 words) ▸"
    assert w.body.toPlainText() == ""
    show(w, HARMONY, streaming=True)
    assert w.reasoning_button.text().startswith("Reasoning (")
    w.set_mode("complete")  # raw text, exactly as the model wrote it
    assert not w.reasoning_button.isVisible()
    assert w.body.toPlainText() == HARMONY and w.text_offset == 0
    w.set_highlight(0, len("<|channel|>"))
    assert w.body.extraSelections()[0].cursor.selectedText() == "<|channel|>"
    w.set_mode("chat")
    assert w.reasoning_button.isVisible() and "greet" not in w.body.toPlainText()
    show(w, "No reasoning here.")
    assert not w.reasoning_button.isVisible() and w.body.toPlainText() == "No reasoning here."
