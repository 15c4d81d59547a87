"""Chat widgets: messages, input, conversation sidebar, settings and prompt preview.

Plain Qt widgets that receive plain data; `app/chat_controller.py` wires them to the engine.
"""

from ui.chat.panel import ChatPanel

__all__ = ["ChatPanel"]
