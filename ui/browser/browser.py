"""The GGUF browser panel: summary, metadata, chat template and tensors, as inner tabs.

`set_file(...)` takes plain data (summary rows, metadata dicts, the tensor list) and fills
every view; `tensor_selected` tells the app which tensor to analyse, and the app reports back
through `detail` (see `TensorDetailView`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QSplitter, QStackedWidget, QTabWidget, QVBoxLayout, QWidget

from ui.browser.metadata_view import MetadataView
from ui.browser.summary_view import SummaryView
from ui.browser.template_view import ChatTemplateView
from ui.browser.tensor_detail import TensorDetailView
from ui.browser.tensor_view import TensorListView

TEMPLATE_KEY = "tokenizer.chat_template"


class BrowserWidget(QWidget):
    tensor_selected = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.summary = SummaryView()
        self.metadata = MetadataView()
        self.template = ChatTemplateView()
        self.tensors = TensorListView()
        self.detail = TensorDetailView()
        self.tensors.tensor_selected.connect(self.tensor_selected)

        self.tensor_split = QSplitter(Qt.Horizontal)
        self.tensor_split.addWidget(self._padded(self.tensors))
        self.tensor_split.addWidget(self.detail)
        self.tensor_split.setStretchFactor(0, 5)
        self.tensor_split.setStretchFactor(1, 6)
        self.tensor_split.setChildrenCollapsible(False)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.summary, "Summary")
        self.tabs.addTab(self.metadata, "Metadata")
        self.tabs.addTab(self.template, "Chat template")
        self.tabs.addTab(self.tensor_split, "Tensors")

        self.placeholder = QLabel(
            "<h2>No model open</h2>"
            "<p>Open a GGUF file with <b>File → Open</b> (Ctrl+O), drop one on this window,<br>"
            "or open the built-in Gemma 3 270M with <b>File → Open Default Model</b>.</p>")
        self.placeholder.setAlignment(Qt.AlignCenter)
        self.placeholder.setTextFormat(Qt.RichText)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(self.tabs)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.stack)
        self._sized = False

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not self._sized:
            # Stretch factors only share out extra space; give the table room for its columns.
            self._sized = True
            w = max(self.width(), 1000)
            self.tensor_split.setSizes([int(w * 0.5), int(w * 0.5)])
            self.metadata.splitter.setSizes([int(w * 0.6), int(w * 0.4)])

    @staticmethod
    def _padded(w: QWidget) -> QWidget:
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(8, 8, 4, 6)
        lay.addWidget(w)
        return box

    def set_file(self, title: str, subtitle: str, summary_rows: Iterable[tuple[str, Any]],
                 metadata: dict[str, Any], metadata_types: dict[str, str], tensors: list) -> None:
        self.summary.set_summary(title, subtitle, summary_rows)
        self.metadata.set_metadata(metadata, metadata_types)
        self.template.set_templates({k: v for k, v in metadata.items()
                                     if k.startswith(TEMPLATE_KEY) and isinstance(v, str)})
        self.detail.clear()
        self.tensors.filter.clear()
        self.tensors.set_tensors(tensors)
        self.stack.setCurrentWidget(self.tabs)

    def clear(self) -> None:
        self.summary.clear()
        self.metadata.clear()
        self.template.set_templates({})
        self.tensors.clear()
        self.detail.clear()
        self.stack.setCurrentWidget(self.placeholder)

    @property
    def has_file(self) -> bool:
        return self.stack.currentWidget() is self.tabs
