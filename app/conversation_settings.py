"""Per-conversation settings of the chat: sampling, length, context, threads, mode, system prompt.

The defaults are the engine's `SamplingParams` plus our generation defaults
(`sampling_defaults`); a conversation stores only its own values (`Conversation.settings`,
`mode`, `system_prompt`). `ConversationSettings` merges them over the defaults, saves what the
settings panel edits, shows a conversation's values, and starts a fresh conversation in
Complete mode on a model without a chat template. `prompt_request` turns the values and the
messages into the `PromptRequest` a reply or a prompt preview sends to the engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from app.conversations import Conversation, ConversationStore, Message
from app.engine_worker import PromptRequest
from app.harmony import prompt_content
from ui.chat import ChatPanel

GENERATION_DEFAULTS = {"max_new_tokens": 256, "n_ctx": 0, "threads": 0}
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed",
                 "repeat_last_n")


def sampling_defaults() -> dict[str, Any]:
    """The engine's SamplingParams defaults plus our length/context/threads defaults."""
    from engine.sampling import SamplingParams

    values = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    return {**values, **GENERATION_DEFAULTS, "mode": "chat", "system_prompt": ""}


def no_template_reason(info: dict[str, Any]) -> str:
    return (f"{info['name']} has no chat template (tokenizer.chat_template is absent from its "
            f"GGUF metadata), so it is most likely a base model: Complete mode continues your "
            f"text as-is. Chat mode would use a generic {info['arch']} template instead.")


def prompt_request(settings: dict[str, Any], messages: list[Message]) -> PromptRequest:
    """The engine request for a reply to `messages` with a conversation's `settings`."""
    params = {k: settings[k] for k in SAMPLING_KEYS if k in settings}
    return PromptRequest(mode=settings["mode"], system_prompt=settings["system_prompt"],
                         messages=tuple((m.role, prompt_content(m.content)
                                         if m.role == "assistant" and settings["mode"] == "chat"
                                         else m.content) for m in messages),
                         params=params, max_new_tokens=int(settings["max_new_tokens"]),
                         threads=int(settings.get("threads") or 0))


class ConversationSettings:
    """Reads, saves and shows the open conversation's settings (GUI thread)."""

    def __init__(self, store: ConversationStore, panel: ChatPanel,
                 defaults: dict[str, Any]) -> None:
        self.store, self.panel, self.defaults = store, panel, defaults

    def values(self, conv: Conversation | None) -> dict[str, Any]:
        """`conv`'s settings over the defaults (the defaults alone without a conversation)."""
        if conv is None:
            return dict(self.defaults)
        return {**self.defaults, **conv.settings, "mode": conv.mode,
                "system_prompt": conv.system_prompt}

    def save(self, conv: Conversation | None, values: dict[str, Any]) -> None:
        if conv is None:
            return
        conv.settings = {k: v for k, v in values.items() if k not in ("mode", "system_prompt")}
        conv.mode = values.get("mode", conv.mode)
        conv.system_prompt = values.get("system_prompt", conv.system_prompt)
        self.store.update(conv.id, settings=conv.settings, mode=conv.mode,
                          system_prompt=conv.system_prompt)

    def show(self, conv: Conversation | None) -> None:
        s = self.values(conv)
        self.panel.settings.set_values(s)
        self.panel.messages.set_mode(s["mode"])
        self.panel.input.set_placeholder(
            "Text to continue  (Enter sends, Shift+Enter for a new line, empty Enter continues)"
            if s["mode"] == "complete" else "Message  (Enter to send, Shift+Enter for a new line)")

    def edited(self, conv: Conversation | None, values: dict[str, Any]) -> bool:
        """Save the settings panel's `values`; True when the mode changed (then shown)."""
        old = self.values(conv)
        values = {**values, "edited": True,  # the user touched it: keep it even while empty
                  # a mode the user picked is never switched automatically
                  "mode_chosen": values["mode"] != old["mode"] or old.get("mode_chosen", False)}
        self.save(conv, values)
        if values["mode"] == old["mode"]:
            return False
        self.show(conv)
        return True

    def apply_model_mode(self, conv: Conversation | None, messages: list[Message],
                         info: dict[str, Any] | None) -> None:
        """A fresh conversation on a model without a chat template starts in Complete mode."""
        if info is None or conv is None:
            return
        reason = "" if info["has_chat_template"] else no_template_reason(info)
        self.panel.settings.set_mode_reason(reason)
        settings = self.values(conv)
        if not messages and not settings.get("mode_chosen"):
            mode = "chat" if info["has_chat_template"] else "complete"
            if mode != conv.mode:
                self.save(conv, {**settings, "mode": mode})
                self.show(conv)
        if reason and conv.mode == "complete":
            self.panel.notice.show_text(reason)
        else:
            self.panel.notice.hide()
