"""The model summary: a title and a two-column label → value table, filled from plain rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableView, QVBoxLayout, QWidget


def display_text(value: Any) -> str:
    """Generic rendering for values of a summary dict (numbers, lists, nested dicts)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {display_text(v)}" for k, v in value.items()) or "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(display_text(v) for v in value) or "—"
    return str(value)


class KeyValueModel(QAbstractTableModel):
    COLUMNS = ("Property", "Value")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._rows: list[tuple[str, str]] = []

    def set_rows(self, rows: Iterable[tuple[str, Any]]) -> None:
        self.beginResetModel()
        self._rows = [(str(k), v if isinstance(v, str) else display_text(v)) for k, v in rows]
        self.endResetModel()

    def rows(self) -> list[tuple[str, str]]:
        return list(self._rows)

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else 2

    def data(self, index: QModelIndex, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        if role in (Qt.DisplayRole, Qt.ToolTipRole):
            return self._rows[index.row()][index.column()]
        if role == Qt.FontRole and index.column() == 0:
            f = QFont()
            f.setBold(True)
            return f
        return None

    def headerData(self, section: int, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return self.COLUMNS[section]
        return None


class SummaryView(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel("No file open")
        f = self.title.font()
        f.setPointSizeF(f.pointSizeF() * 1.5)
        f.setBold(True)
        self.title.setFont(f)
        self.subtitle = QLabel("")
        self.subtitle.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.subtitle.setWordWrap(True)
        self.model = KeyValueModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().hide()
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.model.modelReset.connect(self.table.resizeRowsToContents)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 14, 16, 12)
        layout.setSpacing(6)
        layout.addWidget(self.title)
        layout.addWidget(self.subtitle)
        layout.addWidget(self.table, 1)

    def set_summary(self, title: str, subtitle: str, rows: Iterable[tuple[str, Any]]) -> None:
        self.title.setText(title)
        self.subtitle.setText(subtitle)
        self.model.set_rows(rows)

    def clear(self) -> None:
        self.set_summary("No file open", "", [])
