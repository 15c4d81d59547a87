"""A reply's reasoning apart from its answer: gpt-oss's harmony channels and `<think>` blocks.

gpt-oss answers in OpenAI's harmony format, which our tokenizer prints with its markers
(engine/tokenizer/vocab.py keeps `<|channel|>`, `<|message|>`, `<|start|>` and `<|end|>`
visible, as llama.cpp does):

    <|channel|>analysis<|message|>…reasoning…<|end|><|start|>assistant<|channel|>final<|message|>…answer…

Qwen3 / DeepSeek-R1 style models write `<think>…reasoning…</think>answer` (DeepSeek-R1's
template opens the block in the prompt, so the reply may carry only the closing tag).

`split_reply(text)` cuts the text of a reply, finished or still streaming, into the reasoning
and the answer; the answer is a slice of `text` (`answer_start`, `answer_end`) so the chat can
map clicks and token highlights in it back to the reply's source offsets. It is a pure
function of the whole text so far: the UI calls it on every streamed batch. While streaming, a
text ending in part of a marker (a remote backend's chunk may end in "<|chan") holds that part
back, so no half marker flashes into view.

`prompt_content(text)` is what the chat template gets for a stored harmony reply: its final
answer. gpt-oss's template drops earlier turns' reasoning itself, but refuses a content that
still holds `<|channel|>` markers, so the next turn could not be rendered from the raw text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Harmony's markers that open or close a message's parts.
_HARMONY = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>",
            "<|constrain|>")
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
# A message body ends at one of these (or at the end of the text).
_BODY_END = re.compile(r"<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>")
_HEADER = re.compile(r"(?:<\|start\|>[^<]*)?<\|channel\|>([^<]*?)(?:<\|constrain\|>[^<]*)?<\|message\|>")


@dataclass(frozen=True)
class ReplySplit:
    """A reply cut into reasoning and answer; the answer is `text[answer_start:answer_end]`."""

    reasoning: str  # "" when the reply has none
    answer_start: int
    answer_end: int
    thinking: bool  # streaming and no answer has started yet: the model is still reasoning
    has_reasoning: bool  # the reply uses a reasoning format (even if the block is empty so far)

    def answer(self, text: str) -> str:
        return text[self.answer_start:self.answer_end]


def _held_back(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper beginning of one of `markers`."""
    longest = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), longest, -1):
            if text.endswith(m[:k]):
                longest = k
                break
    return longest


def split_reply(text: str, streaming: bool = False) -> ReplySplit:
    """Reasoning and answer of a reply's `text` (`streaming`: more text may follow)."""
    lead = len(text) - len(text.lstrip())
    head = text[lead:]
    if head.startswith(("<|channel|>", "<|start|>")):
        return _split_harmony(text, lead, streaming)
    if head.startswith(_THINK_OPEN) or _THINK_CLOSE in text:
        return _split_think(text, lead, streaming)
    if streaming and head and any(m.startswith(head) for m in ("<|channel|>", "<|start|>",
                                                                 _THINK_OPEN)):
        # A marker still arriving: show nothing rather than a flash of "<|chan".
        return ReplySplit("", len(text), len(text), False, False)
    end = len(text) - (_held_back(text, (_THINK_CLOSE,)) if streaming else 0)
    return ReplySplit("", 0, end, False, False)


def _split_harmony(text: str, pos: int, streaming: bool) -> ReplySplit:
    reasoning: list[str] = []
    answer: tuple[int, int] | None = None
    while pos < len(text):
        header = _HEADER.match(text, pos)
        if header is None:
            break  # a header still arriving, or text outside harmony: not shown
        channel = header.group(1).strip().split(" ")[0]
        start = header.end()
        stop = _BODY_END.search(text, start)
        end = stop.start() if stop else len(text)
        if stop is None and streaming:
            end -= _held_back(text[start:end], _HARMONY)
        if channel == "final":
            answer = (start, end)
        else:  # analysis, and commentary outside tool calls: not the answer either
            reasoning.append(text[start:end])
        if stop is None:
            break
        pos = stop.end() if stop.group() != "<|start|>" else stop.start()
    body = "\n\n".join(r.strip() for r in reasoning if r.strip())
    if answer is None:
        return ReplySplit(body, len(text), len(text), streaming, True)
    return ReplySplit(body, answer[0], answer[1], False, True)


def _split_think(text: str, lead: int, streaming: bool) -> ReplySplit:
    start = lead + len(_THINK_OPEN) if text.startswith(_THINK_OPEN, lead) else 0
    close = text.find(_THINK_CLOSE, start)
    if close < 0:
        end = len(text) - (_held_back(text[start:], (_THINK_CLOSE,)) if streaming else 0)
        return ReplySplit(text[start:end].strip(), len(text), len(text), streaming, True)
    after = close + len(_THINK_CLOSE)
    answer_start = after + len(text[after:]) - len(text[after:].lstrip())
    return ReplySplit(text[start:close].strip(), answer_start, len(text), False, True)


def prompt_content(text: str) -> str:
    """What the chat template gets for a stored reply: a harmony reply's final answer (the
    template would refuse the markers); any other text unchanged."""
    if not text.lstrip().startswith(("<|channel|>", "<|start|>")):
        return text
    return split_reply(text).answer(text)
