"""The two painted parts of the attention panel: the layers × heads grid and the head view.

`ModelGrid` (bertviz's model view, one query): a cell per layer and head, each a one-row heat
strip of the selected token's attention over keys 0..query, scaled to the cell's own maximum
so weak heads still show their pattern; keys hidden by a sliding window are hatched; a layer
without attention (LFM2's short convolutions, kind "conv") is one greyed bar; with attention
sinks (gpt-oss) a thin bar under each cell shows the share of attention the sink took.
`HeadView` (bertviz's head view): lines from the selected token to the keys it attends to
most at one layer, one colour per head, width and opacity by weight.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPalette, QPen
from PySide6.QtWidgets import QToolTip, QWidget

from ui.chat.theme import mix
from ui.inspect.panel import category_color

MIN_CELL_H, MAX_CELL_H, MIN_CELL_W, LABEL_W, HEADER_H = 14, 36, 36, 96, 18
HEAD_VIEW_KEYS = 24  # keys drawn in the head view when there are more (the strongest ones)


def colormap_lut(name: str = "viridis") -> np.ndarray:
    """uint8 [256, 3] lookup table of a pyqtgraph colour map."""
    return pg.colormap.get(name).getLookupTable(0.0, 1.0, 256, alpha=False).astype(np.uint8)


def pool_max(values: np.ndarray, bins: int) -> np.ndarray:
    """[K] -> [min(K, bins)] maxima of consecutive runs: a peak survives any downscaling."""
    v = np.asarray(values, dtype=np.float32)
    if v.size <= bins:
        return v
    edges = np.linspace(0, v.size, bins + 1).astype(np.int64)[:-1]
    return np.maximum.reduceat(v, edges)


def strip_image(values: np.ndarray, lut: np.ndarray) -> QImage:
    """A 1-row image of `values` [K] scaled to their maximum (a flat row is drawn dark)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32))
    top = float(v.max()) if v.size else 0.0
    idx = np.clip((v / top * 255.0) if top > 0 else np.zeros_like(v), 0, 255).astype(np.uint8)
    rgb = lut[idx]  # [K, 3]
    argb = (0xFF000000 | (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8)
            | rgb[:, 2].astype(np.uint32)).reshape(1, -1)  # [1, K]
    img = QImage(argb.tobytes(), argb.shape[1], 1, 4 * argb.shape[1], QImage.Format_RGB32)
    return img.copy()  # own the pixels: the bytes object above is temporary


def layer_label(layer: int, kind: str, window: int | None) -> str:
    if kind == "conv":
        return f"L{layer} conv"
    if kind == "mla":
        return f"L{layer} MLA"
    if kind == "sliding" and window:
        return f"L{layer} win {window}"
    return f"L{layer}"


def head_label(head: int, kv_head: list[int]) -> str:
    """'h5' for plain multi-head attention, 'h5 (kv 1)' when heads share key/value heads."""
    n_kv = (max(kv_head) + 1) if kv_head else 0
    if kv_head and n_kv < len(kv_head):
        return f"h{head} (kv {kv_head[head]})"
    return f"h{head}"


def hidden_keys(query: int, window: int | None) -> int:
    """How many leading keys a sliding window hides from `query` (0 for global layers)."""
    return max(0, query - window + 1) if window else 0


class ModelGrid(QWidget):
    """Layers × heads cells of the selected token's attention row; click picks layer and head."""

    cellClicked = Signal(int, int)  # layer, head

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self._rows: list[np.ndarray] = []
        self._images: list[list[QImage]] = []
        self._image_width = -1  # cell width the images were pooled for
        self._query = 0
        self._window: list[int | None] = []
        self._kind: list[str] = []
        self._kv_head: list[int] = []
        self._sink: np.ndarray | None = None  # [L, H] share of attention on the sink
        self._chosen: tuple[int, int] | None = None
        self._lut = colormap_lut()
        self.key_label: Callable[[int], str] = lambda j: f"#{j}"

    def set_data(self, rows: list[np.ndarray], query: int, window: list[int | None],
                 kind: list[str], kv_head: list[int], sink: np.ndarray | None = None) -> None:
        self._rows = [np.asarray(r, dtype=np.float32) for r in rows]
        self._query, self._window, self._kind, self._kv_head = query, list(window), list(kind), list(kv_head)
        self._sink = None if sink is None else np.asarray(sink, dtype=np.float32)
        self._images, self._image_width = [], -1
        self.updateGeometry()
        self.setMinimumHeight(self._height())
        self.update()

    def set_chosen(self, layer: int, head: int) -> None:
        self._chosen = (layer, head)
        self.update()

    def n_heads(self) -> int:
        return max((r.shape[0] for r in self._rows), default=0)

    def cell_rect(self, layer: int, head: int) -> QRect:
        w, h = self._cell_w(), self._cell_h()
        return QRect(LABEL_W + head * w, HEADER_H + layer * (h + 2), w - 3, h)

    def is_attention(self, layer: int) -> bool:
        """False for a layer without attention (kind "conv"): its row is not clickable."""
        return layer < len(self._kind) and self._kind[layer] != "conv"

    def sink_share(self, layer: int, head: int) -> float | None:
        s = self._sink
        if s is None or not (layer < s.shape[0] and head < s.shape[1]):
            return None
        return float(s[layer, head])

    def row_rect(self, layer: int) -> QRect:
        """The whole row of a layer's cells (a "conv" layer's greyed bar)."""
        return self.cell_rect(layer, 0).united(self.cell_rect(layer, max(0, self.n_heads() - 1)))

    def cell_at(self, pos) -> tuple[int, int] | None:
        for layer in range(len(self._rows)):
            if not self.is_attention(layer):
                continue
            for head in range(self._rows[layer].shape[0]):
                if self.cell_rect(layer, head).contains(pos):
                    return layer, head
        return None

    def _cell_w(self) -> int:
        h = max(1, self.n_heads())
        return max(MIN_CELL_W, (self.width() - LABEL_W) // h)

    def _cell_h(self) -> int:
        """Cells grow to fill the height given, within limits (a scroll area adds the rest)."""
        n = max(1, len(self._rows))
        return max(MIN_CELL_H, min(MAX_CELL_H, (self.height() - HEADER_H - 2) // n - 2))

    def _height(self) -> int:
        return HEADER_H + len(self._rows) * (MIN_CELL_H + 2) + 2

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(LABEL_W + self.n_heads() * 60, self._height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(LABEL_W + self.n_heads() * MIN_CELL_W, self._height())

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        pal = self.palette()
        p.fillRect(self.rect(), pal.color(QPalette.Base))
        text = pal.color(QPalette.Text)
        if not self._rows:
            p.setPen(pal.color(QPalette.PlaceholderText))
            p.drawText(self.rect(), Qt.AlignCenter, "Select a token to see its attention")
            return
        p.setRenderHint(QPainter.SmoothPixmapTransform)
        p.setPen(text)
        w = self._cell_w()
        fm = self.fontMetrics()
        for h in range(self.n_heads()):
            label = head_label(h, self._kv_head)
            if fm.horizontalAdvance(label) > w - 5:
                label = f"h{h}"  # narrow cells: the kv head is in the tooltip
            p.drawText(QRect(LABEL_W + h * w, 0, w - 3, HEADER_H), Qt.AlignCenter, label)
        hatch = mix(pal.color(QPalette.Base), text, 0.45)
        if self._image_width != w:
            # Pool each row to the cell's pixels (max), so a sharp peak over thousands of keys
            # still shows; rebuilt only when the cell width changes.
            self._images = [[strip_image(pool_max(r[h], max(1, w - 3)), self._lut)
                             for h in range(r.shape[0])] for r in self._rows]
            self._image_width = w
        dim = pal.color(QPalette.PlaceholderText)
        for layer, images in enumerate(self._images):
            p.setPen(text)
            row_rect = self.cell_rect(layer, 0)
            p.drawText(QRect(2, row_rect.top(), LABEL_W - 6, row_rect.height()),
                       Qt.AlignLeft | Qt.AlignVCenter,
                       layer_label(layer, self._kind[layer], self._window[layer]))
            if not self.is_attention(layer):
                # One greyed bar across the heads: a short convolution mixes tokens without
                # attention weights, so there is nothing to draw.
                bar = self.row_rect(layer)
                p.fillRect(bar, pal.color(QPalette.Window))
                p.fillRect(bar, QBrush(mix(pal.color(QPalette.Window), text, 0.15),
                                       Qt.BDiagPattern))
                p.setPen(dim)
                p.drawText(bar, Qt.AlignCenter, "conv: no attention")
                continue
            n_keys = self._rows[layer].shape[1]
            hidden = hidden_keys(self._query, self._window[layer])
            for h, img in enumerate(images):
                r = self.cell_rect(layer, h)
                p.drawImage(QRectF(r), img)
                if hidden and n_keys:
                    shade = QRect(r.left(), r.top(), round(r.width() * hidden / n_keys), r.height())
                    p.fillRect(shade, pal.color(QPalette.Window))
                    p.fillRect(shade, QBrush(hatch, Qt.BDiagPattern))
                share = self.sink_share(layer, h)
                if share is not None:
                    # a 3 px bar along the cell's bottom: its length is the sink's share
                    p.fillRect(QRect(r.left(), r.bottom() - 2, r.width(), 3), pal.color(QPalette.Window))
                    p.fillRect(QRect(r.left(), r.bottom() - 2, round(r.width() * min(1.0, share)), 3),
                               pal.color(QPalette.Highlight))
        if self._chosen is not None and self.is_attention(self._chosen[0]) \
                and self._chosen[0] < len(self._rows):
            p.setPen(QPen(pal.color(QPalette.Highlight), 2))
            p.setBrush(Qt.NoBrush)
            p.drawRect(self.cell_rect(*self._chosen).adjusted(-1, -1, 1, 1))

    def mousePressEvent(self, event) -> None:  # noqa: N802
        cell = self.cell_at(event.position().toPoint()) if event.button() == Qt.LeftButton else None
        if cell is not None:
            self.set_chosen(*cell)
            self.cellClicked.emit(*cell)

    def event(self, event) -> bool:
        if event.type() == QEvent.ToolTip:
            cell = self.cell_at(event.pos())
            conv = next((layer for layer in range(len(self._rows)) if not self.is_attention(layer)
                         and self.row_rect(layer).contains(event.pos())), None)
            if conv is not None:
                QToolTip.showText(event.globalPos(), f"layer {conv} is a short convolution: "
                                  "it mixes the last few tokens without attention", self)
            elif cell is None:
                QToolTip.hideText()
            else:
                layer, head = cell
                QToolTip.showText(event.globalPos(), self.cell_tooltip(layer, head), self)
            return True
        return super().event(event)


    def cell_tooltip(self, layer: int, head: int) -> str:
        row = self._rows[layer][head]
        j = int(np.argmax(row)) if row.size else 0
        share = self.sink_share(layer, head)
        sink = (f"sink {100 * share:.0f}% (the keys share the other {100 * (1 - share):.0f}%)\n"
                if share is not None else "")
        return (f"layer {layer} ({self._kind[layer]}), {head_label(head, self._kv_head)}\n"
                f"strongest key {self.key_label(j)}: {float(row[j]):.3f}\n"
                f"{sink}click: show this layer and head below")


class HeadView(QWidget):
    """Lines from the selected token to the keys it attends to at one layer, a colour per head."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._row: np.ndarray | None = None  # [H, K]
        self._query = 0
        self._window: int | None = None
        self._enabled: set[int] = set()
        self._keys: list[int] = []
        self.key_label: Callable[[int], str] = lambda j: f"#{j}"

    def set_data(self, row: np.ndarray | None, query: int, window: int | None) -> None:
        self._row = None if row is None else np.asarray(row, dtype=np.float32)
        self._query, self._window = query, window
        if self._row is not None and not self._enabled:
            self._enabled = set(range(self._row.shape[0]))
        self._pick_keys()

    def set_heads_enabled(self, heads: set[int]) -> None:
        self._enabled = set(heads)
        self._pick_keys()

    def heads_enabled(self) -> set[int]:
        return set(self._enabled)

    def shown_keys(self) -> list[int]:
        """Key positions drawn, in order (all keys when few, else the strongest ones)."""
        return list(self._keys)

    def _pick_keys(self) -> None:
        if self._row is None:
            self._keys = []
        else:
            n_keys = self._row.shape[1]
            heads = sorted(h for h in self._enabled if h < self._row.shape[0])
            if n_keys <= HEAD_VIEW_KEYS or not heads:
                self._keys = list(range(n_keys))
            else:
                strongest = self._row[heads].max(axis=0)  # [K]
                top = np.argsort(-strongest, kind="stable")[:HEAD_VIEW_KEYS]
                self._keys = sorted(int(j) for j in top if strongest[j] > 0)
        self.setMinimumHeight(self._line_h() * max(1, len(self._keys)) + 12)
        self.update()

    def _line_h(self) -> int:
        return self.fontMetrics().height() + 4

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        pal = self.palette()
        p.fillRect(self.rect(), pal.color(QPalette.Base))
        text = pal.color(QPalette.Text)
        if self._row is None or not self._keys:
            p.setPen(pal.color(QPalette.PlaceholderText))
            p.drawText(self.rect(), Qt.AlignCenter, "Select a token to see where it looks")
            return
        p.setRenderHint(QPainter.Antialiasing)
        lh = self._line_h()
        fm = self.fontMetrics()
        q_label = self.key_label(self._query)
        mid = 6 + (len(self._keys) * lh) // 2  # level with the middle of the key column
        q_rect = QRect(8, mid - lh // 2, fm.horizontalAdvance(q_label) + 10, lh)
        key_x = max(q_rect.right() + 80, int(self.width() * 0.45))
        hidden = hidden_keys(self._query, self._window)
        key_rects = {}
        for i, j in enumerate(self._keys):
            key_rects[j] = QRect(key_x, 6 + i * lh, self.width() - key_x - 6, lh)
        n_heads = self._row.shape[0]
        # Each head's lines a little apart: drawn on one path, heads that agree (they often
        # all look at the first token) would blend into one grey line.
        spread = min(3.0, (lh - 4) / max(1, n_heads - 1)) if n_heads > 1 else 0.0
        for h in sorted(self._enabled):
            if h >= n_heads:
                continue
            color = QColor(category_color(h))
            dy = (h - (n_heads - 1) / 2) * spread
            for j in self._keys:
                w = float(self._row[h, j])
                if w < 0.01:
                    continue
                color.setAlphaF(min(1.0, 0.25 + 0.75 * w))
                p.setPen(QPen(color, 0.5 + 4.0 * w))
                kr = key_rects[j]
                p.drawLine(QPointF(q_rect.right() + 2, q_rect.center().y() + dy),
                           QPointF(kr.left() - 2, kr.center().y() + dy))
        p.setPen(QPen(pal.color(QPalette.Highlight), 2))
        p.drawRect(q_rect)
        p.setPen(text)
        p.drawText(q_rect, Qt.AlignCenter, q_label)
        dim = pal.color(QPalette.PlaceholderText)
        for j, kr in key_rects.items():
            p.setPen(dim if j < hidden else text)
            label = self.key_label(j) + ("  (outside window)" if j < hidden else "")
            p.drawText(kr, Qt.AlignLeft | Qt.AlignVCenter, fm.elidedText(label, Qt.ElideRight, kr.width()))
