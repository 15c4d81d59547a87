"""Prompts as the model sees them: the request, its rendering through the chat template, and
the text of a token sequence with each token's span. Qt-free and torch-free, so that both the
desktop app's engine worker (app/engine_worker.py) and `llmlens serve` (app/server) build a
conversation's prompt with the same code, and the server never imports Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PromptRequest:
    """What to send to the model: the conversation, the mode and the sampling settings."""
    mode: str  # "chat": through the chat template; "complete": raw text continuation
    system_prompt: str
    messages: tuple[tuple[str, str], ...]  # (role, content), roles "user" | "assistant"
    params: dict[str, Any] = field(default_factory=dict)  # SamplingParams fields
    max_new_tokens: int = 256
    threads: int = 0  # 0: the engine's default (all physical cores)


def build_prompt(tokenizer, metadata: dict[str, Any], request: PromptRequest
                 ) -> tuple[str, list[int]]:
    """Render `request` into the exact text and token ids the model will see.

    Chat mode renders the model's chat template (or the engine's fallback for its architecture
    when the file has none); Complete mode concatenates the messages as raw text. BOS is added
    by the tokenizer unless the rendered template already starts with it.
    """
    if request.mode == "complete":
        text = "".join(content for _, content in request.messages)
        return text, tokenizer.encode(text, add_special=True, parse_special=True)

    from engine.chat_template import render_chat

    messages = []
    if request.system_prompt.strip():
        messages.append({"role": "system", "content": request.system_prompt})
    messages += [{"role": r, "content": c} for r, c in request.messages]
    # The file's own template, or the engine's fallback for its architecture when it has none;
    # bos_token/eos_token default to the file's special tokens.
    text = render_chat(metadata, messages, add_generation_prompt=True)
    bos = tokenizer.token_text(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    has_bos = bool(bos) and text.startswith(bos)
    return text, tokenizer.encode(text, add_special=not has_bos, parse_special=True)


def decode_spans(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text the model sees for `ids` (special tokens shown) and each token's [start, end).

    Streaming the decode keeps multi-byte characters split across tokens whole: the token that
    completes a character owns it, the ones before it get an empty span.
    """
    dec = tokenizer.stream_decoder(skip_special=False)
    text, spans = "", []
    for i in ids:
        start = len(text)
        text += dec.feed(int(i))
        spans.append((start, len(text)))
    tail = dec.flush()
    if tail and spans:
        text += tail
        spans[-1] = (spans[-1][0], len(text))
    return text, spans
