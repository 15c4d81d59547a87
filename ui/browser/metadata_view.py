"""Metadata browser: a filterable key tree; selecting an array key pages its items beside it."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSortFilterProxyModel, Qt, QTimer
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QLineEdit, QSplitter,
                               QTableView, QTreeView, QVBoxLayout, QWidget)

from ui.browser.metadata_model import KEY_ROLE, SEARCH_ROLE, ArrayItemsModel, MetadataTreeModel


class ArrayPanel(QWidget):
    """The items of one metadata array: a lazily fetched, filterable (index, value) table."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel("Select an array key to browse its items")
        self.title.setWordWrap(True)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter items (substring)")
        self.filter.setClearButtonEnabled(True)
        self.model = ArrayItemsModel(self)
        self.view = QTableView()
        self.view.setModel(self.model)
        self.view.verticalHeader().hide()
        self.view.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.view.setAlternatingRowColors(True)
        self.view.setShowGrid(False)
        self.view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.view.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.view.horizontalHeader().setStretchLastSection(True)
        self.view.setColumnWidth(0, self.fontMetrics().horizontalAdvance("0000000") + 12)
        self.count = QLabel("")
        # Filtering a 262k-entry vocabulary takes tens of ms: wait until typing pauses.
        self._debounce = QTimer(self, singleShot=True, interval=200)
        self._debounce.timeout.connect(self._apply_filter)
        self.filter.textChanged.connect(self._debounce.start)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.filter)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.count)
        self._key = ""

    def set_array(self, key: str, items: Any, type_name: str) -> None:
        self._key = key
        self.title.setText(f"<b>{key}</b> — {type_name}, {len(items):,} items")
        self.filter.blockSignals(True)
        self.filter.clear()
        self.filter.blockSignals(False)
        self.model.set_array(items, type_name)
        self._update_count()

    def clear(self) -> None:
        self._key = ""
        self.title.setText("Select an array key to browse its items")
        self.model.set_array([], "")
        self.count.setText("")

    def _apply_filter(self) -> None:
        self.model.set_filter(self.filter.text())
        self._update_count()

    def apply_filter_now(self) -> None:
        self._debounce.stop()
        self._apply_filter()

    def _update_count(self) -> None:
        if self._key:
            self.count.setText(f"{self.model.total_matches:,} matching items")


class MetadataView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = MetadataTreeModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterRole(SEARCH_ROLE)
        self.proxy.setFilterCaseSensitivity(Qt.CaseInsensitive)
        self.proxy.setRecursiveFilteringEnabled(True)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter keys and values")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._on_filter)
        self.tree = QTreeView()
        self.tree.setModel(self.proxy)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.tree.setEditTriggers(QAbstractItemView.NoEditTriggers)
        header = self.tree.header()
        header.setStretchLastSection(True)
        fm = self.fontMetrics()
        self.tree.setColumnWidth(0, fm.horizontalAdvance("M" * 18) + 40)
        self.tree.setColumnWidth(1, fm.horizontalAdvance("array[float32]") + 24)
        header.setSectionResizeMode(0, QHeaderView.Interactive)
        self.tree.selectionModel().currentChanged.connect(self._on_current)
        self.arrays = ArrayPanel()

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.filter)
        lv.addWidget(self.tree, 1)
        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.arrays)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.splitter)

    def set_metadata(self, metadata: dict[str, Any], types: dict[str, str]) -> None:
        self.model.set_metadata(metadata, types)
        self.arrays.clear()
        self.tree.expandAll()

    def clear(self) -> None:
        self.set_metadata({}, {})

    def _on_filter(self, text: str) -> None:
        self.proxy.setFilterFixedString(text)
        self.tree.expandAll()

    def select_key(self, key: str) -> bool:
        """Make `key` current (and show its items if it is an array); False if absent."""
        def find(parent):
            for row in range(self.proxy.rowCount(parent)):
                idx = self.proxy.index(row, 0, parent)
                if idx.data(KEY_ROLE) == key:
                    return idx
                hit = find(idx)
                if hit is not None:
                    return hit
            return None
        idx = find(self.tree.rootIndex())
        if idx is None:
            return False
        self.tree.setCurrentIndex(idx)
        return True

    def _on_current(self, current, _previous) -> None:
        # Straight from the source node: a 262k-item list must not round-trip through QVariant.
        entry = self.model.entry(self.proxy.mapToSource(current))
        if entry is None:
            return
        key, type_name, value = entry
        if type_name.startswith("array") or isinstance(value, list):
            self.arrays.set_array(key, value, type_name)
