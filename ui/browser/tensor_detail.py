"""One tensor up close: its facts, value statistics, a histogram and a heatmap (pyqtgraph).

The view only displays what it is given: `show_tensor(info)` when a tensor is picked,
`set_progress` while a worker dequantizes it, then `show_analysis(result)` with plain numpy
data (duck-typed: stats(), hist_edges, hist_counts, image, row/col factors, rows, cols).
Cancel/Analyse are requests sent out as signals; the app decides what to run.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (QCheckBox, QComboBox, QGridLayout, QHBoxLayout, QLabel,
                               QProgressBar, QPushButton, QSpinBox, QSplitter, QStackedWidget,
                               QVBoxLayout, QWidget)

from ui.browser.format import human_bytes, shape_text, stat_text
from ui.widgets.heatmap import HeatmapPlot
from ui.widgets.heatmap import style_plot as _style_plot

SLICE_ROWS = 256  # rows shown unpooled in "Rows" mode
MAX_BOUNDARY_LINES = 64  # expert/slab separators drawn on stacked 3-D tensors

STAT_LABELS = (("min", "Min"), ("max", "Max"), ("mean", "Mean"), ("std", "Std"),
               ("zeros", "Zeros"), ("non-finite", "Non-finite"))


def _accent(widget: QWidget) -> QColor:
    return widget.palette().color(QPalette.Highlight)


class TensorDetailView(QWidget):
    cancel_requested = Signal()
    analyse_requested = Signal(object)  # the TensorInfo to (re)analyse
    slice_requested = Signal(object, int, int)  # TensorInfo, first row, number of rows

    def __init__(self, parent=None):
        super().__init__(parent)
        self._info = None
        self._result = None  # the last complete analysis of self._info
        self._boundaries: list[pg.InfiniteLine] = []
        self._hist: tuple[np.ndarray, np.ndarray] | None = None
        self.title = QLabel("Select a tensor to see its values")
        f = self.title.font()
        f.setPointSizeF(f.pointSizeF() * 1.25)
        f.setBold(True)
        self.title.setFont(f)
        self.title.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.facts = QLabel("")
        self.facts.setTextInteractionFlags(Qt.TextSelectableByMouse)

        grid = QGridLayout()
        grid.setHorizontalSpacing(18)
        grid.setVerticalSpacing(2)
        self.stat_values: dict[str, QLabel] = {}
        for i, (key, label) in enumerate(STAT_LABELS):
            name = QLabel(label)
            name.setEnabled(False)  # dimmed caption, palette-aware
            value = QLabel("—")
            value.setTextInteractionFlags(Qt.TextSelectableByMouse)
            vf = value.font()
            vf.setBold(True)
            value.setFont(vf)
            grid.addWidget(name, 0, i)
            grid.addWidget(value, 1, i)
            self.stat_values[key] = value
        grid.setColumnStretch(len(STAT_LABELS), 1)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.status = QLabel("")
        self.button = QPushButton("Cancel")
        self.button.clicked.connect(self._on_button)
        self.log_scale = QCheckBox("Log count")
        self.log_scale.setToolTip("Histogram counts on a log scale: shows the sparse tails")
        self.log_scale.setChecked(True)
        self.log_scale.toggled.connect(self._plot_histogram)
        # Stats on the left, controls on the right of the same band; the progress row below
        # only shows while a worker runs.
        stats_row = QHBoxLayout()
        stats_row.addLayout(grid, 1)
        stats_row.addWidget(self.log_scale, 0, Qt.AlignBottom)
        stats_row.addWidget(self.button, 0, Qt.AlignBottom)
        prow = QHBoxLayout()
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.status)

        # Histogram.
        self.hist_widget = pg.PlotWidget(background=self.palette().color(QPalette.Base))
        self.hist_plot = self.hist_widget.getPlotItem()
        _style_plot(self.hist_plot, self)
        self.hist_plot.setTitle("Value histogram", color=self.palette().color(QPalette.WindowText))
        self.hist_plot.setLabel("bottom", "value")
        self.hist_plot.setLabel("left", "count")
        accent = _accent(self)
        fill = QColor(accent)
        fill.setAlpha(110)
        # stepMode "center": x holds the bin edges, one more than the counts in y.
        self.hist_curve = pg.PlotCurveItem(x=np.zeros(1), y=np.zeros(0), stepMode="center",
                                           fillLevel=0, pen=pg.mkPen(accent, width=1.5),
                                           brush=pg.mkBrush(fill))
        self.hist_plot.addItem(self.hist_curve)

        # Heatmap of the 2-D view (pooled), or a line for 1-D tensors.
        self.map_widget = HeatmapPlot(colormap="CET-D1")
        self.map_widget.set_titles(x="column (input dim)", y="row")
        self.map_plot = self.map_widget.plot
        self.image = self.map_widget.image
        self.colorbar = self.map_widget.colorbar
        self.line_widget = pg.PlotWidget(background=self.palette().color(QPalette.Base))
        self.line_plot = self.line_widget.getPlotItem()
        _style_plot(self.line_plot, self)
        self.line_plot.setLabel("bottom", "index")
        self.line_plot.setLabel("left", "value")
        self.line_curve = self.line_plot.plot(pen=pg.mkPen(accent, width=1.5))
        self.map_caption = QLabel("")
        self.map_caption.setWordWrap(True)
        # Whole tensor (pooled) or a band of rows at full row resolution.
        self.map_mode = QComboBox()
        self.map_mode.addItems(["Whole tensor", "Rows"])
        self.map_mode.setToolTip("Whole tensor: block means of the full matrix. "
                                 f"Rows: {SLICE_ROWS} rows from the chosen start, unpooled.")
        self.map_mode.currentIndexChanged.connect(self._on_map_mode)
        self.slice_start = QSpinBox()
        self.slice_start.setPrefix("from row ")
        self.slice_start.setSingleStep(SLICE_ROWS // 4)
        self.slice_start.setKeyboardTracking(False)
        self.slice_start.valueChanged.connect(lambda _v: self._slice_debounce.start())
        self._slice_debounce = QTimer(self, singleShot=True, interval=150)
        self._slice_debounce.timeout.connect(self._request_slice)
        self.map_stack = QStackedWidget()
        self.map_stack.addWidget(self.map_widget)
        self.map_stack.addWidget(self.line_widget)
        map_box = QWidget()
        mv = QVBoxLayout(map_box)
        mv.setContentsMargins(0, 0, 0, 0)
        mv.setSpacing(2)
        mv.addWidget(self.map_stack, 1)
        controls = QHBoxLayout()
        controls.addWidget(self.map_mode)
        controls.addWidget(self.slice_start)
        controls.addWidget(self.map_caption, 1)
        mv.addLayout(controls)

        self.plots = QSplitter(Qt.Vertical)
        self.plots.addWidget(self.hist_widget)
        self.plots.addWidget(map_box)
        self.plots.setStretchFactor(0, 2)
        self.plots.setStretchFactor(1, 3)
        self.plots.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 6, 6)
        layout.addWidget(self.title)
        layout.addWidget(self.facts)
        layout.addSpacing(4)
        layout.addLayout(stats_row)
        layout.addLayout(prow)
        layout.addWidget(self.plots, 1)
        self._running = False
        self.clear()

    # -- public -------------------------------------------------------------------------------

    @property
    def info(self):
        return self._info

    @property
    def is_running(self) -> bool:
        return self._running

    def clear(self) -> None:
        self._info = None
        self.title.setText("Select a tensor to see its values")
        self.facts.setText("")
        self._reset_plots()
        self._set_idle("")
        self.button.setEnabled(False)

    def show_tensor(self, info) -> None:
        """A tensor was picked: show its facts and wait for an analysis."""
        self._info = info
        self.title.setText(info.name)
        rows_note = ""
        if len(info.shape) > 2:
            rows = info.n_elements // info.shape[-1]
            rows_note = f"  ·  shown as {rows:,} × {info.shape[-1]:,}"
        self.facts.setText(f"{shape_text(info.shape)}  ·  {info.type_name}  ·  {info.n_elements:,} values"
                           f"  ·  {human_bytes(info.n_bytes)}  ·  offset 0x{info.offset:x}{rows_note}")
        self._reset_plots()
        self._running = True
        self.progress.setValue(0)
        self.progress.setFormat("Dequantizing… %p%")
        self.progress.show()
        self.status.setText("")
        self.button.setText("Cancel")
        self.button.setEnabled(True)

    def set_progress(self, fraction: float) -> None:
        self.progress.setValue(int(round(1000 * max(0.0, min(1.0, fraction)))))

    def show_analysis(self, result) -> None:
        stats = result.stats()
        for key, label in self.stat_values.items():
            v = stats.get(key)
            if key == "zeros":
                label.setText(f"{100 * v:.2f} %")
            else:
                label.setText(stat_text(v) if v is not None else "—")
        self._hist = (np.asarray(result.hist_edges, dtype=np.float64),
                      np.asarray(result.hist_counts, dtype=np.float64))
        self._plot_histogram()
        self._result = result
        self._enable_map_controls(result)
        if self.map_mode.currentIndex() == 1 and result.rows > 1:
            self._request_slice()
        else:
            self._show_map(result)
        self._set_idle("")
        self.button.setText("Analyse again")

    def show_slice(self, info, start: int, image: np.ndarray, col_factor: int) -> None:
        """Rows [start, start + len(image)) of `info`'s 2-D view, columns pooled by col_factor."""
        if info is not self._info or self.map_mode.currentIndex() != 1 or self._result is None:
            return  # a late answer for something no longer shown
        img = np.asarray(image, dtype=np.float32)
        n, cols = img.shape[0], self._result.cols
        self._set_image(img, QRectF(0, start, cols, n))
        self._clear_boundaries()
        pooled = f", columns pooled by {col_factor}" if col_factor > 1 else ""
        self.map_caption.setText(f"rows {start:,}–{start + n - 1:,} of {self._result.rows:,}, "
                                 f"one pixel per row{pooled}")

    def show_cancelled(self) -> None:
        self._set_idle("Cancelled")
        self.button.setText("Analyse")

    def show_error(self, message: str) -> None:
        self._set_idle(f"Error: {message}")
        self.status.setWordWrap(True)
        self.button.setText("Analyse")

    def histogram_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) as plotted, counts back on a linear scale (empty before an analysis)."""
        x, y = self.hist_curve.xData, self.hist_curve.yData
        if x is None or y is None or len(y) == 0:
            return np.zeros(0), np.zeros(0)
        y = np.asarray(y)
        if self.log_scale.isChecked():
            y = np.round(10.0 ** y - 1.0)
        return np.asarray(x), y

    def _plot_histogram(self) -> None:
        if self._hist is None:
            self.hist_curve.clear()
            return
        edges, counts = self._hist
        log = self.log_scale.isChecked()
        # The axis in log mode labels the plotted log10 values as powers of ten; +1 keeps
        # empty bins at the baseline (10^0) instead of at -infinity.
        self.hist_plot.getAxis("left").setLogMode(False, log)
        self.hist_plot.setLabel("left", "count (log)" if log else "count")
        self.hist_curve.setData(edges, np.log10(counts + 1.0) if log else counts)
        self.hist_plot.enableAutoRange()

    def heatmap_image(self) -> np.ndarray | None:
        return self.image.image

    # -- internals ----------------------------------------------------------------------------

    def _set_idle(self, status: str) -> None:
        self._running = False
        self.progress.hide()
        self.status.setText(status)
        self.button.setEnabled(self._info is not None)

    def _reset_plots(self) -> None:
        for label in self.stat_values.values():
            label.setText("—")
        self._hist = None
        self.hist_curve.clear()
        self.image.clear()
        self.line_curve.clear()
        self.map_caption.setText("")
        self._result = None
        self._clear_boundaries()
        self.map_mode.setEnabled(False)
        self.slice_start.setEnabled(False)

    def _show_map(self, result) -> None:
        img = np.asarray(result.image, dtype=np.float32)
        if result.rows == 1:
            self.map_stack.setCurrentWidget(self.line_widget)
            x = (np.arange(img.shape[1]) + 0.5) * result.col_factor
            self.line_curve.setData(x, img[0])
            self.line_plot.enableAutoRange()
            self.map_caption.setText("1-D tensor: values by index"
                                     + (f" (means of {result.col_factor})" if result.col_factor > 1 else ""))
            return
        self._set_image(img, QRectF(0, 0, result.cols, result.rows))
        self._draw_boundaries(result)
        if result.row_factor > 1 or result.col_factor > 1:
            self.map_caption.setText(
                f"{result.rows:,} × {result.cols:,} → {img.shape[0]} × {img.shape[1]} px, "
                f"each the mean of {result.row_factor} × {result.col_factor} values")
        else:
            self.map_caption.setText(f"{result.rows:,} × {result.cols:,}, one pixel per value")

    def _set_image(self, img: np.ndarray, rect: QRectF) -> None:
        self.map_stack.setCurrentWidget(self.map_widget)
        finite = np.abs(img[np.isfinite(img)])
        # Symmetric levels around 0 at the 99.5th percentile: a few outliers must not wash out
        # the rest; values beyond the level saturate.
        level = float(np.percentile(finite, 99.5)) if finite.size else 1.0
        level = level if level > 0 else (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
        self.map_widget.set_image(img, rect, levels=(-level, level))

    def _clear_boundaries(self) -> None:
        for line in self._boundaries:
            self.map_plot.removeItem(line)
        self._boundaries = []

    def _draw_boundaries(self, result) -> None:
        """Separators between the slabs of a stacked 3-D tensor (e.g. one per expert)."""
        self._clear_boundaries()
        shape = self._info.shape if self._info is not None else ()
        if len(shape) < 3:
            return
        slab = shape[-2]
        n_slabs = result.rows // slab
        if not 1 < n_slabs <= MAX_BOUNDARY_LINES:
            return
        pen = pg.mkPen(self.palette().color(QPalette.WindowText), width=1, style=Qt.DashLine)
        for k in range(1, n_slabs):
            line = pg.InfiniteLine(pos=k * slab, angle=0, pen=pen, movable=False)
            self.map_plot.addItem(line)
            self._boundaries.append(line)

    def _enable_map_controls(self, result) -> None:
        two_d = result.rows > 1
        self.map_mode.setEnabled(two_d)
        self.slice_start.blockSignals(True)
        self.slice_start.setRange(0, max(0, result.rows - 1))
        self.slice_start.blockSignals(False)
        self.slice_start.setEnabled(two_d and self.map_mode.currentIndex() == 1)

    def _on_map_mode(self, index: int) -> None:
        self.slice_start.setEnabled(index == 1 and self._result is not None)
        if self._result is None:
            return
        if index == 1:
            self._request_slice()
        else:
            self._show_map(self._result)

    def _request_slice(self) -> None:
        if self._result is None or self._info is None or self.map_mode.currentIndex() != 1:
            return
        start = self.slice_start.value()
        n = min(SLICE_ROWS, self._result.rows - start)
        if n > 0:
            self.map_caption.setText(f"loading rows {start:,}–{start + n - 1:,}…")
            self.slice_requested.emit(self._info, start, n)

    def _on_button(self) -> None:
        if self._running:
            self.cancel_requested.emit()
        elif self._info is not None:
            self.analyse_requested.emit(self._info)
