"""`HeatmapPlot`: one matrix as an image with a colour bar, labelled axes and a value on hover.

The one heatmap of the UI (tensor values in the browser, attention, routing, expert load): a
pyqtgraph `ImageItem` (row-major, row 0 at the top) in a `PlotItem` with a `ColorBarItem`, as
in pyqtgraph's MatrixDisplay example. Cell (r, c) covers [c, c+1) × [r, r+1) in plot units
unless `set_image` gets another rectangle, so overlays (markers, window lines) use the same
coordinates. Colours follow the palette, and restyle on a theme switch (PaletteChange).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QCursor, QFontMetrics, QPalette, QPen
from PySide6.QtWidgets import QToolTip, QWidget




def style_plot(plot: pg.PlotItem, widget: QWidget) -> None:
    """Plot colours from the widget palette, so light and dark themes both look native."""
    fg = widget.palette().color(QPalette.WindowText)
    for name in ("left", "bottom", "right", "top"):
        axis = plot.getAxis(name)
        axis.setPen(pg.mkPen(fg))
        axis.setTextPen(pg.mkPen(fg))
    plot.showGrid(x=True, y=True, alpha=0.15)
    title = plot.titleLabel.text
    if title:
        plot.setTitle(title, color=fg)


class HeatmapPlot(pg.GraphicsLayoutWidget):
    """A matrix drawn as an image, with a colour bar and a value tooltip.

    Signals: `cellClicked(row, col)` on a left click inside the image, `cellHovered(row, col)`.
    `hover_text(row, col, value) -> str` (settable) words the tooltip; by default it shows the
    cell and its value.
    """

    cellClicked = Signal(int, int)
    cellHovered = Signal(int, int)

    def __init__(self, parent: QWidget | None = None, colormap: str | pg.ColorMap = "viridis",
                 colorbar: bool = True, colorbar_width: int = 14):
        super().__init__(parent)
        self.plot: pg.PlotItem = self.addPlot()
        self.plot.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        cmap = pg.colormap.get(colormap) if isinstance(colormap, str) else colormap
        self.colorbar: pg.ColorBarItem | None = None
        if colorbar:
            self.colorbar = pg.ColorBarItem(values=(0, 1), colorMap=cmap, width=colorbar_width,
                                            interactive=False)
            self.colorbar.setImageItem(self.image, insert_in=self.plot)
            self.colorbar.axis.enableAutoSIPrefix(False)  # "0.4", not "400 (x0.001)"
        else:
            self.image.setColorMap(cmap)
        self.hover_text: Callable[[int, int, float], str] | None = None
        self._rect = QRectF()
        # axis name -> (labels, offset, pixels one label needs); ticks are thinned to fit
        self._labels: dict[str, tuple[list[str], float, int]] = {}
        for name in ("bottom", "left"):
            # Our own thinning already keeps labels apart; pyqtgraph's fill limit would drop more.
            self.plot.getAxis(name).setStyle(textFillLimits=[(0, 0.95)])
        self.plot.vb.sigRangeChanged.connect(self._apply_ticks)
        self.plot.vb.sigResized.connect(self._apply_ticks)
        self.scene().sigMouseMoved.connect(self._on_move)
        self.scene().sigMouseClicked.connect(self._on_click)
        self.restyle()
        self._styled = True

    # -- public -------------------------------------------------------------------------------

    def set_image(self, img: np.ndarray, rect: QRectF | None = None,
                  levels: tuple[float, float] | None = None, auto_range: bool = True) -> None:
        """Show `img` [rows, cols]; levels default to the finite min..max (0..1 when flat)."""
        img = np.asarray(img, dtype=np.float32)
        if img.ndim == 1:
            img = img[None, :]
        if levels is None:
            finite = img[np.isfinite(img)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            levels = (lo, hi if hi > lo else lo + 1.0)
        self.image.setImage(img, autoLevels=False)
        if self.colorbar is not None:
            self.colorbar.setLevels(levels)
        else:
            self.image.setLevels(levels)
        self._rect = rect if rect is not None else QRectF(0, 0, img.shape[1], img.shape[0])
        self.image.setRect(self._rect)
        if auto_range:
            self.plot.enableAutoRange()
            self.plot.autoRange(padding=0)

    def clear_image(self) -> None:
        self.image.clear()

    def image_data(self) -> np.ndarray | None:
        """The array shown (row-major, as given to `set_image`)."""
        return self.image.image

    def levels(self) -> tuple[float, float]:
        lo, hi = self.image.getLevels()
        return float(lo), float(hi)

    def set_colormap(self, colormap: str | pg.ColorMap) -> None:
        cmap = pg.colormap.get(colormap) if isinstance(colormap, str) else colormap
        if self.colorbar is not None:
            self.colorbar.setColorMap(cmap)
        else:
            self.image.setColorMap(cmap)

    def set_axis_labels(self, x: Sequence[str] | None = None, y: Sequence[str] | None = None,
                        x_offset: float = 0.0, y_offset: float = 0.0) -> None:
        """Text ticks at the cell centres (None leaves the numeric axis). When the labels do not
        fit, every n-th is shown, n chosen from the zoom so that they never overlap."""
        fm = QFontMetrics(self.font())
        for name, labels, offset in (("bottom", x, x_offset), ("left", y, y_offset)):
            if labels is None:
                continue
            labels = list(labels)
            widest = max((fm.horizontalAdvance(t) for t in labels), default=0)
            need = widest + 12 if name == "bottom" else round(fm.height() * 1.4)
            self._labels[name] = (labels, offset, need)
            if name == "left":
                # pyqtgraph widens the axis for long labels only on a later paint and drops the
                # labels that do not fit until then: size it now.
                axis = self.plot.getAxis("left")
                title = fm.height() + 6 if axis.label.isVisible() else 0
                axis.setWidth(widest + 16 + title)
        self._apply_ticks()

    def axis_ticks(self, name: str) -> list[tuple[float, str]]:
        """The text ticks now shown on axis "bottom" or "left" (position, label)."""
        labels = self._labels.get(name)
        return [] if labels is None else list(self._ticks_for(name, *labels))

    def set_titles(self, x: str | None = None, y: str | None = None, colorbar: str | None = None) -> None:
        if x is not None:
            self.plot.setLabel("bottom", x)
        if y is not None:
            self.plot.setLabel("left", y)
        if colorbar is not None and self.colorbar is not None:
            self.colorbar.axis.setLabel(colorbar)

    def cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        """(row, col) of the image cell under a scene position, or None outside the image."""
        if self.image.image is None:
            return None
        p = self.plot.vb.mapSceneToView(scene_pos)
        rows, cols = self.image.image.shape[:2]
        r = self._rect
        if r.width() <= 0 or r.height() <= 0:
            return None
        col = int(np.floor((p.x() - r.left()) / r.width() * cols))
        row = int(np.floor((p.y() - r.top()) / r.height() * rows))
        if 0 <= row < rows and 0 <= col < cols:
            return row, col
        return None

    def restyle(self) -> None:
        pal = self.palette()
        self.setBackground(pal.color(QPalette.Base))
        style_plot(self.plot, self)
        self.plot.showGrid(x=False, y=False)
        if self.colorbar is not None:
            fg = pal.color(QPalette.WindowText)
            self.colorbar.axis.setPen(pg.mkPen(fg))
            self.colorbar.axis.setTextPen(pg.mkPen(fg))

    # -- internals ----------------------------------------------------------------------------

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        # A theme switch reaches every widget as PaletteChange (GraphicsView sends one while
        # it is being built, before there is anything to restyle).
        if event.type() == QEvent.PaletteChange and getattr(self, "_styled", False):
            self.restyle()
        super().changeEvent(event)

    def _ticks_for(self, name: str, labels: list[str], offset: float, need: int):
        n = len(labels)
        vb = self.plot.vb
        (x0, x1), (y0, y1) = vb.viewRange()
        lo, hi = (x0, x1) if name == "bottom" else (y0, y1)
        pixels = vb.width() if name == "bottom" else vb.height()
        per_cell = pixels / max(hi - lo, 1e-9)
        step = max(1, math.ceil(need / per_cell)) if per_cell > 0 else max(1, n // 8)
        # Start on a multiple of the step, so the labels do not jump while panning.
        first = max(0, math.ceil(lo - offset - 0.5))  # first cell whose centre is in view
        first = -(-first // step) * step
        last = min(n, math.floor(hi - offset - 0.5) + 1)
        for i in range(first, last, step):
            yield offset + i + 0.5, labels[i]

    def _apply_ticks(self, *_args) -> None:
        for name, labels in self._labels.items():
            self.plot.getAxis(name).setTicks([list(self._ticks_for(name, *labels))])

    def _on_move(self, scene_pos: QPointF) -> None:
        cell = self.cell_at(scene_pos)
        if cell is None:
            QToolTip.hideText()
            return
        row, col = cell
        value = float(self.image.image[row, col])
        text = (self.hover_text(row, col, value) if self.hover_text is not None
                else f"row {row}, col {col}: {value:.4g}")
        QToolTip.showText(QCursor.pos(), text, self)
        self.cellHovered.emit(row, col)

    def _on_click(self, event) -> None:
        if event.button() != Qt.LeftButton or event.double():
            return
        cell = self.cell_at(event.scenePos())
        if cell is not None:
            self.cellClicked.emit(*cell)


def accent_pen(widget: QWidget, width: float = 2.0, style: Qt.PenStyle = Qt.SolidLine) -> QPen:
    """A cosmetic pen in the palette's highlight colour, for overlays on a heatmap."""
    return pg.mkPen(widget.palette().color(QPalette.Highlight), width=width, style=style)
