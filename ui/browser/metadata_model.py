"""Item models for GGUF metadata: a key tree grouped by dotted prefix, and a lazy array list.

The tree never holds array items: an array key shows its length and first items, and the
`ArrayItemsModel` (shown beside the tree) pages through the items with canFetchMore/fetchMore
and filters them by substring without ever building one row per item up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractItemModel, QAbstractTableModel, QModelIndex, Qt

from ui.browser.format import number, value_preview, visible

KEY_ROLE = Qt.UserRole + 1      # full dotted key of a leaf (None for pure groups)
SEARCH_ROLE = Qt.UserRole + 2   # text the filter box matches: full key and value preview


class _Node:
    __slots__ = ("name", "key", "type_name", "value", "children", "parent", "row", "preview")

    def __init__(self, name: str, parent: "_Node | None", row: int):
        self.name = name
        self.key: str | None = None  # set when a metadata key ends at this node
        self.type_name = ""
        self.value: Any = None
        self.preview = ""
        self.children: list[_Node] = []
        self.parent = parent
        self.row = row  # stored, never recomputed with list.index

    def child(self, name: str) -> "_Node":
        for c in self.children:  # groups are small (tens of children)
            if c.name == name:
                return c
        node = _Node(name, self, len(self.children))
        self.children.append(node)
        return node

    def path(self) -> str:
        parts = []
        node: _Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return ".".join(reversed(parts))


class MetadataTreeModel(QAbstractItemModel):
    COLUMNS = ("Key", "Type", "Value")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._root = _Node("", None, 0)

    def set_metadata(self, metadata: dict[str, Any], types: dict[str, str]) -> None:
        self.beginResetModel()
        root = _Node("", None, 0)
        for key, value in metadata.items():
            node = root
            for part in key.split("."):
                node = node.child(part)
            node.key = key
            node.type_name = types.get(key, type(value).__name__)
            node.value = value
            node.preview = value_preview(value, node.type_name)
        self._root = root
        self.endResetModel()

    def clear(self) -> None:
        self.set_metadata({}, {})

    def entry(self, index: QModelIndex) -> tuple[str, str, Any] | None:
        """(key, type name, raw value) of a source index; None for a pure group."""
        node = self._node(index)
        if not index.isValid() or node.key is None:
            return None
        return node.key, node.type_name, node.value

    # -- Qt model interface -------------------------------------------------------------------

    def _node(self, index: QModelIndex) -> _Node:
        return index.internalPointer() if index.isValid() else self._root

    def index(self, row: int, column: int, parent=QModelIndex()) -> QModelIndex:
        if not self.hasIndex(row, column, parent):
            return QModelIndex()
        return self.createIndex(row, column, self._node(parent).children[row])

    def parent(self, index=QModelIndex()) -> QModelIndex:  # noqa: A003 - Qt's name
        if not index.isValid():
            return QModelIndex()
        p = index.internalPointer().parent
        if p is None or p is self._root:
            return QModelIndex()
        return self.createIndex(p.row, 0, p)

    def rowCount(self, parent=QModelIndex()) -> int:
        if parent.isValid() and parent.column() != 0:
            return 0
        return len(self._node(parent).children)

    def columnCount(self, parent=QModelIndex()) -> int:
        return len(self.COLUMNS)

    def headerData(self, section: int, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return self.COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        node: _Node = index.internalPointer()
        col = index.column()
        if role == Qt.DisplayRole:
            if col == 0:
                return node.name
            if col == 1:
                return node.type_name
            if node.key is None:
                n = len(node.children)
                return f"{n} key" if n == 1 else f"{n} keys"
            return node.preview
        if role == Qt.ToolTipRole:
            if node.key is None:
                return node.path()
            if isinstance(node.value, str):
                text = node.value if len(node.value) < 2000 else node.value[:2000] + " …"
                return f"{node.key}\n\n{text}"
            return f"{node.key} ({node.type_name})"
        if role == KEY_ROLE:
            return node.key
        if role == SEARCH_ROLE:
            return f"{node.path()} {node.preview}"
        return None

    def flags(self, index: QModelIndex):
        if not index.isValid():
            return Qt.NoItemFlags
        return Qt.ItemIsEnabled | Qt.ItemIsSelectable


class ArrayItemsModel(QAbstractTableModel):
    """Rows (index, value) of one metadata array, fetched lazily, with a substring filter."""

    COLUMNS = ("#", "Value")
    BATCH = 1000

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items: list | np.ndarray = []
        self._type = ""
        self._rows: np.ndarray = np.zeros(0, dtype=np.int64)  # item indices passing the filter
        self._loaded = 0
        self._haystack: list[str] | None = None  # lowercased texts, built on first filter
        # Views ask to fetch more from inside their modelReset slot; rows inserted there would
        # land in the middle of the reset (qtmodeltester flags it). The first batch is loaded
        # with the reset anyway, so requests during it are declined.
        self._resetting = False

    def beginResetModel(self) -> None:  # noqa: N802 - Qt's name
        self._resetting = True
        super().beginResetModel()

    def endResetModel(self) -> None:  # noqa: N802
        try:
            super().endResetModel()
        finally:
            self._resetting = False

    def set_array(self, items: Sequence | np.ndarray, type_name: str = "") -> None:
        self.beginResetModel()
        self._items = items
        self._type = type_name[6:-1] if type_name.startswith("array[") else ""
        self._haystack = None
        self._rows = np.arange(len(items), dtype=np.int64)
        self._loaded = min(self.BATCH, len(self._rows))
        self.endResetModel()

    def set_filter(self, text: str) -> None:
        self.beginResetModel()
        if not text:
            self._rows = np.arange(len(self._items), dtype=np.int64)
        else:
            if self._haystack is None:
                self._haystack = self._build_haystack()
            needle = text.lower()
            self._rows = np.fromiter((i for i, s in enumerate(self._haystack) if needle in s),
                                     dtype=np.int64)
        self._loaded = min(self.BATCH, len(self._rows))
        self.endResetModel()

    def _build_haystack(self) -> list[str]:
        # Vectorised where possible: a 262k-entry vocabulary must filter in tens of ms, since
        # this runs on the GUI thread. Strings match on their raw text (case-insensitive).
        items = self._items
        if isinstance(items, np.ndarray) and items.dtype.kind in "iuf":
            return items.astype(str).tolist()  # numpy's shortest repr, as number() shows
        if items and all(isinstance(v, str) for v in items[:64]):
            return [v.lower() if isinstance(v, str) else self._text(v).lower() for v in items]
        return [self._text(v).lower() for v in items]

    @property
    def total_matches(self) -> int:
        return len(self._rows)

    def item_index(self, row: int) -> int:
        return int(self._rows[row])

    def _text(self, v: Any) -> str:
        return visible(v) if isinstance(v, str) else number(v, self._type)

    # -- Qt model interface -------------------------------------------------------------------

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else self._loaded

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else 2

    def canFetchMore(self, parent=QModelIndex()) -> bool:
        return not (parent.isValid() or self._resetting) and self._loaded < len(self._rows)

    def fetchMore(self, parent=QModelIndex()) -> None:
        if parent.isValid() or self._resetting:
            return
        n = min(self.BATCH, len(self._rows) - self._loaded)
        if n <= 0:
            return
        self.beginInsertRows(QModelIndex(), self._loaded, self._loaded + n - 1)
        self._loaded += n
        self.endInsertRows()

    def headerData(self, section: int, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return self.COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role=Qt.DisplayRole):
        if not index.isValid() or index.row() >= self._loaded:
            return None
        i = int(self._rows[index.row()])
        if role == Qt.DisplayRole:
            return str(i) if index.column() == 0 else self._text(self._items[i])
        if role == Qt.TextAlignmentRole and index.column() == 0:
            return int(Qt.AlignRight | Qt.AlignVCenter)
        if role == Qt.ToolTipRole and index.column() == 1:
            v = self._items[i]
            return repr(v) if isinstance(v, str) else None
        return None


__all__ = ["MetadataTreeModel", "ArrayItemsModel", "KEY_ROLE", "SEARCH_ROLE"]
