"""`TokenStrip`: the conversation's tokens as boxes that wrap like text; the shared selection.

One widget paints every token itself (no widget per token), keeps each token's rectangle, and
lays out appended tokens from where the last one ended, so streaming and long conversations
stay cheap. Colour modes: none (prompt and reply tokens told apart), probability, surprise
(−log p) and the first-choice expert at one MoE layer (from a `RoutingView`).
"""

from __future__ import annotations

import bisect
import csv
import math
from pathlib import Path

from PySide6.QtCore import QEvent, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPalette, QPen
from PySide6.QtWidgets import QComboBox, QScrollArea, QToolButton, QToolTip, QWidget

from ui.chat.theme import mix
from ui.inspect.model import RoutingView, TokenView
from ui.inspect.panel import InspectPanel, category_color, heat_color, tint, token_text

COLOR_MODES = ("none", "probability", "surprise", "expert")
SURPRISE_FULL = 8.0  # nats of −log p shown at full colour (p ≈ 3e-4)
_PAD_X, _PAD_Y, _GAP = 3, 2, 2


class _StripCanvas(QWidget):
    """The painted tokens; owned by `TokenStrip`, which handles the data and signals."""

    clicked = Signal(int)
    stepped = Signal(int)  # key navigation: the new index

    def __init__(self, strip: TokenStrip):
        super().__init__()
        self._strip = strip
        self.setFocusPolicy(Qt.StrongFocus)
        self.setMouseTracking(True)
        font = QFont(self.font())
        font.setStyleHint(QFont.Monospace)
        font.setFamily("monospace")
        self.setFont(font)
        self.labels: list[str] = []
        self.widths: list[int] = []
        self.breaks: list[bool] = []  # a line break follows this token (it holds a newline)
        self.rects: list[QRect] = []
        self._line_tops: list[int] = []  # top of each token's line, non-decreasing (for bisect)
        self._cursor = (0, 0)
        self._layout_width = -1

    @property
    def line_height(self) -> int:
        return self.fontMetrics().height() + 2 * _PAD_Y

    def add(self, tokens: list[TokenView]) -> None:
        fm = self.fontMetrics()
        for t in tokens:
            label = token_text(t.text, t.id)
            self.labels.append(label)
            self.widths.append(fm.horizontalAdvance(label) + 2 * _PAD_X)
            self.breaks.append("\n" in t.text)
        self._lay_out(len(self.rects))

    def reset(self) -> None:
        self.labels, self.widths, self.breaks = [], [], []
        self.rects, self._line_tops = [], []
        self._cursor = (0, 0)
        self._lay_out(0)

    def _lay_out(self, first: int) -> None:
        """Place tokens first.. after the previous ones (all of them when the width changed)."""
        width = max(40, self.width())
        if width != self._layout_width:
            first, self._layout_width = 0, width
        if first == 0:
            self.rects, self._line_tops, self._cursor = [], [], (0, 0)
        x, y = self._cursor
        lh = self.line_height
        dirty = QRect()
        for i in range(first, len(self.labels)):
            w = self.widths[i]
            if x > 0 and x + w > width:
                x, y = 0, y + lh + _GAP
            self.rects.append(QRect(x, y, w, lh))
            dirty = dirty.united(self.rects[-1])
            self._line_tops.append(y)
            x += w + _GAP
            if self.breaks[i]:
                x, y = 0, y + lh + _GAP
        self._cursor = (x, y)
        height = (y + lh + _GAP) if x > 0 else y
        self.setMinimumHeight(max(lh, height))
        # Streaming repaints only the new tokens, not the thousands before them.
        if first == 0:
            self.update()
        elif not dirty.isNull():
            self.update(dirty)

    def index_at(self, pos) -> int | None:
        lh = self.line_height
        lo = bisect.bisect_left(self._line_tops, pos.y() - lh)
        hi = bisect.bisect_right(self._line_tops, pos.y())
        for i in range(lo, hi):
            if self.rects[i].contains(pos):
                return i
        return None

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(400, self.minimumHeight())

    def resizeEvent(self, event) -> None:  # noqa: N802
        if self.width() != self._layout_width:
            self._lay_out(0)
        super().resizeEvent(event)

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        pal = self.palette()
        p.fillRect(event.rect(), pal.color(QPalette.Base))
        if not self.rects:
            p.setPen(pal.color(QPalette.PlaceholderText))
            p.drawText(self.rect().adjusted(6, 0, 0, 0), Qt.AlignLeft | Qt.AlignVCenter,
                       "No tokens yet: the conversation's tokens appear here.")
            return
        lh = self.line_height
        area = event.rect() & self.visibleRegion().boundingRect()  # the part a scroll shows
        top, bottom = area.top(), area.bottom()
        lo = bisect.bisect_left(self._line_tops, top - lh)
        hi = bisect.bisect_right(self._line_tops, bottom)
        text_color = pal.color(QPalette.Text)
        dim_text = pal.color(QPalette.PlaceholderText)
        border = mix(pal.color(QPalette.Base), text_color, 0.22)
        selected = self._strip.selected()
        mode, tokens = self._strip.color_mode(), self._strip.tokens()
        border_pen = QPen(border, 1)
        for i in range(lo, hi):
            r = self.rects[i]
            if not r.intersects(area):
                continue
            fill = self._strip.color_for(i, mode, pal)
            if fill is not None:
                p.fillRect(r, fill)
            p.setPen(border_pen)
            p.drawRect(r.adjusted(0, 0, -1, -1))
            p.setPen(dim_text if tokens[i].role == "template" else text_color)
            p.drawText(r, Qt.AlignCenter, self.labels[i])
        if selected is not None and lo <= selected < hi:
            p.setPen(QPen(pal.color(QPalette.Highlight), 2))
            p.setBrush(Qt.NoBrush)
            p.drawRect(self.rects[selected].adjusted(1, 1, -1, -1))

    def mousePressEvent(self, event) -> None:  # noqa: N802
        if event.button() == Qt.LeftButton:
            i = self.index_at(event.position().toPoint())
            if i is not None:
                self.clicked.emit(i)
        super().mousePressEvent(event)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        n = len(self.rects)
        if n == 0:
            return super().keyPressEvent(event)
        cur = self._strip.selected()
        key = event.key()
        if key == Qt.Key_Left:
            new = n - 1 if cur is None else max(0, cur - 1)
        elif key == Qt.Key_Right:
            new = 0 if cur is None else min(n - 1, cur + 1)
        elif key == Qt.Key_Home:
            new = 0
        elif key == Qt.Key_End:
            new = n - 1
        else:
            return super().keyPressEvent(event)
        if new != cur:
            self.stepped.emit(new)
        event.accept()

    def event(self, event) -> bool:
        if event.type() == QEvent.ToolTip:
            i = self.index_at(event.pos())
            if i is None:
                QToolTip.hideText()
            else:
                QToolTip.showText(event.globalPos(), self._strip.tooltip(i), self, self.rects[i])
            return True
        return super().event(event)


class TokenStrip(InspectPanel):
    """The conversation's tokens; click or arrow keys select one for every panel.

    Signals: `tokenSelected(index)` when the user selects a token (click, Left/Right/Home/End);
    `pinnedChanged(bool)` when the Pin button is toggled. `set_selected` selects without
    emitting, so the app can mirror a selection made elsewhere without a loop.
    """

    tokenSelected = Signal(int)
    pinnedChanged = Signal(bool)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Tokens", parent)
        self._tokens: list[TokenView] = []
        self._selected: int | None = None
        self._routing: RoutingView | None = None
        self._expert_layer: int | None = None  # a model layer index, one of routing.moe_layers
        self._n_generated = 0
        self.mode_box = QComboBox()
        self.mode_box.addItems(["No colour", "Probability", "Surprise (−log p)", "Expert"])
        self.mode_box.setToolTip("Colour the tokens by their probability, their surprise, or the "
                                 "expert the router chose first at one MoE layer")
        self.mode_box.currentIndexChanged.connect(self._on_mode)
        self.layer_box = QComboBox()
        self.layer_box.setSizeAdjustPolicy(QComboBox.AdjustToContents)  # items come later
        self.layer_box.setToolTip("MoE layer whose first-choice expert colours the tokens")
        self.layer_box.currentIndexChanged.connect(self._on_layer)
        self.layer_box.setVisible(False)
        self.pin_button = QToolButton()
        self.pin_button.setText("Pin")
        self.pin_button.setCheckable(True)
        self.pin_button.setToolTip("Keep the selection on this token while new tokens stream in")
        self.pin_button.toggled.connect(self.pinnedChanged)
        for w in (self.mode_box, self.layer_box, self.pin_button):
            self.add_header_widget(w)
        self.canvas = _StripCanvas(self)
        self.canvas.clicked.connect(self._user_select)
        self.canvas.stepped.connect(self._user_select)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.canvas)
        self.body.addWidget(self.scroll, 1)
        self._update_caption()

    # -- public -------------------------------------------------------------------------------

    def set_tokens(self, tokens: list[TokenView]) -> None:
        self._tokens = list(tokens)
        if self._selected is not None and self._selected >= len(self._tokens):
            self._selected = None
        self._n_generated = sum(1 for t in self._tokens if t.generated)
        self.canvas.reset()
        self.canvas.add(self._tokens)
        self._update_caption()

    def append_tokens(self, tokens: list[TokenView]) -> None:
        """Streaming: add tokens at the end (only they are laid out and painted)."""
        tokens = list(tokens)
        self._tokens.extend(tokens)
        self._n_generated += sum(1 for t in tokens if t.generated)
        bar = self.scroll.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 2
        self.canvas.add(tokens)
        if at_end and not self.pinned():
            # follow the stream unless the user scrolled away (after the new height is applied)
            QTimer.singleShot(0, self, lambda: bar.setValue(bar.maximum()))
        self._update_caption()

    def tokens(self) -> list[TokenView]:
        return self._tokens

    def set_selected(self, index: int | None) -> None:
        """Select a token (None clears) without emitting `tokenSelected`."""
        if index is not None and not 0 <= index < len(self._tokens):
            index = None
        self._selected = index
        if index is not None:
            r = self.canvas.rects[index]
            self.scroll.ensureVisible(r.center().x(), r.center().y(), 4, r.height())
        self.canvas.update()
        self._update_caption()

    def selected(self) -> int | None:
        return self._selected

    def set_routing(self, routing: RoutingView | None) -> None:
        self._routing = routing
        layers = list(routing.moe_layers) if routing is not None else []
        keep = self._expert_layer if self._expert_layer in layers else (layers[0] if layers else None)
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems([f"layer {li}" for li in layers])
        if keep is not None:
            self.layer_box.setCurrentIndex(layers.index(keep))
        self.layer_box.blockSignals(False)
        self._expert_layer = keep
        self.layer_box.setVisible(self.color_mode() == "expert")
        self.canvas.update()
        self._update_caption()

    def set_expert_layer(self, layer: int) -> None:
        """Colour by the experts of model layer `layer` (one of the routing's moe_layers)."""
        if self._routing is not None and layer in self._routing.moe_layers:
            self.layer_box.setCurrentIndex(list(self._routing.moe_layers).index(layer))

    def expert_layer(self) -> int | None:
        return self._expert_layer

    def pinned(self) -> bool:
        return self.pin_button.isChecked()

    def set_pinned(self, pinned: bool) -> None:
        self.pin_button.setChecked(pinned)

    def color_mode(self) -> str:
        return COLOR_MODES[self.mode_box.currentIndex()]

    def set_color_mode(self, mode: str) -> None:
        """One of COLOR_MODES: "none", "probability", "surprise", "expert"."""
        self.mode_box.setCurrentIndex(COLOR_MODES.index(mode))

    def token_rect(self, index: int) -> QRect:
        """Where token `index` is drawn, in the canvas's coordinates (`self.canvas`)."""
        return QRect(self.canvas.rects[index])

    def expert_of(self, index: int) -> int | None:
        """First-choice expert of token `index` at the colouring layer, when routed."""
        r = self._routing
        if r is None or r.topk_ids is None or self._expert_layer is None:
            return None
        t = index - r.start
        if not 0 <= t < r.topk_ids.shape[0]:
            return None
        return int(r.topk_ids[t, list(r.moe_layers).index(self._expert_layer), 0])

    def token_color(self, index: int) -> QColor | None:
        """Background of token `index` in the current colour mode (None: no fill)."""
        return self.color_for(index, self.color_mode(), self.palette())

    def color_for(self, index: int, mode: str, pal: QPalette) -> QColor | None:
        t = self._tokens[index]
        if mode == "none":
            return pal.color(QPalette.AlternateBase) if t.generated else None
        if mode == "expert":
            e = self.expert_of(index)
            return None if e is None else tint(pal, category_color(e), 0.6)
        if t.prob is None:
            return None
        if mode == "probability":
            return heat_color(pal, t.prob)
        surprise = -math.log(max(t.prob, 1e-12))
        # Square root: most tokens cost a few nats, which a linear scale left nearly invisible
        # (on a dark background especially); the order of strengths is unchanged.
        return tint(pal, QColor(235, 110, 50), 0.8 * math.sqrt(min(1.0, surprise / SURPRISE_FULL)))

    def tooltip(self, index: int) -> str:
        t = self._tokens[index]
        parts = [f"#{t.index}", f"id {t.id}", repr(t.text), t.role + (" · generated" if t.generated else "")]
        if t.prob is not None:
            parts.append(f"p = {t.prob:.4g}  (−log p = {-math.log(max(t.prob, 1e-12)):.2f})")
        e = self.expert_of(index)
        if e is not None:
            parts.append(f"expert {e} at layer {self._expert_layer}")
        return "\n".join(parts)

    def export_data(self, path: str | Path) -> None:
        """CSV, one row per token: index, id, text, role, generated, prob, surprise, expert."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["index", "id", "text", "role", "generated", "prob", "surprise", "expert"])
            for i, t in enumerate(self._tokens):
                surprise = "" if t.prob is None else -math.log(max(t.prob, 1e-12))
                e = self.expert_of(i)
                w.writerow([t.index, t.id, t.text, t.role, int(t.generated),
                            "" if t.prob is None else t.prob, surprise, "" if e is None else e])

    # -- internals ----------------------------------------------------------------------------

    def _user_select(self, index: int) -> None:
        self.set_selected(index)
        self.canvas.setFocus()
        self.tokenSelected.emit(index)

    def _on_mode(self, _i: int) -> None:
        self.layer_box.setVisible(self.color_mode() == "expert")
        self.canvas.update()
        self._update_caption()

    def _on_layer(self, i: int) -> None:
        if self._routing is not None and 0 <= i < len(self._routing.moe_layers):
            self._expert_layer = int(self._routing.moe_layers[i])
        self.canvas.update()
        self._update_caption()

    def _update_caption(self) -> None:
        n = len(self._tokens)
        text = f"Tokens: {n:,} ({self._n_generated:,} generated)"
        mode = self.color_mode()
        if mode == "probability":
            text += " · colour: probability of each token (stronger = likelier)"
        elif mode == "surprise":
            text += f" · colour: surprise −log p (full at {SURPRISE_FULL:g} nats)"
        elif mode == "expert":
            text += (f" · colour: first-choice expert at layer {self._expert_layer}"
                     if self._expert_layer is not None else " · colour by expert: no MoE routing")
        if self._selected is not None:
            text += f" · selected #{self._selected}"
        self.set_caption(text)
