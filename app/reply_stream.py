"""A chat reply from request to stored message: send, regenerate, edit, stop, and the stream.

`ReplyStream` belongs to a `ChatController` (`chat`). It adds the user's message, asks
`chat.engine` for a reply (recording into `chat.trace_factory()`'s trace when the inspection
side wants one), grows the streamed `Message` and its widget as token batches arrive, and
finishes, or rolls back, the reply. It listens to every host's worker: request ids never
overlap between hosts, and only the running request (`gen_id`) is followed.

A streaming reply is written to SQLite as it grows, at most once per `FLUSH_SECONDS`, with
`complete=0` until it ends, so killing the app loses at most the last second of tokens.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QObject

from app.conversation_settings import prompt_request
from app.conversations import Message
from app.harmony import split_reply
from app.reply_tokens import TokenRecord
from ui.status_bar import reply_stats_text

FLUSH_SECONDS = 1.0


def stats_text(m: Message) -> str:
    """The line under a message widget: a reply's token count, speed and end."""
    if m.role != "assistant":
        return ""
    return reply_stats_text(len(m.token_ids), m.complete, m.stats)


def show_reply(widget, text: str, streaming: bool = False) -> None:
    """Show a reply's `text` in its message widget, its reasoning (if any) apart."""
    s = split_reply(text, streaming)
    if s.has_reasoning:
        widget.set_text(text, s.reasoning, s.answer_start, s.answer_end, s.thinking)
    else:
        widget.set_text(text)


class ReplyStream(QObject):
    """The reply being generated, and the requests that start one (GUI thread).

    A QObject so that the workers' signals, emitted on their threads, are queued to it."""

    def __init__(self, chat) -> None:
        super().__init__(chat)
        self.chat = chat  # the ChatController
        self.store, self.panel, self.status = chat.store, chat.panel, chat.status
        self.gen_id: int | None = None  # running generation request
        self.stream: Message | None = None  # the reply being streamed
        self.trace = None  # the running reply's LiveTrace
        self._last_flush = 0.0
        self._first_token_at: float | None = None
        p = self.panel
        p.input.sendRequested.connect(self.send)
        p.input.stopRequested.connect(self.stop)
        p.messages.editRequested.connect(self.begin_edit)
        p.messages.regenerateRequested.connect(lambda _i: self.regenerate())
        for w in (h.worker for h in chat.hosts):
            w.promptReady.connect(self._on_prompt_ready)
            w.promptDone.connect(self._on_prompt_done)
            w.tokens.connect(self._on_tokens)
            w.finished.connect(self._on_finished)
            w.failed.connect(self._on_failed)

    @property
    def busy(self) -> bool:
        return self.gen_id is not None

    # -- requests ------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Send the input box's text (Enter): a new user message, then the reply."""
        if not self._can_generate():
            return
        chat = self.chat
        mode = chat.conversation_settings()["mode"]
        editing = self.panel.input.editing
        if editing is not None:
            self.truncate(editing)
            self.panel.input.end_edit()
        if not text.strip():
            if mode != "complete" or not chat.messages:
                return  # Chat mode needs a message; Complete mode continues existing text
            self.panel.input.set_text("")
            self._start()
            return
        self.panel.input.set_text("")
        user = self.store.add_message(chat.conv.id, Message("user", text))
        chat.messages.append(user)
        self.panel.messages.add_message("user", text)
        chat.conversations.name_after(text)
        self._start()

    def regenerate(self) -> None:
        """Drop the last reply and generate it again (Ctrl+R)."""
        messages = self.chat.messages
        if not self._can_generate() or not messages:
            return
        if messages[-1].role == "assistant":
            self.truncate(len(messages) - 1)
        if self.chat.messages:
            self._start()

    def begin_edit(self, index: int) -> None:
        """Put message `index` into the input box; sending replaces it and what follows."""
        messages = self.chat.messages
        if self.busy or not 0 <= index < len(messages):
            return
        self.panel.input.begin_edit(index, messages[index].content)

    def stop(self) -> None:
        """Stop the running reply (Esc); the tokens produced so far are kept."""
        if self.gen_id is not None:
            self.chat.engine.cancel(self.gen_id)
        elif self.panel.input.editing is not None:
            self.panel.input.cancel_edit()

    def truncate(self, index: int) -> None:
        """Drop message `index` and those after it."""
        chat = self.chat
        self.store.truncate(chat.conv.id, chat.messages[index].position)
        del chat.messages[index:]
        self.panel.messages.remove_from(index)
        chat.prompt.reset_tokens()

    def _can_generate(self) -> bool:
        chat = self.chat
        if self.busy:
            self.status.set_activity("Still generating: Esc stops it")
            return False
        if chat.conv is None:
            chat.new_chat()
        if chat.load_id is not None:
            self.panel.show_error("The model is still loading.")
            return False
        if chat.model_info is None:
            self.panel.show_error("No model is loaded: use Chat → Load model for chat… (Ctrl+L).")
            return False
        return True

    def _start(self) -> None:
        chat = self.chat
        settings = chat.conversation_settings()
        request = prompt_request(settings, chat.messages)
        wanted_ctx = int(settings.get("n_ctx") or 0)
        if getattr(chat.engine, "sets_context", True) and wanted_ctx != chat.model.n_ctx_setting:
            # The KV cache is preallocated at load: a new context length means a reload,
            # queued in the worker ahead of this generation.
            chat.load_model(chat.model_info["path"])
        if chat.conv.model != chat.model.path:
            chat.conv.model = chat.model.path
            self.store.update(chat.conv.id, model=chat.conv.model)
        self.stream = self.store.add_message(chat.conv.id, Message("assistant", complete=False))
        chat.messages.append(self.stream)
        widget = self.panel.messages.add_message("assistant", "", "generating…")
        widget.set_stats("waiting for the model…")
        self.panel.error.hide()
        self._last_flush = time.monotonic()
        self._first_token_at = None
        chat.prompt.reset_tokens()
        self.trace = chat.trace_factory() if chat.trace_factory is not None else None
        self.gen_id = chat.engine.generate(request, self.trace)
        self.panel.set_busy(True)
        self.panel.messages.scroll_to_bottom()
        self.status.set_activity("Processing prompt…")

    # -- the stream ----------------------------------------------------------------------------

    def _on_prompt_ready(self, rid: int, text: str, ids: list, spans: list) -> None:
        if rid != self.gen_id or self.stream is None:
            return
        chat = self.chat
        self.stream.prompt_ids = list(ids)
        reply = len(chat.messages) - 1
        chat.tokens.set_prompt(text, ids, spans, chat.messages[:reply], reply,
                               chat.conversation_settings()["system_prompt"])
        self._attach_user_tokens(reply)
        chat.tokensReset.emit()
        if self.panel.side_tabs.currentWidget() is self.panel.prompt_view:
            self.panel.prompt_view.show_prompt(text, [text[s:e] for s, e in spans],
                                               chat.prompt.prompt_note())

    def _attach_user_tokens(self, reply: int) -> None:
        """Give the last user message the ids/spans of its tokens as they appear in context."""
        messages = self.chat.messages
        user = next((i for i in range(reply - 1, -1, -1) if messages[i].role == "user"), None)
        if user is None:
            return
        ids, spans = self.chat.tokens.message_tokens(user)
        if ids:
            messages[user].token_ids, messages[user].token_spans = ids, spans
            self.store.save_message(messages[user])

    def _on_prompt_done(self, rid: int, info: dict) -> None:
        if rid == self.gen_id:
            cached = f" (+{info['n_reused']} cached)" if info.get("n_reused") else ""
            self.status.set_activity(f"Prompt: {info['n_tokens']} tokens{cached} at "
                                     f"{info['tok_s']:.0f} tok/s")
            if self.stream is not None:
                self.stream.stats["prompt_tokens"] = info["n_tokens"]
            self.chat.promptProcessed.emit(dict(info))

    def _on_tokens(self, rid: int, batch: list[TokenRecord]) -> None:
        if rid != self.gen_id or self.stream is None:
            return
        m, tokens = self.stream, self.chat.tokens
        now = time.monotonic()
        if self._first_token_at is None:
            self._first_token_at = now
        first = len(tokens)
        tokens.append(m, batch)
        n = len(m.token_ids)
        widget = self.panel.messages.widgets[-1]
        show_reply(widget, m.content, streaming=True)
        elapsed = now - self._first_token_at
        rate = (n - len(batch)) / elapsed if elapsed > 0.05 else 0.0
        live = f"{n} tokens · {rate:.1f} tok/s" if rate else f"{n} tokens"
        widget.set_stats(f"generating… {live}")
        self.status.set_activity(f"Generating: {live}")
        self.chat.update_ctx(len(m.prompt_ids) + n)
        if now - self._last_flush >= FLUSH_SECONDS:
            self.store.save_message(m)
            self._last_flush = now
        self.chat.tokensAppended.emit(first)

    def _on_finished(self, rid: int, result: dict[str, Any]) -> None:
        if rid != self.gen_id or self.stream is None:
            return
        m = self.stream
        self.chat.tokens.finish(m, result.get("text"))
        t = result.get("timings") or {}
        m.stats.update({k: v for k, v in t.items() if v is not None})
        m.stats["reason"] = result.get("reason")
        m.complete = True
        self.store.save_message(m)
        widget = self.panel.messages.widgets[-1]
        show_reply(widget, m.content)
        widget.set_stats(stats_text(m))
        self.status.set_speed(m.stats)
        self.chat.update_ctx(len(m.prompt_ids) + len(m.token_ids))
        self._end()
        self.chat.replyFinished.emit(dict(m.stats))

    def _on_failed(self, rid: int, message: str) -> None:
        if rid != self.gen_id:
            self.panel.show_error(message)  # a preview or stale request: show, nothing to undo
            return
        m = self.stream
        if m is not None:
            if m.token_ids:
                m.complete = True
                m.stats["reason"] = "error"
                m.stats["error"] = message
                self.store.save_message(m)
                show_reply(self.panel.messages.widgets[-1], m.content)  # ends "Thinking…"
                self.panel.messages.widgets[-1].set_stats(stats_text(m))
            else:  # nothing was produced: drop the empty reply
                self.truncate(len(self.chat.messages) - 1)
        self.panel.show_error(message)
        self.status.set_activity("Generation failed")
        self._end()

    def _end(self) -> None:
        self.gen_id = None
        self.stream = None
        self.trace = None
        self.panel.set_busy(False)
        self.panel.messages.set_busy(False)
        self.chat.conversations.refresh()
