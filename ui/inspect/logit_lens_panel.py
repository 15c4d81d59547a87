"""`LogitLensPanel`: what each layer would predict at one position (the logit lens), as a table.

`LensTableModel` adapts a `LensView` to Qt: one row per layer, one column per candidate (text
and probability, background shaded by probability, the token that actually came next in bold
on a highlighted cell), and a last column with that token's rank at the layer. The app computes
the lens on demand, so the panel has a busy state.
"""

from __future__ import annotations

import csv
from pathlib import Path

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QPalette
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableView, QWidget

from ui.inspect.model import LensView
from ui.inspect.panel import InspectPanel, heat_color, tint, token_text

ProbRole = Qt.UserRole + 1  # float probability of a candidate cell
IdRole = Qt.UserRole + 2  # token id of a candidate cell

_Index = QModelIndex | QPersistentModelIndex


def percent(prob: float) -> str:
    """Short enough for a narrow cell: '62%', '5.8%', '0.3%', '<0.1%'."""
    pct = 100 * prob
    if pct >= 9.95:
        return f"{pct:.0f}%"
    return f"{pct:.1f}%" if pct >= 0.05 else "<0.1%"


class LensTableModel(QAbstractTableModel):
    """Rows = layers, columns = top-1..top-k and (when known) the chosen token's rank."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._lens: LensView | None = None
        self._palette = QPalette()

    def set_lens(self, lens: LensView | None) -> None:
        self.beginResetModel()
        self._lens = lens
        self.endResetModel()

    def lens(self) -> LensView | None:
        return self._lens

    def set_palette(self, palette: QPalette) -> None:
        self._palette = QPalette(palette)
        if self.rowCount() and self.columnCount():
            self.dataChanged.emit(self.index(0, 0),
                                  self.index(self.rowCount() - 1, self.columnCount() - 1))

    def k(self) -> int:
        return 0 if self._lens is None else int(self._lens.ids.shape[1])

    def has_rank(self) -> bool:
        return self._lens is not None and self._lens.chosen_rank is not None

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if self._lens is None or parent.isValid() else int(self._lens.ids.shape[0])

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        if self._lens is None or parent.isValid():
            return 0
        return self.k() + (1 if self.has_rank() else 0)

    def data(self, index: _Index, role: int = Qt.DisplayRole):
        if not index.isValid() or self._lens is None:
            return None
        lens, row, col = self._lens, index.row(), index.column()
        if col == self.k():  # the rank column
            rank = lens.chosen_rank[row]
            if role == Qt.DisplayRole:
                return str(rank + 1)
            if role == Qt.UserRole:
                return int(rank)
            if role == Qt.TextAlignmentRole:
                return int(Qt.AlignCenter)
            if role == Qt.ToolTipRole:
                return f"layer {row}: the token that came next ranks {rank + 1}"
            return None
        tid, prob, text = int(lens.ids[row, col]), float(lens.probs[row, col]), lens.texts[row][col]
        chosen = lens.chosen_id is not None and tid == lens.chosen_id
        if role == Qt.DisplayRole:
            return f"{token_text(text, tid)} {percent(prob)}"
        if role == ProbRole:
            return prob
        if role == IdRole:
            return tid
        if role == Qt.ToolTipRole:
            return f"layer {row}, rank {col + 1}: {text!r} (id {tid}) p = {prob:.4g}" + (
                "\nthe token that actually came next" if chosen else "")
        if role == Qt.BackgroundRole:
            if chosen:
                return QBrush(tint(self._palette, QColor(90, 190, 90), 0.35 + 0.5 * prob))
            return QBrush(heat_color(self._palette, prob))
        if role == Qt.FontRole and chosen:
            f = QFont()
            f.setBold(True)
            return f
        return None

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.DisplayRole):  # noqa: N802
        if (role == Qt.ToolTipRole and orientation == Qt.Horizontal and section == self.k()
                and self.has_rank()):
            return "Rank, at each layer, of the token that actually came next"
        if role != Qt.DisplayRole:
            return None
        if orientation == Qt.Vertical:
            return f"layer {section}"
        return "chosen rank" if section == self.k() else f"top {section + 1}"


class LogitLensPanel(InspectPanel):
    """Logit lens at one position (no signals: the app computes, the panel shows)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Logit lens: select a token", parent)
        self.model = LensTableModel(self)
        self.model.set_palette(self.palette())
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.Stretch)
        # A candidate needs room for a short word and its percentage; when ten do not fit,
        # the table scrolls sideways instead of eliding every cell to "·Par…".
        header.setMinimumSectionSize(self.fontMetrics().horizontalAdvance("·Paris· 100%") + 10)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.busy_label = QLabel("Computing the logit lens…")
        self.busy_label.setVisible(False)
        self.body.addWidget(self.busy_label)
        self.body.addWidget(self.table, 1)

    def restyle(self) -> None:
        self.model.set_palette(self.palette())

    def set_lens(self, lens: LensView | None) -> None:
        self.set_busy(False)
        self.model.set_lens(lens)
        if self.model.has_rank():
            # Candidates share the width; the narrow rank column keeps its header readable.
            self.table.horizontalHeader().setSectionResizeMode(self.model.k(),
                                                               QHeaderView.ResizeToContents)
        if lens is None:
            self.set_caption("Logit lens: select a token")
            return
        chosen = ""
        if lens.chosen_id is not None:
            row = next(((r, c) for r in range(lens.ids.shape[0]) for c in range(lens.ids.shape[1])
                        if lens.ids[r, c] == lens.chosen_id), None)
            text = lens.texts[row[0]][row[1]] if row else str(lens.chosen_id)
            chosen = f"; bold green: the token that came next ({token_text(text, lens.chosen_id)})"
        self.set_caption(f"Logit lens at #{lens.position}: each layer's residual stream decoded by "
                         f"the output head, top {lens.ids.shape[1]} per layer, shaded by probability{chosen}")

    def set_busy(self, busy: bool) -> None:
        """While the app computes the lens: a 'computing…' line, the old table greyed out."""
        self.busy_label.setVisible(busy)
        self.table.setEnabled(not busy)
        if busy:
            self.set_caption("Logit lens: computing…")

    def is_busy(self) -> bool:
        return self.busy_label.isVisibleTo(self)

    def export_data(self, path: str | Path) -> None:
        """CSV, one row per layer and candidate: layer, rank (1-based), id, text, prob, chosen,
        chosen_rank (1-based rank of the next token at that layer; empty when unknown)."""
        lens = self.model.lens()
        if lens is None:
            raise ValueError("no logit lens to export")
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["layer", "rank", "id", "text", "prob", "chosen", "chosen_rank"])
            for layer in range(lens.ids.shape[0]):
                cr = "" if lens.chosen_rank is None else lens.chosen_rank[layer] + 1
                for r in range(lens.ids.shape[1]):
                    tid = int(lens.ids[layer, r])
                    w.writerow([layer, r + 1, tid, lens.texts[layer][r], float(lens.probs[layer, r]),
                                int(tid == lens.chosen_id), cr])
