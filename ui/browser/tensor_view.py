"""The tensor directory: filter box, group-by-layer switch and a sortable table (or tree)."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QHBoxLayout, QHeaderView, QLabel,
                               QLineEdit, QTreeView, QVBoxLayout, QWidget)

from ui.browser.format import human_bytes
from ui.browser.tensor_model import (TENSOR_ROLE, TensorFilterProxy, TensorGroupModel,
                                     TensorTableModel)


class TensorListView(QWidget):
    tensor_selected = Signal(object)  # the TensorInfo of the current row

    def __init__(self, parent=None):
        super().__init__(parent)
        self.table_model = TensorTableModel(self)
        self.group_model = TensorGroupModel(self)
        self.proxy = TensorFilterProxy(self)
        self.proxy.setSourceModel(self.table_model)

        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter by name, e.g. blk.3. or attn_q")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._on_filter)
        self.group = QCheckBox("Group by layer")
        self.group.toggled.connect(self.set_grouped)
        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        top.addWidget(self.group)

        self.view = QTreeView()
        self.view.setModel(self.proxy)
        self.view.setRootIsDecorated(False)
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(-1, Qt.AscendingOrder)  # file order until a header is clicked
        self.view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.view.setAllColumnsShowFocus(True)
        self.view.setTextElideMode(Qt.ElideMiddle)  # keep both the layer and the tensor kind
        header = self.view.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        fm = self.fontMetrics()
        widths = {1: "262144 × 640", 2: "Q4_K", 3: "167,772,160", 4: "999.99 MiB",
                  5: "0x12345678"}
        for col, sample in widths.items():
            header.setSectionResizeMode(col, QHeaderView.Interactive)
            self.view.setColumnWidth(col, fm.horizontalAdvance(sample) + 18)
        header.setMinimumSectionSize(fm.horizontalAdvance("Type") + 24)
        self.view.selectionModel().currentChanged.connect(self._on_current)
        self.count = QLabel("")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.count)
        self._tensors: list = []
        self.proxy.rowsInserted.connect(self._update_count)
        self.proxy.rowsRemoved.connect(self._update_count)
        self.proxy.modelReset.connect(self._update_count)
        self.proxy.layoutChanged.connect(self._update_count)

    # -- public -------------------------------------------------------------------------------

    def set_tensors(self, tensors: list) -> None:
        self._tensors = list(tensors)
        self.table_model.set_tensors(self._tensors)
        self.group_model.set_tensors(self._tensors)
        if self.group.isChecked():
            self.view.expandAll()
        self._update_count()

    def clear(self) -> None:
        self.set_tensors([])

    def set_grouped(self, grouped: bool) -> None:
        if self.group.isChecked() != grouped:
            self.group.setChecked(grouped)  # re-enters through toggled
            return
        current = self.current_tensor()
        self.proxy.setSourceModel(self.group_model if grouped else self.table_model)
        self.view.setRootIsDecorated(grouped)
        if grouped:
            self.view.expandAll()
        if current is not None:
            self.select_tensor(current.name)
        self._update_count()

    def current_tensor(self):
        return self.view.currentIndex().data(TENSOR_ROLE)

    def select_tensor(self, name: str) -> bool:
        """Make the row of tensor `name` current (emits tensor_selected); False if not shown."""
        idx = self._find(name, QModelIndex())
        if idx is None:
            return False
        self.view.setCurrentIndex(idx)
        self.view.scrollTo(idx)
        return True

    def visible_names(self) -> list[str]:
        """Tensor names in view order (for tests and copy-out)."""
        names: list[str] = []

        def walk(parent: QModelIndex) -> None:
            for row in range(self.proxy.rowCount(parent)):
                idx = self.proxy.index(row, 0, parent)
                t = idx.data(TENSOR_ROLE)
                if t is not None:
                    names.append(t.name)
                walk(idx)
        walk(QModelIndex())
        return names

    # -- internals ----------------------------------------------------------------------------

    def _find(self, name: str, parent: QModelIndex):
        for row in range(self.proxy.rowCount(parent)):
            idx = self.proxy.index(row, 0, parent)
            t = idx.data(TENSOR_ROLE)
            if t is not None and t.name == name:
                return idx
            hit = self._find(name, idx)
            if hit is not None:
                return hit
        return None

    def _on_filter(self, text: str) -> None:
        self.proxy.setFilterFixedString(text)
        if self.group.isChecked():
            self.view.expandAll()
        self._update_count()

    def _on_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        t = current.data(TENSOR_ROLE)
        if t is not None:
            self.tensor_selected.emit(t)

    def _update_count(self, *args) -> None:
        total = len(self._tensors)
        if not total:
            self.count.setText("")
            return
        size = human_bytes(sum(t.n_bytes for t in self._tensors))
        shown = len(self.visible_names()) if self.filter.text() else total
        if shown == total:
            self.count.setText(f"{total:,} tensors · {size}")
        else:
            self.count.setText(f"{shown:,} of {total:,} tensors match")


__all__ = ["TensorListView"]
