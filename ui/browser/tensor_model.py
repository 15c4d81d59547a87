"""Item models for the tensor directory: a flat table, a by-layer tree, and the sort/filter proxy.

Both models answer `SORT_ROLE` with raw values (ints for sizes and offsets, a natural-order
key for names, so blk.2 sorts before blk.10), which the proxy sorts on; `NAME_ROLE` is what the
filter box matches. `TENSOR_ROLE` gives the TensorInfo-like object of a row (None for groups).
"""

from __future__ import annotations

import re
from typing import Any

from PySide6.QtCore import (QAbstractItemModel, QAbstractTableModel, QModelIndex,
                            QSortFilterProxyModel, Qt)

from ui.browser.format import human_bytes, shape_text

SORT_ROLE = Qt.UserRole + 1
NAME_ROLE = Qt.UserRole + 2
TENSOR_ROLE = Qt.UserRole + 3

COLUMNS = ("Name", "Shape", "Type", "Elements", "Size", "Offset")
NUMERIC = {3, 4, 5}
_LAYER = re.compile(r"^blk\.(\d+)\.")
_DIGITS = re.compile(r"\d+")


def natural_key(name: str) -> str:
    """A string that sorts like the name with its numbers compared as numbers."""
    return _DIGITS.sub(lambda m: m.group().zfill(10), name)


def _cell(t: Any, col: int, role: int) -> Any:
    """Display / sort value of one tensor cell (t: anything with TensorInfo's fields)."""
    if role == Qt.DisplayRole:
        if col == 0:
            return t.name
        if col == 1:
            return shape_text(t.shape)
        if col == 2:
            return t.type_name
        if col == 3:
            return f"{t.n_elements:,}"
        if col == 4:
            return human_bytes(t.n_bytes)
        return f"0x{t.offset:x}"
    if role == SORT_ROLE:
        if col == 0:
            return natural_key(t.name)
        if col == 1:
            return "x".join(f"{d:012d}" for d in t.shape)
        if col == 2:
            return t.type_name
        if col == 3:
            return t.n_elements
        if col == 4:
            return t.n_bytes
        return t.offset
    if role == Qt.ToolTipRole:
        return (f"{t.name}\nshape {list(t.shape)}  ·  {t.type_name}\n{t.n_elements:,} values  ·  "
                f"{t.n_bytes:,} bytes\nfile offset {t.offset:,} (0x{t.offset:x})")
    if role == Qt.TextAlignmentRole and col in NUMERIC:
        return int(Qt.AlignRight | Qt.AlignVCenter)
    if role == NAME_ROLE:
        return t.name
    if role == TENSOR_ROLE:
        return t
    return None


def _header(section: int, orientation, role) -> Any:
    if orientation != Qt.Horizontal:
        return None
    if role == Qt.DisplayRole:
        return COLUMNS[section]
    if role == Qt.TextAlignmentRole and section in NUMERIC:
        return int(Qt.AlignRight | Qt.AlignVCenter)
    return None


class TensorTableModel(QAbstractTableModel):
    """One row per tensor, in file order."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._tensors: list = []

    def set_tensors(self, tensors: list) -> None:
        self.beginResetModel()
        self._tensors = list(tensors)
        self.endResetModel()

    def tensors(self) -> list:
        return self._tensors

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._tensors)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def data(self, index: QModelIndex, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        return _cell(self._tensors[index.row()], index.column(), role)

    def headerData(self, section: int, orientation, role=Qt.DisplayRole):
        return _header(section, orientation, role)


class _Group:
    __slots__ = ("name", "layer", "tensors", "row", "n_elements", "n_bytes", "offset")

    def __init__(self, name: str, layer: int, tensors: list, row: int):
        self.name, self.layer, self.tensors, self.row = name, layer, tensors, row
        self.n_elements = sum(t.n_elements for t in tensors)
        self.n_bytes = sum(t.n_bytes for t in tensors)
        self.offset = min(t.offset for t in tensors)


class TensorGroupModel(QAbstractItemModel):
    """Tensors grouped by layer: "blk.N" groups, plus one group for the rest (embeddings, output).

    A child index carries its group in internalPointer; a group index carries none.
    """

    OTHER = "non-layer"

    def __init__(self, parent=None):
        super().__init__(parent)
        self._groups: list[_Group] = []

    def set_tensors(self, tensors: list) -> None:
        self.beginResetModel()
        by_layer: dict[int, list] = {}
        other: list = []
        for t in tensors:
            m = _LAYER.match(t.name)
            if m:
                by_layer.setdefault(int(m.group(1)), []).append(t)
            else:
                other.append(t)
        groups: list[_Group] = []
        if other:
            groups.append(_Group(self.OTHER, -1, other, 0))
        for layer in sorted(by_layer):
            groups.append(_Group(f"blk.{layer}", layer, by_layer[layer], len(groups)))
        self._groups = groups
        self.endResetModel()

    def index(self, row: int, column: int, parent=QModelIndex()) -> QModelIndex:
        if not self.hasIndex(row, column, parent):
            return QModelIndex()
        if parent.isValid():
            return self.createIndex(row, column, self._groups[parent.row()])
        return self.createIndex(row, column)

    def parent(self, index=QModelIndex()) -> QModelIndex:  # noqa: A003 - Qt's name
        if not index.isValid():
            return QModelIndex()
        group = index.internalPointer()
        if group is None:
            return QModelIndex()
        return self.createIndex(group.row, 0)

    def rowCount(self, parent=QModelIndex()) -> int:
        if not parent.isValid():
            return len(self._groups)
        if parent.internalPointer() is None and parent.column() == 0:
            return len(self._groups[parent.row()].tensors)
        return 0

    def columnCount(self, parent=QModelIndex()) -> int:
        return len(COLUMNS)

    def data(self, index: QModelIndex, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        group = index.internalPointer()
        if group is not None:
            return _cell(group.tensors[index.row()], index.column(), role)
        g = self._groups[index.row()]
        col = index.column()
        if role == Qt.DisplayRole:
            if col == 0:
                return g.name
            if col == 1:
                return f"{len(g.tensors)} tensors"
            if col == 3:
                return f"{g.n_elements:,}"
            if col == 4:
                return human_bytes(g.n_bytes)
            if col == 5:
                return f"0x{g.offset:x}"
            return ""
        if role == SORT_ROLE:
            return (g.layer, len(g.tensors), "", g.n_elements, g.n_bytes, g.offset)[col]
        if role == Qt.TextAlignmentRole and col in NUMERIC:
            return int(Qt.AlignRight | Qt.AlignVCenter)
        if role == NAME_ROLE:
            return ""  # groups show only through matching children
        return None

    def headerData(self, section: int, orientation, role=Qt.DisplayRole):
        return _header(section, orientation, role)


class TensorFilterProxy(QSortFilterProxyModel):
    """Sorts on raw values and filters on tensor names (case-insensitive substring)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterRole(NAME_ROLE)
        self.setFilterKeyColumn(0)
        self.setFilterCaseSensitivity(Qt.CaseInsensitive)
        self.setRecursiveFilteringEnabled(True)
