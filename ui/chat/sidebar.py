"""The list of saved conversations: search by title, new, rename, delete, export.

Plain data in: `set_conversations([(id, title, subtitle), ...])`. Requests out as signals;
the controller does the storage and asks for file names.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QLineEdit, QListWidget,
                               QListWidgetItem, QMenu, QMessageBox, QPushButton, QVBoxLayout,
                               QWidget)

ID_ROLE = Qt.UserRole


class ConversationSidebar(QWidget):
    newRequested = Signal()
    selected = Signal(int)
    renameRequested = Signal(int, str)
    deleteRequested = Signal(int)
    exportRequested = Signal(int, str)  # (conversation id, "md" | "json")
    searchChanged = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Search titles")
        self.search.setClearButtonEnabled(True)
        self.new_button = QPushButton("New chat", self)
        self.new_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.list = QListWidget(self)
        self.list.setSelectionMode(QAbstractItemView.SingleSelection)
        self.list.setEditTriggers(QAbstractItemView.EditKeyPressed)  # F2 renames in place
        self.list.setContextMenuPolicy(Qt.CustomContextMenu)
        self.list.setUniformItemSizes(True)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # long titles are elided
        self.list.setTextElideMode(Qt.ElideRight)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.new_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 4, 8)
        layout.setSpacing(6)
        layout.addLayout(top)
        layout.addWidget(self.search)
        layout.addWidget(self.list, 1)
        self._updating = False
        self.new_button.clicked.connect(self.newRequested)
        self.search.textChanged.connect(self.searchChanged)
        self.list.currentItemChanged.connect(self._current_changed)
        self.list.itemChanged.connect(self._item_changed)
        self.list.customContextMenuRequested.connect(self._menu)

    def set_conversations(self, rows: list[tuple[int, str, str]], current: int | None) -> None:
        self._updating = True
        try:
            self.list.clear()
            for conv_id, title, subtitle in rows:
                item = QListWidgetItem(title or "Untitled")
                item.setData(ID_ROLE, conv_id)
                item.setToolTip(subtitle)
                item.setFlags(item.flags() | Qt.ItemIsEditable)
                self.list.addItem(item)
                if conv_id == current:
                    self.list.setCurrentItem(item)
        finally:
            self._updating = False

    def current_id(self) -> int | None:
        item = self.list.currentItem()
        return None if item is None else item.data(ID_ROLE)

    def ids(self) -> list[int]:
        return [self.list.item(i).data(ID_ROLE) for i in range(self.list.count())]

    def _current_changed(self, item: QListWidgetItem | None, _prev) -> None:
        if not self._updating and item is not None:
            self.selected.emit(item.data(ID_ROLE))

    def _item_changed(self, item: QListWidgetItem) -> None:
        if not self._updating:
            self.renameRequested.emit(item.data(ID_ROLE), item.text().strip())

    def _menu(self, pos) -> None:
        item = self.list.itemAt(pos)
        if item is None:
            return
        conv_id = item.data(ID_ROLE)
        menu = QMenu(self)
        menu.addAction("Rename", lambda: self.list.editItem(item))
        menu.addAction("Export as Markdown…", lambda: self.exportRequested.emit(conv_id, "md"))
        menu.addAction("Export as JSON…", lambda: self.exportRequested.emit(conv_id, "json"))
        menu.addSeparator()
        menu.addAction("Delete", lambda: self._confirm_delete(conv_id, item.text()))
        menu.exec(self.list.viewport().mapToGlobal(pos))

    def _confirm_delete(self, conv_id: int, title: str) -> None:
        answer = QMessageBox.question(self, "Delete conversation",
                                      f"Delete “{title}”? This cannot be undone.")
        if answer == QMessageBox.Yes:
            self.deleteRequested.emit(conv_id)
