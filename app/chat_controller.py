"""Wiring of the chat tab: widgets (ui/chat) <-> engine worker <-> conversation store.

`install_chat(main_window)` builds a `ChatController`, adds the chat tab, a Chat menu and
status-bar fields, and starts loading the embedded default model. The controller holds the
state the widgets only display: the open conversation, the reply being streamed, the loaded
model. Everything it asks of the model goes through `EngineHost` (queued signals); everything
it stores goes through `ConversationStore` on the GUI thread.

A streaming reply is written to SQLite as it grows, at most once per `FLUSH_SECONDS`, with
`complete=0` until it ends, so killing the app loses at most the last second of tokens.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import psutil
from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import QApplication, QFileDialog, QLabel, QWidget

from app.conversations import (Conversation, ConversationStore, Message, export_json,
                               export_markdown)
from app.engine_worker import EngineHost, PromptRequest, TokenRecord
from ui.chat import ChatPanel
from ui.chat.messages import copy_to_clipboard

FLUSH_SECONDS = 1.0
NEW_TITLE = "New chat"
GENERATION_DEFAULTS = {"max_new_tokens": 256, "n_ctx": 0, "threads": 0}


def sampling_defaults() -> dict[str, Any]:
    """The engine's SamplingParams defaults plus our length/context/threads defaults."""
    from engine.sampling import SamplingParams

    values = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    return {**values, **GENERATION_DEFAULTS, "mode": "chat", "system_prompt": ""}


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _human_count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else str(n)


def no_template_reason(info: dict[str, Any]) -> str:
    return (f"{info['name']} has no chat template (tokenizer.chat_template is absent from its "
            f"GGUF metadata), so it is most likely a base model: Complete mode continues your "
            f"text as-is. Chat mode would use a generic {info['arch']} template instead.")


class ChatController(QObject):
    """State and behaviour of the chat tab. GUI thread only."""

    def __init__(self, parent: QObject | None = None, store: ConversationStore | None = None,
                 model_path: str | os.PathLike | None = None, autoload: bool = True) -> None:
        super().__init__(parent)
        self.store = store or ConversationStore()
        self.defaults = sampling_defaults()
        self.panel = ChatPanel(self.defaults, psutil.cpu_count(logical=True) or 1)
        self.engine = EngineHost(self)
        self.model_info: dict[str, Any] | None = None
        self.conv: Conversation | None = None
        self.messages: list[Message] = []  # the open conversation's messages, in order
        self.gen_id: int | None = None  # running generation request
        self.load_id: int | None = None  # running model load
        self.stream: Message | None = None  # the reply being streamed
        self._last_flush = 0.0
        self._gen_started = 0.0
        self._first_token_at: float | None = None
        self._loaded_ctx_setting = 0  # the n_ctx setting the loaded model was built with
        self._search = ""
        self._closed = False
        self._preview_id: int | None = None
        # Replaceable in tests (file dialogs are modal): return a path, or "" for none.
        self.ask_model_path = self._ask_model_path
        self.ask_export_path = self._ask_export_path

        # Status-bar fields (install_chat puts them into the window's status bar).
        self.model_label = QLabel("No model")
        self.ctx_label = QLabel("")
        self.mem_label = QLabel("")
        self.speed_label = QLabel("")
        for lab in (self.model_label, self.ctx_label, self.mem_label, self.speed_label):
            lab.setContentsMargins(6, 0, 6, 0)
        self._process = psutil.Process()
        self._mem_timer = QTimer(self, interval=1000)
        self._mem_timer.timeout.connect(self._update_memory)
        self._mem_timer.start()
        self._update_memory()
        self._preview_timer = QTimer(self, singleShot=True, interval=250)
        self._preview_timer.timeout.connect(self.refresh_preview)

        self._connect()
        self._open_initial_conversation()
        if autoload:
            self.load_model(str(model_path) if model_path else "")

    # -- wiring --------------------------------------------------------------------------------

    def _connect(self) -> None:
        p, w = self.panel, self.engine.worker
        p.input.sendRequested.connect(self.send)
        p.input.stopRequested.connect(self.stop)
        p.messages.copyRequested.connect(lambda i: copy_to_clipboard(self.messages[i].content))
        p.messages.editRequested.connect(self.begin_edit)
        p.messages.regenerateRequested.connect(lambda _i: self.regenerate())
        p.sidebar.newRequested.connect(self.new_chat)
        p.sidebar.selected.connect(self.open_conversation)
        p.sidebar.renameRequested.connect(self.rename)
        p.sidebar.deleteRequested.connect(self.delete)
        p.sidebar.exportRequested.connect(self._ask_export)
        p.sidebar.searchChanged.connect(self._search_changed)
        p.settings.changed.connect(self._settings_changed)
        p.prompt_view.refreshRequested.connect(self.refresh_preview)
        p.side_tabs.currentChanged.connect(lambda _i: self._schedule_preview())
        p.notice.button.clicked.connect(self.cancel_load)

        w.loadStarted.connect(self._on_load_started)
        w.loadProgress.connect(self._on_load_progress)
        w.modelLoaded.connect(self._on_model_loaded)
        w.loadFailed.connect(self._on_load_failed)
        w.loadCancelled.connect(self._on_load_cancelled)
        w.promptReady.connect(self._on_prompt_ready)
        w.promptDone.connect(self._on_prompt_done)
        w.tokens.connect(self._on_tokens)
        w.finished.connect(self._on_finished)
        w.failed.connect(self._on_failed)
        w.preview.connect(self._on_preview)

    @property
    def busy(self) -> bool:
        return self.gen_id is not None

    # -- model ---------------------------------------------------------------------------------

    def load_model(self, path: str = "") -> None:
        """Load `path` ("" = the embedded default model) with this conversation's context."""
        if self.busy:
            self.panel.show_error("Stop the current reply before loading another model.")
            return
        settings = self._settings()
        self._loaded_ctx_setting = int(settings.get("n_ctx") or 0)
        name = Path(path).name if path else "the default model (Gemma 3 270M)"
        self.load_id = self.engine.load(path, self._loaded_ctx_setting,
                                        int(settings.get("threads") or 0))
        self.panel.error.hide()
        self.panel.notice.show_text(f"Loading {name}…", progress=True, button="Cancel",
                                    closable=False)
        self.model_label.setText(f"Loading {name}…")

    def cancel_load(self) -> None:
        if self.load_id is None:
            return
        self.engine.cancel(self.load_id)
        self.load_id = None
        self.panel.notice.hide()
        self.model_label.setText(self._model_text() if self.model_info else "No model")
        self.speed_label.setText("Loading cancelled")

    def _on_load_started(self, rid: int, path: str) -> None:
        if rid == self.load_id:
            self.panel.notice.show_text(f"Loading {Path(path).name}…", progress=True,
                                        button="Cancel", closable=False)

    def _on_load_progress(self, rid: int, percent: int) -> None:
        if rid == self.load_id:
            self.panel.notice.set_progress(percent)

    def _on_model_loaded(self, rid: int, info: dict) -> None:
        if rid != self.load_id:
            return
        self.load_id = None
        self.model_info = info
        self.panel.notice.hide()
        self.model_label.setText(self._model_text())
        self.model_label.setToolTip(info["path"])
        self.speed_label.setText(f"Loaded in {info['load_seconds']:.1f} s")
        self._apply_model_mode()
        self._update_ctx(None)
        self._schedule_preview()

    def _on_load_failed(self, rid: int, message: str) -> None:
        if rid != self.load_id:
            return
        self.load_id = None
        self.panel.notice.hide()
        self.model_label.setText(self._model_text() if self.model_info else "No model")
        self.panel.show_error(f"Could not load the model: {message}")

    def _on_load_cancelled(self, rid: int) -> None:
        pass  # the GUI already moved on in cancel_load(); the worker kept its previous model

    def _model_path(self) -> str:
        return self.model_info["path"] if self.model_info else ""

    def _model_text(self) -> str:
        i = self.model_info
        return (f"{i['name']} · {i['arch']} · {_human_count(i['n_params'])} params · "
                f"{i['quant']} · {_human_bytes(i['file_size'])}")

    def _apply_model_mode(self) -> None:
        """A fresh conversation on a model without a chat template starts in Complete mode."""
        info = self.model_info
        if info is None or self.conv is None:
            return
        reason = "" if info["has_chat_template"] else no_template_reason(info)
        self.panel.settings.set_mode_reason(reason)
        settings = self._settings()
        if not self.messages and not settings.get("mode_chosen"):
            mode = "chat" if info["has_chat_template"] else "complete"
            if mode != self.conv.mode:
                self._save_settings({**settings, "mode": mode})
                self._show_conversation_settings()
        if reason and self.conv.mode == "complete":
            self.panel.notice.show_text(reason)
        else:
            self.panel.notice.hide()

    # -- conversations -------------------------------------------------------------------------

    def _open_initial_conversation(self) -> None:
        convs = self.store.list()
        if convs and not self.store.get(convs[0].id).messages:
            self.open_conversation(convs[0].id)  # reuse an empty one instead of piling up
        elif convs:
            self.open_conversation(convs[0].id)
        else:
            self.new_chat()

    def new_chat(self) -> None:
        if self.busy:
            return
        if self.conv is not None and not self.messages and self.conv.title == NEW_TITLE:
            self.panel.focus_input()  # already on an empty chat
            return
        settings = {k: v for k, v in self._settings().items() if k not in ("mode_chosen", "edited")}
        settings["system_prompt"] = ""
        if self.model_info is not None:
            settings["mode"] = "chat" if self.model_info["has_chat_template"] else "complete"
        conv = self.store.create(NEW_TITLE, mode=settings.get("mode", "chat"),
                                 settings=settings, model=self._model_path())
        self.open_conversation(conv.id)
        self.panel.focus_input()

    def open_conversation(self, conv_id: int) -> None:
        if self.busy:
            if self.conv is not None:
                self._refresh_sidebar()  # put the selection back: switching waits for the reply
            return
        previous = self.conv
        self.conv = self.store.get(conv_id)
        self.messages = list(self.conv.messages)
        if previous is not None and previous.id != conv_id and self.store.exists(previous.id):
            left = self.store.get(previous.id)
            if not left.messages and left.title == NEW_TITLE and not left.settings.get("edited"):
                self.store.delete(previous.id)  # leave no untouched empty "New chat" behind
        self.panel.input.end_edit()
        self._show_conversation_settings()
        view = self.panel.messages
        view.clear()
        for m in self.messages:
            view.add_message(m.role, m.content, self._stats_text(m))
        view.scroll_to_bottom()
        self._refresh_sidebar()
        self._apply_model_mode()
        self._update_ctx(None)
        self._schedule_preview()

    def rename(self, conv_id: int, title: str) -> None:
        if title:
            self.store.rename(conv_id, title)
            if self.conv is not None and conv_id == self.conv.id:
                self.conv.title = title
        self._refresh_sidebar()

    def delete(self, conv_id: int) -> None:
        if self.busy and self.conv is not None and conv_id == self.conv.id:
            self.panel.show_error("Stop the current reply before deleting this conversation.")
            return
        self.store.delete(conv_id)
        if self.conv is not None and conv_id == self.conv.id:
            self.conv = None
            self.messages = []
            remaining = self.store.list()
            if remaining:
                self.open_conversation(remaining[0].id)
            else:
                self.new_chat()
        else:
            self._refresh_sidebar()

    def export(self, conv_id: int, path: str | os.PathLike, fmt: str) -> Path:
        conv = self.store.get(conv_id)
        text = export_json(conv) if fmt == "json" else export_markdown(conv)
        path = Path(path)
        path.write_text(text, encoding="utf-8")
        return path

    def _ask_model_path(self) -> str:
        path, _ = QFileDialog.getOpenFileName(self.panel, "Load model for chat", "",
                                              "GGUF models (*.gguf);;All files (*)")
        return path

    def _ask_export_path(self, title: str, fmt: str) -> str:
        suffix = ".json" if fmt == "json" else ".md"
        stem = "".join(c if c.isalnum() or c in " -_" else "_" for c in title).strip() or "chat"
        path, _ = QFileDialog.getSaveFileName(self.panel, "Export conversation", stem + suffix,
                                              "JSON (*.json)" if fmt == "json" else "Markdown (*.md)")
        return path

    def _ask_export(self, conv_id: int, fmt: str) -> None:
        path = self.ask_export_path(self.store.get(conv_id).title, fmt)
        if path:
            try:
                self.export(conv_id, path, fmt)
            except OSError as exc:
                self.panel.show_error(f"Could not export: {exc}")

    def _search_changed(self, text: str) -> None:
        self._search = text
        self._refresh_sidebar()

    def _refresh_sidebar(self) -> None:
        rows = [(c.id, c.title, time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated)))
                for c in self.store.list(self._search)]
        self.panel.sidebar.set_conversations(rows, self.conv.id if self.conv else None)

    # -- settings ------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        if self.conv is None:
            return dict(self.defaults)
        return {**self.defaults, **self.conv.settings, "mode": self.conv.mode,
                "system_prompt": self.conv.system_prompt}

    def _save_settings(self, values: dict[str, Any]) -> None:
        if self.conv is None:
            return
        self.conv.settings = {k: v for k, v in values.items() if k not in ("mode", "system_prompt")}
        self.conv.mode = values.get("mode", self.conv.mode)
        self.conv.system_prompt = values.get("system_prompt", self.conv.system_prompt)
        self.store.update(self.conv.id, settings=self.conv.settings, mode=self.conv.mode,
                          system_prompt=self.conv.system_prompt)

    def _show_conversation_settings(self) -> None:
        s = self._settings()
        self.panel.settings.set_values(s)
        self.panel.messages.set_mode(s["mode"])
        self.panel.input.set_placeholder(
            "Text to continue  (Enter sends, Shift+Enter for a new line, empty Enter continues)"
            if s["mode"] == "complete" else "Message  (Enter to send, Shift+Enter for a new line)")

    def _settings_changed(self, values: dict[str, Any]) -> None:
        old_mode = self._settings()["mode"]
        values = {**values, "edited": True,  # the user touched it: keep it even while empty
                  # a mode the user picked is never switched automatically
                  "mode_chosen": values["mode"] != old_mode or self._settings().get("mode_chosen", False)}
        self._save_settings(values)
        if values["mode"] != old_mode:
            self._show_conversation_settings()
            self._apply_model_mode()
        self._schedule_preview()

    # -- generation ----------------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Send the input box's text (Enter): a new user message, then the reply."""
        if not self._can_generate():
            return
        mode = self._settings()["mode"]
        editing = self.panel.input.editing
        if editing is not None:
            self._truncate(editing)
            self.panel.input.end_edit()
        if not text.strip():
            if mode != "complete" or not self.messages:
                return  # Chat mode needs a message; Complete mode continues existing text
            self.panel.input.set_text("")
            self._start_generation()
            return
        self.panel.input.set_text("")
        user = self.store.add_message(self.conv.id, Message("user", text))
        self.messages.append(user)
        self.panel.messages.add_message("user", text)
        if self.conv.title == NEW_TITLE:
            title = text.strip().splitlines()[0][:48] or NEW_TITLE
            self.rename(self.conv.id, title)
        self._start_generation()

    def regenerate(self) -> None:
        """Drop the last reply and generate it again (Ctrl+R)."""
        if not self._can_generate() or not self.messages:
            return
        if self.messages[-1].role == "assistant":
            self._truncate(len(self.messages) - 1)
        if self.messages:
            self._start_generation()

    def begin_edit(self, index: int) -> None:
        """Put message `index` into the input box; sending replaces it and what follows."""
        if self.busy or not 0 <= index < len(self.messages):
            return
        self.panel.input.begin_edit(index, self.messages[index].content)

    def edit_and_resend(self, index: int, text: str) -> None:
        """Replace user message `index` with `text`, drop everything after it, reply again."""
        self.panel.input.begin_edit(index, text)
        self.send(text)

    def stop(self) -> None:
        """Stop the running reply (Esc); the tokens produced so far are kept."""
        if self.gen_id is not None:
            self.engine.cancel(self.gen_id)
        elif self.panel.input.editing is not None:
            self.panel.input.cancel_edit()

    def _can_generate(self) -> bool:
        if self.busy:
            self.speed_label.setText("Still generating: Esc stops it")
            return False
        if self.conv is None:
            self.new_chat()
        if self.load_id is not None:
            self.panel.show_error("The model is still loading.")
            return False
        if self.model_info is None:
            self.panel.show_error("No model is loaded: use Chat → Load model for chat… (Ctrl+L).")
            return False
        return True

    def _truncate(self, index: int) -> None:
        position = self.messages[index].position
        self.store.truncate(self.conv.id, position)
        del self.messages[index:]
        self.panel.messages.remove_from(index)

    def request_for(self, messages: list[Message]) -> PromptRequest:
        s = self._settings()
        params = {k: s[k] for k in ("temperature", "top_k", "top_p", "min_p", "repeat_penalty",
                                    "seed") if k in s}
        for k in ("repeat_last_n",):
            if k in s:
                params[k] = s[k]
        return PromptRequest(mode=s["mode"], system_prompt=s["system_prompt"],
                             messages=tuple((m.role, m.content) for m in messages),
                             params=params, max_new_tokens=int(s["max_new_tokens"]),
                             threads=int(s.get("threads") or 0))

    def _start_generation(self) -> None:
        request = self.request_for(self.messages)
        wanted_ctx = int(self._settings().get("n_ctx") or 0)
        if wanted_ctx != self._loaded_ctx_setting:
            # The KV cache is preallocated at load: a new context length means a reload,
            # queued in the worker ahead of this generation.
            self.load_model(self.model_info["path"])
        if self.conv.model != self._model_path():
            self.conv.model = self._model_path()
            self.store.update(self.conv.id, model=self.conv.model)
        self.stream = self.store.add_message(self.conv.id, Message("assistant", complete=False))
        self.messages.append(self.stream)
        widget = self.panel.messages.add_message("assistant", "", "generating…")
        widget.set_stats("waiting for the model…")
        self.panel.error.hide()
        self._last_flush = time.monotonic()
        self._gen_started = time.monotonic()
        self._first_token_at = None
        self.gen_id = self.engine.generate(request)
        self.panel.set_busy(True)
        self.panel.messages.scroll_to_bottom()
        self.speed_label.setText("Processing prompt…")

    def _on_prompt_ready(self, rid: int, text: str, ids: list, spans: list) -> None:
        if rid != self.gen_id or self.stream is None:
            return
        self.stream.prompt_ids = list(ids)
        self._attach_user_tokens(text, ids, spans)
        if self.panel.side_tabs.currentWidget() is self.panel.prompt_view:
            self.panel.prompt_view.show_prompt(text, [text[s:e] for s, e in spans],
                                               self._prompt_note())

    def _attach_user_tokens(self, text: str, ids: list[int], spans: list) -> None:
        """Give the last user message the ids/spans of its tokens as they appear in context."""
        users = [m for m in self.messages if m.role == "user"]
        if not users:
            return
        user = users[-1]
        start = text.rfind(user.content) if user.content else -1
        if start < 0:
            return
        end = start + len(user.content)
        user.token_ids, user.token_spans = [], []
        for tid, (s, e) in zip(ids, spans):
            if e > start and s < end:
                user.token_ids.append(int(tid))
                user.token_spans.append((max(s, start) - start, min(e, end) - start))
        self.store.save_message(user)

    def _on_prompt_done(self, rid: int, info: dict) -> None:
        if rid == self.gen_id:
            self.speed_label.setText(f"Prompt: {info['n_tokens']} tokens at "
                                     f"{info['tok_s']:.0f} tok/s")
            if self.stream is not None:
                self.stream.stats["prompt_tokens"] = info["n_tokens"]

    def _on_tokens(self, rid: int, batch: list[TokenRecord]) -> None:
        if rid != self.gen_id or self.stream is None:
            return
        m = self.stream
        now = time.monotonic()
        if self._first_token_at is None:
            self._first_token_at = now
        for t in batch:
            start = len(m.content)
            m.content += t.text
            m.token_ids.append(int(t.id))
            m.token_spans.append((start, len(m.content)))
        n = len(m.token_ids)
        widget = self.panel.messages.widgets[-1]
        widget.set_text(m.content)
        elapsed = now - self._first_token_at
        rate = (n - len(batch)) / elapsed if elapsed > 0.05 else 0.0
        live = f"{n} tokens · {rate:.1f} tok/s" if rate else f"{n} tokens"
        widget.set_stats(f"generating… {live}")
        self.speed_label.setText(f"Generating: {live}")
        self._update_ctx(len(m.prompt_ids) + n)
        if now - self._last_flush >= FLUSH_SECONDS:
            self.store.save_message(m)
            self._last_flush = now

    def _on_finished(self, rid: int, result: dict) -> None:
        if rid != self.gen_id or self.stream is None:
            return
        m = self.stream
        text = result.get("text")
        if isinstance(text, str) and text != m.content:
            if m.content.startswith(text):
                # A stop string was cut from the end: clip the token spans to the final text.
                m.token_spans = [(min(s, len(text)), min(e, len(text))) for s, e in m.token_spans]
            elif text.startswith(m.content) and m.token_spans:
                # The decoder's flushed tail (an incomplete UTF-8 sequence) belongs to the last token.
                m.token_spans[-1] = (m.token_spans[-1][0], len(text))
            m.content = text
        t = result.get("timings") or {}
        m.stats.update({k: v for k, v in t.items() if v is not None})
        m.stats["reason"] = result.get("reason")
        m.complete = True
        self.store.save_message(m)
        widget = self.panel.messages.widgets[-1]
        widget.set_text(m.content)
        widget.set_stats(self._stats_text(m))
        self.speed_label.setText(self._speed_text(m.stats))
        self._update_ctx(len(m.prompt_ids) + len(m.token_ids))
        self._end_generation()

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
                self.panel.messages.widgets[-1].set_stats(self._stats_text(m))
            else:  # nothing was produced: drop the empty reply
                self._truncate(len(self.messages) - 1)
        self.panel.show_error(message)
        self.speed_label.setText("Generation failed")
        self._end_generation()

    def _end_generation(self) -> None:
        self.gen_id = None
        self.stream = None
        self.panel.set_busy(False)
        self.panel.messages.set_busy(False)
        self._refresh_sidebar()

    # -- prompt preview ------------------------------------------------------------------------

    def _schedule_preview(self) -> None:
        if self.panel.side_tabs.currentWidget() is self.panel.prompt_view:
            self._preview_timer.start()

    def refresh_preview(self) -> None:
        if self.model_info is None or self.conv is None or self.busy:
            return
        self._preview_id = self.engine.preview(self.request_for(self.messages))

    def _on_preview(self, rid: int, text: str, ids: list, spans: list) -> None:
        if rid != self._preview_id:
            return
        self.panel.prompt_view.show_prompt(text, [text[s:e] for s, e in spans],
                                           self._prompt_note())
        self._update_ctx(len(ids))

    def _prompt_note(self) -> str:
        if self._settings()["mode"] == "complete":
            return "Complete mode: the raw text, no template"
        if self.model_info and self.model_info["has_chat_template"]:
            return "rendered with the model's chat template"
        return "rendered with a generic template (the model has none)"

    # -- status bar ----------------------------------------------------------------------------

    def _update_memory(self) -> None:
        try:
            rss = self._process.memory_info().rss
        except psutil.Error:
            return
        self.mem_label.setText(f"Memory {_human_bytes(rss)}")

    def _update_ctx(self, used: int | None) -> None:
        if self.model_info is None:
            self.ctx_label.setText("")
            return
        if used is None:
            last = next((m for m in reversed(self.messages) if m.role == "assistant"), None)
            used = len(last.prompt_ids) + len(last.token_ids) if last is not None else 0
        self.ctx_label.setText(f"Context {used} / {self.model_info['n_ctx']}")

    @staticmethod
    def _speed_text(stats: dict[str, Any]) -> str:
        parts = []
        if stats.get("prompt_tok_s"):
            parts.append(f"prompt {stats['prompt_tok_s']:.0f} tok/s")
        if stats.get("ttft_s") is not None:
            parts.append(f"TTFT {stats['ttft_s']:.2f} s")
        if stats.get("gen_tok_s"):
            parts.append(f"{stats['gen_tok_s']:.1f} tok/s")
        return " · ".join(parts)

    def _stats_text(self, m: Message) -> str:
        if m.role != "assistant":
            return ""
        if not m.complete:
            return f"interrupted · {len(m.token_ids)} tokens"
        parts = [f"{len(m.token_ids)} tokens"]
        speed = self._speed_text(m.stats)
        if speed:
            parts.append(speed)
        reason = m.stats.get("reason")
        if reason in ("cancelled", "length", "context", "error"):
            parts.append({"cancelled": "stopped", "length": "length limit",
                          "context": "context full", "error": "error"}[reason])
        return " · ".join(parts)

    # -- shutdown ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Save the reply in progress (as interrupted), stop the worker, close the store."""
        if self._closed:
            return
        self._closed = True
        if self.stream is not None:
            self.stream.complete = False
            self.store.save_message(self.stream)
        self.engine.shutdown()
        self.store.close()


def install_chat(main_window, model_path: str | os.PathLike | None = None,
                 autoload: bool = True) -> ChatController:
    """Add the chat tab, its menu, shortcuts and status-bar fields to `main_window`.

    `main_window` offers `add_panel(name, widget)` and is a QMainWindow (menuBar, statusBar).
    """
    ctl = ChatController(main_window, model_path=model_path, autoload=autoload)
    panel = ctl.panel
    try:
        main_window.add_panel("Chat", panel, select=True)  # the app opens ready to chat
    except TypeError:
        main_window.add_panel("Chat", panel)

    bar = main_window.statusBar()
    for lab in (ctl.model_label, ctl.ctx_label, ctl.mem_label, ctl.speed_label):
        bar.addPermanentWidget(lab)

    menu = (main_window.menu("&Chat") if hasattr(main_window, "menu")
            else main_window.menuBar().addMenu("&Chat"))

    def action(text: str, shortcut: str | QKeySequence | None, slot, window_wide: bool = True,
               tip: str = "") -> QAction:
        act = QAction(text, main_window)
        if shortcut:
            act.setShortcut(QKeySequence(shortcut))
        act.setShortcutContext(Qt.WindowShortcut if window_wide else Qt.WidgetWithChildrenShortcut)
        act.setStatusTip(tip)
        act.triggered.connect(slot)
        menu.addAction(act)
        if not window_wide:
            panel.addAction(act)  # active only while the chat tab has focus
        return act

    def ask_model() -> None:
        path = ctl.ask_model_path()
        if path:
            ctl.load_model(path)

    ctl.actions = {
        "new": action("&New chat", "Ctrl+N", ctl.new_chat, tip="Start a new conversation"),
        "load": action("&Load model for chat…", "Ctrl+L", ask_model,
                       tip="Open a GGUF file and chat with it"),
        "default": action("Load the &default model", None, lambda: ctl.load_model("")),
        "stop": action("&Stop generating", "Esc", ctl.stop, window_wide=False),
        "regenerate": action("&Regenerate reply", "Ctrl+R", ctl.regenerate),
        "focus": action("&Focus input", "Ctrl+K", lambda: _focus_chat(main_window, panel)),
    }
    menu.addSeparator()
    menu.addAction("Export conversation as &Markdown…",
                   lambda: ctl.conv and ctl._ask_export(ctl.conv.id, "md"))
    menu.addAction("Export conversation as &JSON…",
                   lambda: ctl.conv and ctl._ask_export(ctl.conv.id, "json"))
    # "/" focuses the input when typed outside a text field (text fields keep the character:
    # they claim printable keys before shortcuts see them).
    slash = QShortcut(QKeySequence("/"), panel, context=Qt.WidgetWithChildrenShortcut)
    slash.activated.connect(panel.focus_input)
    ctl.slash_shortcut = slash

    closing = getattr(main_window, "closing", None)  # MainWindow's close signal, if it has one
    if closing is not None:
        closing.connect(ctl.shutdown)
    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(ctl.shutdown)
    return ctl


def _focus_chat(main_window, panel: QWidget) -> None:
    """Show the chat tab (if the window has tabs) and put the cursor in the input."""
    show = getattr(main_window, "show_panel", None)
    if callable(show):
        show("Chat")
    panel.focus_input()
