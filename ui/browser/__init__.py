"""GGUF browser widgets: summary, metadata tree, chat template, tensor table and tensor detail."""

from ui.browser.browser import BrowserWidget

__all__ = ["BrowserWidget"]
