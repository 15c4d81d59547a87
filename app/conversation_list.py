"""The chat's conversation list: the sidebar and the operations on stored conversations.

`ConversationList` creates, opens, renames, deletes, exports and searches the conversations of
the `ConversationStore`, and keeps the sidebar in step. It belongs to a `ChatController`
(`chat`): it switches the open conversation (`chat.conv`, `chat.messages`), and what opening a
conversation shows (messages, settings, model mode, tokens) is `chat.show_conversation()`.
Nothing switches while a reply streams.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from PySide6.QtWidgets import QFileDialog

from app.conversations import export_json, export_markdown

NEW_TITLE = "New chat"


class ConversationList:
    """Sidebar operations of the chat tab (GUI thread)."""

    def __init__(self, chat) -> None:
        self.chat = chat  # the ChatController
        self.store, self.panel = chat.store, chat.panel
        self.search = ""
        sidebar = self.panel.sidebar
        sidebar.newRequested.connect(self.new_chat)
        sidebar.selected.connect(self.open)
        sidebar.renameRequested.connect(self.rename)
        sidebar.deleteRequested.connect(self.delete)
        sidebar.exportRequested.connect(self.ask_export)
        sidebar.searchChanged.connect(self._search_changed)

    def open_initial(self) -> None:
        """Open the newest conversation, or a new one when there is none."""
        convs = self.store.list()
        if convs:
            self.open(convs[0].id)
        else:
            self.new_chat()

    def new_chat(self) -> None:
        chat = self.chat
        if chat.busy:
            return
        if chat.conv is not None and not chat.messages and chat.conv.title == NEW_TITLE:
            self.panel.focus_input()  # already on an empty chat
            return
        settings = {k: v for k, v in chat.conversation_settings().items()
                    if k not in ("mode_chosen", "edited")}
        settings["system_prompt"] = ""
        if chat.model_info is not None:
            settings["mode"] = "chat" if chat.model_info["has_chat_template"] else "complete"
        conv = self.store.create(NEW_TITLE, mode=settings.get("mode", "chat"),
                                 settings=settings, model=chat.model.path)
        self.open(conv.id)
        self.panel.focus_input()

    def open(self, conv_id: int) -> None:
        chat = self.chat
        if chat.busy:
            if chat.conv is not None:
                self.refresh()  # put the selection back: switching waits for the reply
            return
        previous = chat.conv
        chat.conv = self.store.get(conv_id)
        chat.messages = list(chat.conv.messages)
        if previous is not None and previous.id != conv_id and self.store.exists(previous.id):
            left = self.store.get(previous.id)
            if not left.messages and left.title == NEW_TITLE and not left.settings.get("edited"):
                self.store.delete(previous.id)  # leave no untouched empty "New chat" behind
        chat.show_conversation()

    def rename(self, conv_id: int, title: str) -> None:
        if title:
            self.store.rename(conv_id, title)
            if self.chat.conv is not None and conv_id == self.chat.conv.id:
                self.chat.conv.title = title
        self.refresh()

    def name_after(self, text: str) -> None:
        """Title a "New chat" after the first line of its first message."""
        conv = self.chat.conv
        if conv.title == NEW_TITLE:
            self.rename(conv.id, text.strip().splitlines()[0][:48] or NEW_TITLE)

    def delete(self, conv_id: int) -> None:
        chat = self.chat
        is_open = chat.conv is not None and conv_id == chat.conv.id
        if chat.busy and is_open:
            self.panel.show_error("Stop the current reply before deleting this conversation.")
            return
        self.store.delete(conv_id)
        if not is_open:
            self.refresh()
            return
        chat.conv = None
        chat.messages = []
        remaining = self.store.list()
        if remaining:
            self.open(remaining[0].id)
        else:
            self.new_chat()

    def export(self, conv_id: int, path: str | os.PathLike, fmt: str) -> Path:
        """Write conversation `conv_id` to `path` as "json" or Markdown ("md")."""
        conv = self.store.get(conv_id)
        text = export_json(conv) if fmt == "json" else export_markdown(conv)
        path = Path(path)
        path.write_text(text, encoding="utf-8")
        return path

    def ask_export(self, conv_id: int, fmt: str) -> None:
        """Export after asking where (`chat.ask_export_path`, replaceable in tests)."""
        path = self.chat.ask_export_path(self.store.get(conv_id).title, fmt)
        if path:
            try:
                self.export(conv_id, path, fmt)
            except OSError as exc:
                self.panel.show_error(f"Could not export: {exc}")

    def ask_export_path(self, title: str, fmt: str) -> str:
        """A save dialog for the export of `title`; "" when cancelled."""
        suffix = ".json" if fmt == "json" else ".md"
        stem = "".join(c if c.isalnum() or c in " -_" else "_" for c in title).strip() or "chat"
        path, _ = QFileDialog.getSaveFileName(self.panel, "Export conversation", stem + suffix,
                                              "JSON (*.json)" if fmt == "json" else "Markdown (*.md)")
        return path

    def _search_changed(self, text: str) -> None:
        self.search = text
        self.refresh()

    def refresh(self) -> None:
        """Refill the sidebar (filtered by the search text) and select the open conversation."""
        rows = [(c.id, c.title, time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated)))
                for c in self.store.list(self.search)]
        self.panel.sidebar.set_conversations(rows, self.chat.conv.id if self.chat.conv else None)
