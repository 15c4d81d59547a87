"""`AttentionPanel`: where the selected token looks, at every layer and head and up close.

Three tabs over one `AttentionView`: the layers × heads grid of the selected token's attention
rows (click a cell to choose a layer and head), the query × key matrix of the chosen layer
over a range of at most 512 tokens (one head, the mean of the heads, or the selected token's
row at every layer), and the head view. The app answers `layerHeadChosen` and
`rangeRequested` with a new `AttentionView` whose `matrix` covers that layer and range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QPushButton, QScrollArea,
                               QSpinBox, QTabWidget, QToolButton, QVBoxLayout, QWidget)

from ui.inspect.attention_views import HeadView, ModelGrid, head_label
from ui.inspect.model import AttentionView, TokenView
from ui.inspect.panel import InspectPanel, category_color, token_text
from ui.widgets.heatmap import HeatmapPlot, accent_pen

MAX_RANGE = 512
VIEW_MODES = ("head", "mean", "layers")  # the matrix tab's "Show" choices, in order


class AttentionPanel(InspectPanel):
    """Attention of the selected token. Signals: `layerHeadChosen(layer, head)` when the user
    picks a grid cell or changes layer/head; `rangeRequested(start, end)` (end exclusive,
    end - start ≤ 512) when the user asks for another range in the matrix."""

    DATA_KIND = "NumPy archive (*.npz)"
    layerHeadChosen = Signal(int, int)
    rangeRequested = Signal(int, int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Attention: select a token", parent)
        self._tokens: list[TokenView] = []
        self._view: AttentionView | None = None
        self._layer: int | None = None  # chosen by the user; the matrix shows view.matrix_layer
        self._head = 0
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.body.addWidget(self.tabs, 1)

        # (a) the grid
        self.grid = ModelGrid()
        self.grid.key_label = self._label
        self.grid.cellClicked.connect(self._on_grid_click)
        grid_scroll = QScrollArea()
        grid_scroll.setWidgetResizable(True)
        grid_scroll.setWidget(self.grid)
        self.tabs.addTab(grid_scroll, "Layers × heads")

        # (b) the matrix
        self.heatmap = HeatmapPlot()
        self.heatmap.set_titles(x="key (attended to)", y="query", colorbar="weight")
        self.heatmap.hover_text = self._hover_text
        self.heatmap.plot.getAxis("bottom").setStyle(tickTextWidth=40)
        self._overlays: list[pg.GraphicsObject] = []
        self.mode_box = QComboBox()
        self.mode_box.addItems(["One head", "Mean of heads", "Selected token, all layers"])
        self.mode_box.setToolTip("One head or the mean of the heads of the chosen layer over the "
                                 "range; or the selected token's row at every layer (head mean)")
        self.mode_box.currentIndexChanged.connect(self._show_matrix)
        self.layer_box = QComboBox()
        self.layer_box.setSizeAdjustPolicy(QComboBox.AdjustToContents)  # items come later
        self.layer_box.currentIndexChanged.connect(self._on_layer_box)
        self.head_box = QComboBox()
        self.head_box.setSizeAdjustPolicy(QComboBox.AdjustToContents)  # items come later
        self.head_box.currentIndexChanged.connect(self._on_head_box)
        self.range_start = QSpinBox()
        self.range_start.setPrefix("from #")
        self.range_len = QSpinBox()
        self.range_len.setRange(1, MAX_RANGE)
        self.range_len.setValue(128)
        self.range_len.setPrefix("tokens ")
        self.range_button = QPushButton("Show range")
        self.range_button.setToolTip(f"Compute the full matrix over at most {MAX_RANGE} tokens")
        self.range_button.clicked.connect(self._request_range)
        controls = QHBoxLayout()
        for w in (self.mode_box, self.head_box, self.range_start, self.range_len, self.range_button):
            controls.addWidget(w)
        controls.addStretch(1)
        self.matrix_note = QLabel("")
        matrix_tab = QWidget()
        mv = QVBoxLayout(matrix_tab)
        mv.setContentsMargins(0, 2, 0, 0)
        mv.addLayout(controls)
        mv.addWidget(self.matrix_note)
        mv.addWidget(self.heatmap, 1)
        self.tabs.addTab(matrix_tab, "Matrix")

        # (c) the head view
        self.head_view = HeadView()
        self.head_view.key_label = self._label
        self.head_buttons_row = QHBoxLayout()
        self.head_buttons_row.setSpacing(2)
        self.head_buttons_row.addStretch(1)
        self._head_buttons: list[QToolButton] = []
        head_scroll = QScrollArea()
        head_scroll.setWidgetResizable(True)
        head_scroll.setWidget(self.head_view)
        head_tab = QWidget()
        hv = QVBoxLayout(head_tab)
        hv.setContentsMargins(0, 2, 0, 0)
        # Many heads (16, 32) must not widen the panel: the toggles scroll sideways.
        buttons = QWidget()
        buttons.setLayout(self.head_buttons_row)
        self.head_buttons_row.setContentsMargins(0, 0, 0, 0)
        buttons_scroll = QScrollArea()
        buttons_scroll.setWidgetResizable(True)
        buttons_scroll.setFrameShape(QScrollArea.NoFrame)
        buttons_scroll.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        buttons_scroll.setWidget(buttons)
        buttons_scroll.setFixedHeight(buttons.sizeHint().height() + 30)
        hv.addWidget(buttons_scroll)
        hv.addWidget(head_scroll, 1)
        self.tabs.addTab(head_tab, "Head view")
        # The layer applies to the matrix and the head view: it sits by the tabs, not in one.
        self.layer_box.setToolTip("Layer shown in the matrix and the head view")
        self.tabs.setCornerWidget(self.layer_box, Qt.TopRightCorner)
        self.tabs.currentChanged.connect(lambda _i: self._update_caption())
        self._update_caption()

    # -- public -------------------------------------------------------------------------------

    def set_tokens(self, tokens: list[TokenView]) -> None:
        """Token texts for the axes, labels and tooltips."""
        self._tokens = list(tokens)
        self.range_start.setRange(0, max(0, len(self._tokens) - 1))
        self.grid.update()
        self.head_view.update()
        if self._view is not None:
            self._show_matrix()

    def set_attention(self, view: AttentionView | None) -> None:
        self._view = view
        if view is None:
            self.grid.set_data([], 0, [], [], [])
            self.head_view.set_data(None, 0, None)
            self.heatmap.clear_image()
            self._update_caption()
            return
        n_layers = len(view.rows)
        n_heads = view.rows[0].shape[0] if n_layers else 0
        if self._layer is None or not 0 <= self._layer < n_layers:
            self._layer = view.matrix_layer
        if not 0 <= self._head < n_heads:
            self._head = 0
        self._fill_boxes(n_layers, n_heads, view.kv_head)
        self._make_head_buttons(n_heads, view.kv_head)
        self.grid.set_data(view.rows, view.query, view.window, view.layer_kind, view.kv_head,
                           view.sink)
        self.grid.set_chosen(self._layer, self._head)
        if view.matrix is not None:
            self.range_start.setMaximum(max(self.range_start.maximum(), view.range_start))
            self.range_start.setValue(view.range_start)
            self.range_len.setValue(min(MAX_RANGE, max(1, view.matrix.shape[1])))
        self._show_head_view()
        self._show_matrix()

    def set_layer_head(self, layer: int, head: int) -> None:
        """Choose the layer and head shown in the matrix and head view (no signal)."""
        self._layer, self._head = layer, head
        self.grid.set_chosen(layer, head)
        for box, value in ((self.layer_box, layer), (self.head_box, head)):
            box.blockSignals(True)
            box.setCurrentIndex(value)
            box.blockSignals(False)
        self._show_head_view()
        self._show_matrix()

    def layer_head(self) -> tuple[int, int]:
        return (self._layer if self._layer is not None else 0), self._head

    def set_view_mode(self, mode: str) -> None:
        """The matrix tab shows "head", "mean" (of the heads) or "layers" (selected token)."""
        self.mode_box.setCurrentIndex(VIEW_MODES.index(mode))

    def matrix_image(self) -> np.ndarray | None:
        """The array the large heatmap shows (rows = queries or layers, columns = keys)."""
        return self.heatmap.image_data()

    def export_data(self, path: str | Path) -> None:
        """NPZ: query, rows [L, H, K] (rows_0.. when layers differ in shape; zeros for a
        "conv" layer), window (-1 = global), kv_head, layer_kind, matrix_layer, range_start,
        layer and head (the user's choice), matrix [H, R, R] and sink [L, H] when present, and
        `shown`, the large map as drawn."""
        v = self._view
        if v is None:
            raise ValueError("no attention to export")
        same = len({r.shape for r in v.rows}) == 1
        rows = {"rows": np.stack(v.rows)} if same else {f"rows_{i}": r for i, r in enumerate(v.rows)}
        arrays = dict(query=v.query, **rows, kv_head=np.asarray(v.kv_head),
                      window=np.asarray([-1 if w is None else w for w in v.window]),
                      layer_kind=np.asarray(v.layer_kind), matrix_layer=v.matrix_layer,
                      range_start=v.range_start, layer=self._layer, head=self._head)
        if v.matrix is not None:
            arrays["matrix"] = v.matrix
        if v.sink is not None:
            arrays["sink"] = v.sink
        if self.matrix_image() is not None:
            arrays["shown"] = self.matrix_image()
        np.savez_compressed(path, **arrays)

    # -- internals ----------------------------------------------------------------------------

    def _label(self, j: int) -> str:
        if 0 <= j < len(self._tokens):
            t = self._tokens[j]
            return f"#{j} {token_text(t.text, t.id)[:16]}"
        return f"#{j}"

    def _fill_boxes(self, n_layers: int, n_heads: int, kv_head: list[int]) -> None:
        v = self._view
        for box, items, value in (
                (self.layer_box, [f"layer {i}" + {"mla": " (MLA)", "conv": " (conv, no attention)"
                                                  }.get(v.layer_kind[i], "")
                                  for i in range(n_layers)], self._layer),
                (self.head_box, [head_label(h, kv_head) for h in range(n_heads)], self._head)):
            box.blockSignals(True)
            if box.count() != len(items) or [box.itemText(i) for i in range(box.count())] != items:
                box.clear()
                box.addItems(items)
            box.setCurrentIndex(value)
            box.blockSignals(False)

    def _make_head_buttons(self, n_heads: int, kv_head: list[int]) -> None:
        if len(self._head_buttons) == n_heads:
            return
        for b in self._head_buttons:
            self.head_buttons_row.removeWidget(b)
            b.deleteLater()
        self._head_buttons = []
        for h in range(n_heads):
            b = QToolButton()
            b.setText(f"h{h}")
            pm = QPixmap(10, 10)
            pm.fill(category_color(h))
            b.setIcon(QIcon(pm))
            b.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
            b.setCheckable(True)
            b.setChecked(True)
            b.setToolTip(f"Show or hide the lines of {head_label(h, kv_head)}")
            b.toggled.connect(self._on_head_toggle)
            self.head_buttons_row.insertWidget(h, b)
            self._head_buttons.append(b)
        self.head_view.set_heads_enabled(set(range(n_heads)))

    def set_heads_shown(self, heads: set[int]) -> None:
        """Heads drawn in the head view (the toggles follow)."""
        for h, b in enumerate(self._head_buttons):
            b.blockSignals(True)
            b.setChecked(h in heads)
            b.blockSignals(False)
        self.head_view.set_heads_enabled(heads)

    def _on_head_toggle(self, _checked: bool) -> None:
        self.head_view.set_heads_enabled({h for h, b in enumerate(self._head_buttons) if b.isChecked()})

    def _on_grid_click(self, layer: int, head: int) -> None:
        self.set_layer_head(layer, head)
        self.tabs.setCurrentIndex(1)
        self.layerHeadChosen.emit(layer, head)

    def _on_layer_box(self, i: int) -> None:
        if i >= 0 and i != self._layer:
            self.set_layer_head(i, self._head)
            self.layerHeadChosen.emit(self._layer, self._head)

    def _on_head_box(self, i: int) -> None:
        if i >= 0 and i != self._head:
            self.set_layer_head(self._layer, i)
            self.layerHeadChosen.emit(self._layer, self._head)

    def _request_range(self) -> None:
        start = self.range_start.value()
        end = min(start + self.range_len.value(), max(len(self._tokens), start + 1))
        self.rangeRequested.emit(start, end)

    def _show_head_view(self) -> None:
        v = self._view
        if (v is None or self._layer is None or not 0 <= self._layer < len(v.rows)
                or not self._has_attention(self._layer)):
            self.head_view.set_data(None, 0, None)
        else:
            self.head_view.set_data(v.rows[self._layer], v.query, v.window[self._layer])
        self._update_caption()

    def _has_attention(self, layer: int) -> bool:
        v = self._view
        return v is not None and not (layer < len(v.layer_kind) and v.layer_kind[layer] == "conv")

    def _clear_overlays(self) -> None:
        for item in self._overlays:
            self.heatmap.plot.removeItem(item)
        self._overlays = []

    def _overlay(self, item: pg.GraphicsObject) -> None:
        self.heatmap.plot.addItem(item, ignoreBounds=True)
        self._overlays.append(item)

    def _show_matrix(self) -> None:
        self._clear_overlays()
        v = self._view
        mode = VIEW_MODES[self.mode_box.currentIndex()]
        self.head_box.setEnabled(mode == "head")
        if v is None or not v.rows:
            self.heatmap.clear_image()
            return
        if mode == "layers":
            img = np.stack([r.mean(axis=0) for r in v.rows])  # [L, K]
            self.heatmap.set_image(img, QRectF(0, 0, img.shape[1], img.shape[0]))
            self.heatmap.set_axis_labels([self._label(j) for j in range(img.shape[1])],
                                         [f"L{i}" for i in range(img.shape[0])])
            self.heatmap.set_titles(x="key (attended to)", y="layer")
            conv = [i for i in range(len(v.rows)) if not self._has_attention(i)]
            self.matrix_note.setText(f"#{v.query}'s attention at every layer, mean of the heads"
                                     + (f" (conv layers {', '.join(map(str, conv))} have none: "
                                        "blank rows)" if conv else ""))
            self._update_caption()
            return
        self.heatmap.set_titles(x="key (attended to)", y="query")
        if self._layer is not None and not self._has_attention(self._layer):
            self.heatmap.clear_image()
            self.matrix_note.setText(f"Layer {self._layer} is a short convolution (no attention): "
                                     "choose an attention layer")
            self._update_caption()
            return
        if v.matrix is None:
            self.heatmap.clear_image()
            self.matrix_note.setText("No matrix yet: choose a range and press Show range")
            self._update_caption()
            return
        img = v.matrix[self._head] if mode == "head" else v.matrix.mean(axis=0)  # [R, R]
        s, n = v.range_start, img.shape[0]
        self.heatmap.set_image(img, QRectF(s, s, n, n), levels=(0.0, max(1e-6, float(img.max()))))
        labels = [self._label(j) for j in range(s, s + n)]
        self.heatmap.set_axis_labels(labels, labels, s, s)
        if s <= v.query < s + n:  # outline the selected token's row
            q = v.query
            self._overlay(pg.PlotCurveItem([s, s + n, s + n, s, s], [q, q, q + 1, q + 1, q],
                                           pen=accent_pen(self, 2)))
        window = v.window[v.matrix_layer]
        note = f"layer {v.matrix_layer}"
        if window and n >= window:
            # Keys left of this line are outside the sliding window of the query on that row.
            self._overlay(pg.PlotCurveItem([s - window + 1, s + n - window + 1], [s, s + n],
                                           pen=accent_pen(self, 1.5, Qt.DashLine)))
            note += f", sliding window {window} (dashed line: window start)"
        elif window:  # the line would lie left of the range: no key here is outside the window
            note += f", sliding window {window} (wider than this range: every key is in it)"
        if v.layer_kind[v.matrix_layer] == "mla":
            note += ", MLA"
        note += (f", {head_label(self._head, v.kv_head)}" if mode == "head" else ", mean of the heads")
        note += f", tokens #{s}–#{s + n - 1}"
        if self._layer != v.matrix_layer:
            note += f" (layer {self._layer} requested)"
        self.matrix_note.setText(note)
        self._update_caption()

    def _hover_text(self, row: int, col: int, value: float) -> str:
        v = self._view
        if v is None:
            return ""
        if VIEW_MODES[self.mode_box.currentIndex()] == "layers":
            return f"layer {row}: #{v.query} → {self._label(col)}: {value:.4f}"
        s = v.range_start
        return f"{self._label(s + row)} → {self._label(s + col)}: {value:.4f}"

    def _update_caption(self) -> None:
        v = self._view
        if v is None:
            self.set_caption("Attention: select a token to see where it looks")
            return
        q = self._label(v.query)
        tab = self.tabs.currentIndex()
        if tab == 0:
            extra = ""
            if "conv" in v.layer_kind:
                extra += "; greyed rows are convolution layers (no attention)"
            if v.sink is not None:
                extra += ("; the bar under a cell is the share of attention on the head's sink "
                          f"(mean {100 * float(np.mean(v.sink)):.0f}%)")
            self.set_caption(f"Attention of {q} over earlier tokens: one strip per layer and head, "
                             "each scaled to its own maximum; hatched keys are outside a sliding "
                             f"window{extra}; click a cell for its matrix")
        elif tab == 1:
            self.set_caption(f"Attention matrix: queries × keys (row = who looks, column = at what); "
                             f"selected {q} outlined")
        else:
            layer = self._layer if self._layer is not None else v.matrix_layer
            kind = v.layer_kind[layer] if layer < len(v.layer_kind) else ""
            if kind == "conv":
                self.set_caption(f"Head view: layer {layer} is a short convolution, no attention "
                                 "to draw; choose an attention layer")
                return
            extra = (f", sliding window {v.window[layer]}" if kind == "sliding" else
                     ", MLA" if kind == "mla" else "")
            self.set_caption(f"Head view, layer {layer}{extra}: lines from {q} to the keys it "
                             f"attends to (the strongest 24 when more), width = weight, a colour per head")
