"""The prompt as the model sees it, outside a running reply: the preview tab and stored tokens.

`PromptContext` belongs to a `ChatController` (`chat`). It renders the open conversation's
next prompt for the side panel's Prompt tab (`engine.preview`, debounced, only while that tab
is shown), and rebuilds `chat.tokens` for a stored conversation by asking the worker to decode
its last reply's prompt ids (the text and spans are not stored). A running reply fills
`chat.tokens` itself (app/reply_stream.py).
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer

from app.conversation_settings import prompt_request


class PromptContext(QObject):
    """Prompt preview and stored-prompt decoding (GUI thread).

    A QObject so that the workers' signals, emitted on their threads, are queued to it."""

    def __init__(self, chat) -> None:
        super().__init__(chat)
        self.chat = chat  # the ChatController
        self.panel = chat.panel
        self._preview_id: int | None = None
        self._decode_id: int | None = None  # a stored conversation's prompt being decoded
        self._preview_timer = QTimer(self, singleShot=True, interval=250)
        self._preview_timer.timeout.connect(self.refresh_preview)
        self.panel.prompt_view.refreshRequested.connect(self.refresh_preview)
        self.panel.side_tabs.currentChanged.connect(lambda _i: self.schedule_preview())
        for w in (h.worker for h in chat.hosts):
            w.preview.connect(self._on_preview)
            w.decoded.connect(self._on_decoded)

    # -- tokens of the latest reply's context --------------------------------------------------

    def reset_tokens(self) -> None:
        """Empty `chat.tokens` (and forget a decode in flight)."""
        self.chat.tokens.clear()
        self._decode_id = None
        self.chat.tokensReset.emit()

    def load_stored_tokens(self) -> None:
        """Rebuild `chat.tokens` for a stored conversation: ask the worker to decode its last
        reply's prompt (the text/spans are not stored, only the ids)."""
        chat = self.chat
        if chat.busy:
            return
        self.reset_tokens()
        last = chat.messages[-1] if chat.messages else None
        if (chat.model_info is None or chat.load_id is not None or last is None
                or last.role != "assistant" or not last.prompt_ids
                or chat.conv.model != chat.model.path):
            return  # nothing to show, or ids from another model's vocabulary
        self._decode_id = chat.engine.decode(last.prompt_ids)

    def _on_decoded(self, rid: int, text: str, spans: list) -> None:
        chat = self.chat
        if rid != self._decode_id or chat.busy:
            return
        self._decode_id = None
        last = chat.messages[-1]
        reply = len(chat.messages) - 1
        chat.tokens.set_prompt(text, last.prompt_ids, spans, chat.messages[:reply], reply,
                               chat.conversation_settings()["system_prompt"])
        chat.tokens.load_reply(last)
        chat.tokensReset.emit()

    # -- prompt preview ------------------------------------------------------------------------

    def schedule_preview(self) -> None:
        if self.panel.side_tabs.currentWidget() is self.panel.prompt_view:
            self._preview_timer.start()

    def refresh_preview(self) -> None:
        chat = self.chat
        if chat.model_info is None or chat.conv is None or chat.busy:
            return
        request = prompt_request(chat.conversation_settings(), chat.messages)
        self._preview_id = chat.engine.preview(request)

    def _on_preview(self, rid: int, text: str, ids: list, spans: list) -> None:
        if rid != self._preview_id:
            return
        self.panel.prompt_view.show_prompt(text, [text[s:e] for s, e in spans],
                                           self.prompt_note())
        self.chat.update_ctx(len(ids))

    def prompt_note(self) -> str:
        """How the previewed prompt was rendered."""
        chat = self.chat
        if chat.conversation_settings()["mode"] == "complete":
            return "Complete mode: the raw text, no template"
        if chat.model_info and chat.model_info["has_chat_template"]:
            return "rendered with the model's chat template"
        return "rendered with a generic template (the model has none)"
