"""Wiring of the chat tab: widgets (ui/chat) <-> engine worker <-> conversation store.

`install_chat(main_window)` builds a `ChatController`, adds the chat tab, the Chat menu
(app/chat_menu.py), status-bar fields (ui/status_bar.py) and the inspection panels
(app/inspect_controller.py), and starts loading the embedded default model. The controller
holds the state the widgets only display, the open conversation (`conv`, `messages`), and
wires the parts that act on it:

* `model` (app/chat_model.py): loading, and the model in use;
* `conversations` (app/conversation_list.py): the sidebar; new, open, rename, delete, export;
* `settings` (app/conversation_settings.py): the open conversation's sampling/mode settings;
* `replies` (app/reply_stream.py): send, regenerate, edit, stop, and the reply streaming in;
* `prompt` (app/prompt_context.py): the prompt preview, and a stored prompt's tokens;
* `tokens` (app/reply_tokens.py, Qt-free): the tokens of the latest reply's context.

Everything it asks of the model goes through `engine`: the local `EngineHost` (queued
signals), or, after `connect_remote`, a `RemoteHost` (app/remote_host.py) with the same
requests and signals; everything it stores goes through `ConversationStore` on the GUI thread.

Signals for the inspection side: `tokensReset()` when `tokens` was rebuilt (a new prompt, a
conversation opened), `tokensAppended(first)` as a reply streams, `promptProcessed(info)` and
`replyFinished(stats)`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QApplication, QFileDialog, QLabel

from app.chat_model import ModelSlot
from app.conversation_list import ConversationList
from app.conversation_settings import ConversationSettings, sampling_defaults
from app.conversations import Conversation, ConversationStore, Message
from app.engine_worker import EngineHost
from app.remote_host import RemoteHost
from app.prompt_context import PromptContext
from app.reply_stream import ReplyStream, show_reply, stats_text
from app.reply_tokens import ConversationTokens
from ui.chat import ChatPanel
from ui.chat.messages import copy_to_clipboard
from ui.main_window import MainWindow
from ui.status_bar import ChatStatus


class ChatController(QObject):
    """State and wiring of the chat tab. GUI thread only."""

    tokensReset = Signal()
    tokensAppended = Signal(int)  # index of the first new token in `tokens`
    promptProcessed = Signal(dict)  # {n_tokens, seconds, tok_s}
    replyFinished = Signal(dict)  # the reply's stats (timings, reason)

    def __init__(self, parent: QObject | None = None, store: ConversationStore | None = None,
                 model_path: str | os.PathLike | None = None, autoload: bool = True) -> None:
        super().__init__(parent)
        self.store = store or ConversationStore()
        defaults = sampling_defaults()
        self.panel = ChatPanel(defaults, psutil.cpu_count(logical=True) or 1)
        self.settings = ConversationSettings(self.store, self.panel, defaults)
        self.local = EngineHost(self)
        self.remote = RemoteHost(self)
        self.hosts = (self.local, self.remote)  # both are listened to; `engine` is in use
        self.status = ChatStatus()  # install_chat puts its fields into the window's status bar
        self.model = ModelSlot(self.local, self.panel, self.status, self)
        self.model.listen(self.remote)
        self.conv: Conversation | None = None
        self.messages: list[Message] = []  # the open conversation's messages, in order
        self.tokens = ConversationTokens()
        # Set by the inspection side: returns a LiveTrace to record the next reply into, or
        # None when no panel is open (then generation records nothing and costs nothing).
        self.trace_factory: Callable[[], Any] | None = None
        self._closed = False
        self.replies = ReplyStream(self)
        self.prompt = PromptContext(self)
        self.conversations = ConversationList(self)
        # Replaceable in tests (file dialogs are modal): return a path, or "" for none.
        self.ask_model_path = self._ask_model_path
        self.ask_export_path = self.conversations.ask_export_path

        self._process = psutil.Process()
        self.rss = 0  # this process's resident memory, refreshed every second
        self._mem_timer = QTimer(self, interval=1000)
        self._mem_timer.timeout.connect(self._update_memory)
        self._mem_timer.start()
        self._update_memory()

        self._connect()
        self.conversations.open_initial()
        if autoload:
            self.load_model(str(model_path) if model_path else "")

    def _connect(self) -> None:
        p = self.panel
        p.messages.copyRequested.connect(lambda i: copy_to_clipboard(self.messages[i].content))
        p.settings.changed.connect(self._settings_changed)
        p.notice.button.clicked.connect(self.model.cancel)
        self.model.loaded.connect(self._on_model_loaded)

    # -- the parts' state and operations, by the names the menu, the tests and the inspection
    # side use -----------------------------------------------------------------------------------

    @property
    def engine(self):
        """The host of the model in use: `local` or `remote`."""
        return self.model.engine

    @property
    def model_info(self) -> dict[str, Any] | None:
        """The worker's facts about the model in use (None before one loaded)."""
        return self.model.info

    @property
    def load_id(self) -> int | None:
        return self.model.load_id

    @property
    def busy(self) -> bool:
        return self.replies.busy

    @property
    def stream(self) -> Message | None:
        """The reply being streamed."""
        return self.replies.stream

    @property
    def trace(self):
        """The running reply's LiveTrace (None when nothing records)."""
        return self.replies.trace

    def send(self, text: str) -> None:
        self.replies.send(text)

    def regenerate(self) -> None:
        self.replies.regenerate()

    def begin_edit(self, index: int) -> None:
        self.replies.begin_edit(index)

    def stop(self) -> None:
        self.replies.stop()

    def new_chat(self) -> None:
        self.conversations.new_chat()

    def open_conversation(self, conv_id: int) -> None:
        self.conversations.open(conv_id)

    def rename(self, conv_id: int, title: str) -> None:
        self.conversations.rename(conv_id, title)

    def delete(self, conv_id: int) -> None:
        self.conversations.delete(conv_id)

    def export(self, conv_id: int, path: str | os.PathLike, fmt: str) -> Path:
        return self.conversations.export(conv_id, path, fmt)

    def _ask_export(self, conv_id: int, fmt: str) -> None:
        self.conversations.ask_export(conv_id, fmt)

    def conversation_settings(self) -> dict[str, Any]:
        """The open conversation's settings (sampling, context, mode, system prompt)."""
        return self.settings.values(self.conv)

    def history(self) -> list[dict[str, Any]]:
        """The stored stats of this conversation's finished replies, oldest first."""
        return [dict(m.stats) for m in self.messages
                if m.role == "assistant" and m.complete and m.stats.get("gen_tokens")]

    # The status-bar fields, by the names the tests and screenshots use.
    @property
    def model_label(self) -> QLabel:
        return self.status.model_label

    @property
    def ctx_label(self) -> QLabel:
        return self.status.ctx_label

    @property
    def mem_label(self) -> QLabel:
        return self.status.mem_label

    @property
    def speed_label(self) -> QLabel:
        return self.status.speed_label

    # -- model ---------------------------------------------------------------------------------

    def load_model(self, path: str = "") -> None:
        """Load `path` ("" = the embedded default model) with this conversation's context."""
        if self.busy:
            self.panel.show_error("Stop the current reply before loading another model.")
            return
        settings = self.conversation_settings()
        self.model.load(path, int(settings.get("n_ctx") or 0), int(settings.get("threads") or 0),
                        host=self.local)

    def connect_remote(self, url: str, api_key: str | None = None,
                       model: str | None = None) -> None:
        """Chat with a model served by an OpenAI-compatible server from now on (File →
        Connect to server…); a failed connection keeps the model in use."""
        if self.busy:
            self.panel.show_error("Stop the current reply before connecting to a server.")
            return
        self.remote.configure(url, api_key, model)
        self.model.load(url, 0, 0, host=self.remote)

    def _ask_model_path(self) -> str:
        path, _ = QFileDialog.getOpenFileName(self.panel, "Load model for chat", "",
                                              "GGUF models (*.gguf);;All files (*)")
        return path

    def _on_model_loaded(self, _info: dict) -> None:
        self._apply_model_mode()
        self.update_ctx(None)
        self.prompt.schedule_preview()
        self.prompt.load_stored_tokens()

    def _apply_model_mode(self) -> None:
        self.settings.apply_model_mode(self.conv, self.messages, self.model_info)

    # -- the open conversation -----------------------------------------------------------------

    def show_conversation(self) -> None:
        """Show the conversation just opened: its messages, settings, context and tokens."""
        self.panel.input.end_edit()
        self.settings.show(self.conv)
        view = self.panel.messages
        view.clear()
        for m in self.messages:
            w = view.add_message(m.role, m.content, stats_text(m))
            if m.role == "assistant":
                show_reply(w, m.content)
        view.scroll_to_bottom()
        self.conversations.refresh()
        self._apply_model_mode()
        self.update_ctx(None)
        self.prompt.schedule_preview()
        self.prompt.load_stored_tokens()

    def _settings_changed(self, values: dict[str, Any]) -> None:
        if self.settings.edited(self.conv, values):
            self._apply_model_mode()
        self.prompt.schedule_preview()

    # -- status bar ----------------------------------------------------------------------------

    def _update_memory(self) -> None:
        try:
            rss = self._process.memory_info().rss
        except psutil.Error:
            return
        self.rss = rss
        self.status.set_memory(rss)

    def update_ctx(self, used: int | None) -> None:
        """Show `used` context tokens (None: those of the last reply) of the model's window."""
        if self.model_info is None:
            self.status.set_context(None, None)
            return
        if used is None:
            last = next((m for m in reversed(self.messages) if m.role == "assistant"), None)
            used = len(last.prompt_ids) + len(last.token_ids) if last is not None else 0
        self.status.set_context(used, self.model_info["n_ctx"])

    # -- shutdown ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Save the reply in progress (as interrupted), stop the worker, close the store."""
        if self._closed:
            return
        self._closed = True
        if self.stream is not None:
            self.stream.complete = False
            self.store.save_message(self.stream)
        for host in self.hosts:
            host.shutdown()
        self.store.close()


def install_chat(main_window: MainWindow, model_path: str | os.PathLike | None = None,
                 autoload: bool = True, inspect: bool = True) -> ChatController:
    """Add the chat tab, its menu (app/chat_menu.py), status-bar fields and (with `inspect`)
    the inspection panels (app/inspect_controller.py) to `main_window`."""
    from app.chat_menu import add_chat_menu
    from app.inspect_controller import install_inspect

    ctl = ChatController(main_window, model_path=model_path, autoload=autoload)
    main_window.add_panel("Chat", ctl.panel, select=True)  # the app opens ready to chat
    ctl.status.install(main_window.statusBar())
    ctl.actions = add_chat_menu(main_window, ctl)
    ctl.inspect = install_inspect(main_window, ctl) if inspect else None
    main_window.closing.connect(ctl.shutdown)
    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(ctl.shutdown)
    return ctl
