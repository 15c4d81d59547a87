"""`RoutingPanel`: which experts an MoE model's routers chose, per token and over the conversation.

Four tabs over one `RoutingView`: the selected token's router probabilities (MoE layers ×
experts, its top-k boxed, the applied weights listed; for routers that rank by score + a
selection bias, a toggle to the scores the top-k was taken over, the experts of dropped
groups hatched and a line for each pick the router score alone would not have made), the
expert load (how often each expert
was chosen, per layer, and as bars for one layer), the conversation coloured by the
first-choice expert at one layer (as in the Mixtral paper's routing figure), and the experts ×
experts co-activation at one layer. A dense model gets an empty state that offers the demo MoE.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPalette
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton,
                               QSplitter, QStackedWidget, QTabWidget, QTextEdit, QVBoxLayout,
                               QWidget)

from ui.inspect.model import RoutingView, TokenView
from ui.inspect.panel import InspectPanel, category_color, tint, token_text
from ui.widgets.heatmap import HeatmapPlot, style_plot

DENSE_TEXT = ("This model is dense: no experts to route. "
              "Open an MoE model (File → Open demo MoE) to see routing.")
TEXT_TAB = 2
WEIGHTS_MAX_W = 260  # the weights listing never takes more of the token tab than this
MAX_TEXT_TOKENS = 20000  # the coloured text shows at most this many tokens (the latest)
MAX_WHY_LINES = 8  # explained picks listed under the selected token's map
SCORE_MODES = ("router", "selection")  # the selected token's map: router scores or + bias


def group_of(expert: int, n_expert: int, n_groups: int) -> int:
    """The expert group of `expert` (groups are runs of n_expert / n_groups experts)."""
    return expert // (n_expert // n_groups)


def surprising_picks(probs: np.ndarray, ids: np.ndarray, select: np.ndarray | None,
                     kept: np.ndarray | None, n_groups: int) -> list[tuple[int, int, str, float]]:
    """Picks of one token at one layer that the router score alone would not have made.

    probs / select [E], ids [k], kept [Gu] (or None). For each chosen expert with a lower
    router score than an unchosen one, the best such unchosen expert u and why it lost:
    (chosen, u, "group", 0.0) when u's group was dropped, else (chosen, u, "bias", the
    chosen expert's bias minus u's), which is what lifted it above u."""
    picked = {int(e) for e in ids}
    out = []
    for e in (int(i) for i in ids):
        better = [u for u in range(probs.shape[0]) if u not in picked and probs[u] > probs[e]]
        if not better:
            continue
        u = max(better, key=lambda j: probs[j])
        if kept is not None and n_groups > 1 and group_of(u, probs.shape[0], n_groups) not in set(
                int(g) for g in kept):
            out.append((e, u, "group", 0.0))
        elif select is not None:
            bias = float((select[e] - probs[e]) - (select[u] - probs[u]))
            out.append((e, u, "bias", bias))
    return out


def expert_load(topk_ids: np.ndarray, n_expert: int) -> np.ndarray:
    """counts [L, E]: how many tokens chose each expert (any of their top-k), per MoE layer."""
    t, n_layers, _k = topk_ids.shape
    counts = np.zeros((n_layers, n_expert), np.int64)
    for li in range(n_layers):
        counts[li] = np.bincount(topk_ids[:, li, :].ravel(), minlength=n_expert)[:n_expert]
    return counts


def coactivation(topk_ids: np.ndarray, layer: int, n_expert: int) -> np.ndarray:
    """[E, E] counts of tokens that chose both experts at MoE layer `layer` (diagonal = load)."""
    onehot = np.zeros((topk_ids.shape[0], n_expert), np.int64)  # [T, E]
    np.put_along_axis(onehot, topk_ids[:, layer, :].astype(np.int64), 1, axis=1)
    return onehot.T @ onehot


class RoutingPanel(InspectPanel):
    """MoE routing. Signal `openDemoRequested()` from the dense model's empty state."""

    DATA_KIND = "NumPy archive (*.npz)"
    openDemoRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Routing: no model", parent)
        self._tokens: list[TokenView] = []
        self._routing: RoutingView | None = None
        self._selected: int | None = None
        self._load: np.ndarray | None = None
        self.stack = QStackedWidget()
        self.body.addWidget(self.stack, 1)

        # the empty states
        self.empty = QWidget()
        ev = QVBoxLayout(self.empty)
        self.empty_label = QLabel(DENSE_TEXT)
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignCenter)
        self.demo_button = QPushButton("Open demo MoE")
        self.demo_button.clicked.connect(self.openDemoRequested)
        ev.addStretch(1)
        ev.addWidget(self.empty_label)
        ev.addWidget(self.demo_button, 0, Qt.AlignHCenter)
        ev.addStretch(1)
        self.stack.addWidget(self.empty)

        content = QWidget()
        cv = QVBoxLayout(content)
        cv.setContentsMargins(0, 0, 0, 0)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.layer_box = QComboBox()
        self.layer_box.setSizeAdjustPolicy(QComboBox.AdjustToContents)  # items come later
        self.layer_box.setToolTip("MoE layer for the load bars, the coloured text and the co-activation")
        self.layer_box.currentIndexChanged.connect(self._show_layer_views)
        self.tabs.setCornerWidget(self.layer_box, Qt.TopRightCorner)
        cv.addWidget(self.tabs, 1)
        self.stack.addWidget(content)

        # selected token: layers × experts probabilities, top-k boxed, weights listed
        self.token_map = HeatmapPlot()
        self.token_map.set_titles(x="expert", y="MoE layer", colorbar="router p")
        self.token_map.hover_text = self._token_hover
        self.topk_marks = pg.ScatterPlotItem(pxMode=False, symbol="s", size=0.86, brush=None)
        self.token_map.plot.addItem(self.topk_marks)
        self.weights_text = QPlainTextEdit()
        self.weights_text.setReadOnly(True)
        self.weights_text.setLineWrapMode(QPlainTextEdit.NoWrap)  # one layer per line
        self.weights_text.setMaximumWidth(WEIGHTS_MAX_W)
        f = self.weights_text.font()
        f.setFamily("monospace")
        f.setStyleHint(f.StyleHint.Monospace)
        self.weights_text.setFont(f)
        # experts of the groups a group-limited router dropped for this token: hatched
        self.dropped_fill = pg.ScatterPlotItem(pxMode=False, symbol="s", size=1.0, pen=None)
        self.dropped_hatch = pg.ScatterPlotItem(pxMode=False, symbol="s", size=1.0, pen=None)
        for item in (self.dropped_fill, self.dropped_hatch):
            self.token_map.plot.addItem(item)
        self.score_box = QComboBox()
        self.score_box.addItems(["Router scores", "Selection scores (score + bias)"])
        self.score_box.setToolTip("This router ranks experts by their score plus a learned "
                                  "selection bias; the bias decides who is chosen, never the weights")
        self.score_box.currentIndexChanged.connect(lambda _i: self._show_token())
        self.why_label = QLabel("")
        self.why_label.setWordWrap(True)
        self.why_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        split = QSplitter(Qt.Horizontal)
        split.addWidget(self.token_map)
        split.addWidget(self.weights_text)
        split.setStretchFactor(0, 1)
        token_tab = QWidget()
        tk = QVBoxLayout(token_tab)
        tk.setContentsMargins(0, 2, 0, 0)
        score_row = QHBoxLayout()
        score_row.addWidget(self.score_box)
        score_row.addStretch(1)
        tk.addLayout(score_row)
        tk.addWidget(split, 1)
        tk.addWidget(self.why_label)
        self.tabs.addTab(token_tab, "Selected token")

        # load: heatmap over all layers and bars for one
        self.load_map = HeatmapPlot(colormap="inferno")
        self.load_map.set_titles(x="expert", y="MoE layer", colorbar="share of tokens")
        self.load_map.hover_text = self._load_hover
        self.load_bars_widget = pg.PlotWidget()
        self.load_bars = pg.BarGraphItem(x=[], height=[], width=0.8)
        self.load_bars_widget.addItem(self.load_bars)
        self.uniform_line = pg.InfiniteLine(angle=0, movable=False)
        self.load_bars_widget.addItem(self.uniform_line)
        self.load_bars_widget.setLabel("bottom", "expert")
        self.load_bars_widget.setLabel("left", "tokens")
        load_tab = QSplitter(Qt.Vertical)
        load_tab.addWidget(self.load_map)
        load_tab.addWidget(self.load_bars_widget)
        self.tabs.addTab(load_tab, "Expert load")

        # text coloured by the first-choice expert
        self.text_view = QTextEdit()
        self.text_view.setReadOnly(True)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.RichText)
        text_tab = QWidget()
        tv = QVBoxLayout(text_tab)
        tv.setContentsMargins(0, 2, 0, 0)
        tv.addWidget(self.legend)
        tv.addWidget(self.text_view, 1)
        self.tabs.addTab(text_tab, "Text by expert")

        # co-activation
        self.coact_map = HeatmapPlot(colormap="inferno")
        self.coact_map.set_titles(x="expert", y="expert", colorbar="tokens")
        self.coact_map.hover_text = lambda r, c, v: f"experts {r} and {c} chosen together by {int(v)} tokens"
        self.tabs.addTab(self.coact_map, "Co-activation")
        self.tabs.currentChanged.connect(self._on_tab)
        self._text_dirty = False
        self._restyle_bars()
        self.set_routing(None)

    # -- public -------------------------------------------------------------------------------

    def set_tokens(self, tokens: list[TokenView]) -> None:
        self._tokens = list(tokens)
        self._show_layer_views()

    def set_routing(self, routing: RoutingView | None) -> None:
        """None: no model yet. `moe_layers == []`: a dense model (the empty state)."""
        self._routing = routing
        if routing is None or not routing.moe_layers:
            self.empty_label.setText("No model loaded." if routing is None else DENSE_TEXT)
            self.demo_button.setVisible(routing is not None)
            self.stack.setCurrentWidget(self.empty)
            self._load = None
            self._update_caption()
            return
        self.stack.setCurrentIndex(1)
        has_data = routing.topk_ids is not None and routing.topk_ids.shape[0] > 0
        self._load = expert_load(routing.topk_ids, routing.n_expert) if has_data else None
        keep = self.layer_box.currentIndex()
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems([f"layer {li}" for li in routing.moe_layers])
        self.layer_box.setCurrentIndex(keep if 0 <= keep < len(routing.moe_layers) else 0)
        self.layer_box.blockSignals(False)
        biased = routing.select_scores is not None
        self.score_box.setVisible(biased)
        if not biased:
            self.score_box.setCurrentIndex(0)
        e_labels = [f"e{e}" for e in range(routing.n_expert)]
        l_labels = [f"L{li}" for li in routing.moe_layers]
        for hm in (self.token_map, self.load_map):
            hm.set_axis_labels(e_labels, l_labels)
        self.coact_map.set_axis_labels(e_labels, e_labels)
        if self._load is not None:
            share = self._load / routing.topk_ids.shape[0]  # [L, E]
            self.load_map.set_image(share, levels=(0.0, max(1e-6, float(share.max()))))
        else:
            self.load_map.clear_image()
        self._show_token()
        self._show_layer_views()

    def set_selected(self, index: int | None) -> None:
        self._selected = index
        self._show_token()

    def set_layer(self, moe_index: int) -> None:
        """Choose the layer (an index into moe_layers) of the bars, text and co-activation."""
        self.layer_box.setCurrentIndex(moe_index)

    def token_image(self) -> np.ndarray | None:
        """The selected token's [L_moe, E] probabilities as drawn (None when not routed)."""
        return self.token_map.image_data()

    def topk_marked(self) -> list[tuple[int, int]]:
        """(moe layer index, expert) of every boxed cell."""
        x, y = self.topk_marks.getData()
        return [(int(b), int(a)) for a, b in zip(np.floor(x), np.floor(y))]

    def load_counts(self) -> np.ndarray | None:
        return self._load

    def bar_heights(self) -> np.ndarray:
        return np.asarray(self.load_bars.opts.get("height", []))

    def coactivation_image(self) -> np.ndarray | None:
        return self.coact_map.image_data()

    def weights_listing(self) -> str:
        return self.weights_text.toPlainText()

    def set_score_mode(self, mode: str) -> None:
        """The selected token's map shows "router" scores or "selection" scores (+ bias)."""
        self.score_box.setCurrentIndex(SCORE_MODES.index(mode))

    def selection_notes(self) -> str:
        """The lines under the map explaining picks the router score alone would not make."""
        return self.why_label.text()

    def dropped_marked(self) -> list[tuple[int, int]]:
        """(moe layer index, expert) of every cell hatched as in a dropped group."""
        x, y = self.dropped_hatch.getData()
        return [(int(b), int(a)) for a, b in zip(np.floor(x), np.floor(y))]

    def export_data(self, path: str | Path) -> None:
        """NPZ: moe_layers, start, probs [T, L, E], topk_ids, topk_weights, load [L, E],
        coactivation [L, E, E], and select_scores [T, L, E] / groups_kept [T, L, Gu] when the
        router has them."""
        r = self._routing
        if r is None or not r.moe_layers or r.topk_ids is None:
            raise ValueError("no routing to export")
        coact = np.stack([coactivation(r.topk_ids, li, r.n_expert) for li in range(len(r.moe_layers))])
        extra = {name: value for name, value in (("select_scores", r.select_scores),
                                                  ("groups_kept", r.groups_kept))
                 if value is not None}
        np.savez_compressed(path, moe_layers=np.asarray(r.moe_layers), start=r.start,
                            n_shared=r.n_shared, probs=r.probs, topk_ids=r.topk_ids,
                            topk_weights=r.topk_weights, load=self._load, coactivation=coact,
                            n_groups=r.n_groups, **extra)

    # -- internals ----------------------------------------------------------------------------

    def _t(self) -> int | None:
        """Row of the selected token in the routing arrays, None when it was not routed."""
        r = self._routing
        if r is None or self._selected is None or r.probs is None:
            return None
        t = self._selected - r.start
        return t if 0 <= t < r.probs.shape[0] else None

    def _show_token(self) -> None:
        r, t = self._routing, self._t()
        if r is None or not r.moe_layers:
            return
        if t is None:
            self.token_map.clear_image()
            self.topk_marks.setData(x=[], y=[])
            self._show_dropped([], [])
            self.why_label.setText("")
            self.why_label.setVisible(False)
            self.weights_text.setPlainText("Select a routed token to see its experts.")
            self._update_caption()
            return
        probs = r.probs[t]  # [L, E]
        if self._selection_mode():
            sel = r.select_scores[t]  # [L, E]; the bias may push scores below 0
            lo, hi = float(sel.min()), float(sel.max())
            self.token_map.set_titles(colorbar="score + bias")
            self.token_map.set_image(sel, levels=(lo, max(lo + 1e-6, hi)))
        else:
            self.token_map.set_titles(colorbar="router p" if r.gating == "softmax"
                                      else "router score (sigmoid)")
            self.token_map.set_image(probs, levels=(0.0, max(1e-6, float(probs.max()))))
        self._show_groups_and_why(t)
        ids = r.topk_ids[t]  # [L, k]
        ys, xs = np.nonzero(np.ones_like(ids, dtype=bool))
        self.topk_marks.setData(x=ids[ys, xs] + 0.5, y=ys + 0.5,
                                pen=pg.mkPen(self.palette().color(QPalette.Highlight), width=2.5))
        tok = self._tokens[self._selected] if self._selected < len(self._tokens) else None
        what = f"#{self._selected}" + (f" {token_text(tok.text, tok.id)}" if tok else "")
        lines = [what, "applied weights, best first"]
        for li, layer in enumerate(r.moe_layers):
            picks = "  ".join(f"e{int(e)} {float(w):.3f}" for e, w in zip(ids[li], r.topk_weights[t, li]))
            lines.append(f"L{layer:<3} {picks}")
        if r.n_shared:
            lines.append(f"+ {r.n_shared} shared expert{'s' if r.n_shared > 1 else ''}, always on")
        self.weights_text.setPlainText("\n".join(lines))
        # As wide as its lines (top-2 of 8 experts is short): the rest goes to the heatmap.
        fm = self.weights_text.fontMetrics()
        need = max(fm.horizontalAdvance(line) for line in lines) + 24
        self.weights_text.setMaximumWidth(min(WEIGHTS_MAX_W, need))
        self._update_caption()

    def _selection_mode(self) -> bool:
        r = self._routing
        return (r is not None and r.select_scores is not None
                and SCORE_MODES[max(0, self.score_box.currentIndex())] == "selection")

    def _show_dropped(self, xs: list[float], ys: list[float]) -> None:
        pal = self.palette()
        veil = QColor(pal.color(QPalette.Window))
        veil.setAlpha(170)
        self.dropped_fill.setData(x=xs, y=ys, brush=pg.mkBrush(veil))
        self.dropped_hatch.setData(x=xs, y=ys, brush=QBrush(pal.color(QPalette.WindowText),
                                                            Qt.BDiagPattern))

    def _show_groups_and_why(self, t: int) -> None:
        """Hatch the experts of dropped groups; explain picks the router score did not make."""
        r = self._routing
        kept = r.groups_kept[t] if r.groups_kept is not None and r.n_groups > 1 else None  # [L, Gu]
        xs, ys = [], []
        if kept is not None:
            for li in range(len(r.moe_layers)):
                keep = {int(g) for g in kept[li]}
                for e in range(r.n_expert):
                    if group_of(e, r.n_expert, r.n_groups) not in keep:
                        xs.append(e + 0.5)
                        ys.append(li + 0.5)
        self._show_dropped(xs, ys)
        lines = []
        if r.select_scores is not None or kept is not None:
            for li, layer in enumerate(r.moe_layers):
                sel = r.select_scores[t, li] if r.select_scores is not None else None
                for e, u, why, bias in surprising_picks(
                        r.probs[t, li], r.topk_ids[t, li], sel,
                        None if kept is None else kept[li], r.n_groups):
                    reason = (f"e{u}'s group was dropped" if why == "group"
                              else f"{bias:+.2f} selection bias")
                    lines.append(f"L{layer}: e{e} chosen over e{u}: {reason}")
        if len(lines) > MAX_WHY_LINES:
            lines = lines[:MAX_WHY_LINES] + [f"… and {len(lines) - MAX_WHY_LINES} more"]
        if not lines and (r.select_scores is not None or kept is not None):
            lines = ["Every pick is also among this token's best router scores."]
        self.why_label.setText("\n".join(lines))
        self.why_label.setVisible(bool(lines))

    def _layer_index(self) -> int:
        return max(0, self.layer_box.currentIndex())

    def _show_layer_views(self) -> None:
        r = self._routing
        if r is None or not r.moe_layers:
            return
        li = self._layer_index()
        if self._load is None:
            self.load_bars.setOpts(x=[], height=[])
            self.coact_map.clear_image()
            self.text_view.setPlainText("No routed tokens yet.")
            self._update_caption()
            return
        counts = self._load[li]
        self.load_bars.setOpts(x=np.arange(r.n_expert), height=counts.astype(float), width=0.8)
        self.uniform_line.setValue(r.topk_ids.shape[0] * r.n_used / r.n_expert)
        self.load_bars_widget.setTitle(f"Layer {r.moe_layers[li]}: tokens per expert "
                                       "(line: a perfectly balanced load)",
                                       color=self.palette().color(QPalette.WindowText))
        self.load_bars_widget.getPlotItem().getAxis("bottom").setTicks(
            [[(e, str(e)) for e in range(0, r.n_expert, max(1, r.n_expert // 16))]])
        coact = coactivation(r.topk_ids, li, r.n_expert).astype(np.float32)
        np.fill_diagonal(coact, 0.0)  # the diagonal is the load: it would drown the pairs
        self.coact_map.set_image(coact, levels=(0.0, max(1.0, float(coact.max()))))
        self._text_dirty = True
        if self.tabs.currentIndex() == TEXT_TAB:
            self._show_text()
        self._update_caption()

    def _show_text(self) -> None:
        """Rebuilt only when its tab is shown: it is the one costly view on long conversations."""
        r = self._routing
        if r is None or not r.moe_layers or r.topk_ids is None or not self._text_dirty:
            return
        self._text_dirty = False
        li = self._layer_index()
        pal = self.palette()
        first = r.topk_ids[:, li, 0]  # [T]
        lo = max(0, len(first) - MAX_TEXT_TOKENS)
        parts = []
        for t in range(lo, len(first)):
            pos = r.start + t
            tok = self._tokens[pos] if pos < len(self._tokens) else None
            text = tok.text if tok is not None else ""
            shown = html.escape(text if text and "\ufffd" not in text else token_text(text, tok.id if tok else None))
            shown = shown.replace("\n", "↵<br>")
            bg = tint(pal, category_color(int(first[t])), 0.55).name()
            parts.append(f'<span style="background-color:{bg}" title="#{pos} expert {int(first[t])}">{shown}</span>')
        self.text_view.setHtml('<div style="white-space: pre-wrap">' + "".join(parts) + "</div>")
        used = np.unique(first)
        self.legend.setText(f"First-choice expert at layer {r.moe_layers[li]}: " + " ".join(
            f'<span style="background-color:{tint(pal, category_color(int(e)), 0.55).name()}">'
            f"&nbsp;e{int(e)}&nbsp;</span>" for e in used))

    def _token_hover(self, row: int, col: int, value: float) -> str:
        r, t = self._routing, self._t()
        if r is None or t is None:
            return ""
        ids = r.topk_ids[t, row]
        chosen = f", chosen #{list(ids).index(col) + 1}" if col in ids else ""
        text = f"layer {r.moe_layers[row]}, expert {col}: p = {float(r.probs[t, row, col]):.4f}"
        if r.select_scores is not None:
            text += f", score + bias = {float(r.select_scores[t, row, col]):.4f}"
        if r.groups_kept is not None and r.n_groups > 1 and group_of(
                col, r.n_expert, r.n_groups) not in {int(g) for g in r.groups_kept[t, row]}:
            text += f", group {group_of(col, r.n_expert, r.n_groups)} dropped"
        return text + chosen

    def _load_hover(self, row: int, col: int, value: float) -> str:
        r = self._routing
        n = int(self._load[row, col]) if self._load is not None else 0
        return f"layer {r.moe_layers[row]}, expert {col}: chosen by {n} tokens ({100 * value:.1f} %)"

    def _on_tab(self, index: int) -> None:
        self.layer_box.setEnabled(index != 0)  # the selected token's map shows every layer
        if index == TEXT_TAB:
            self._show_text()
        self._update_caption()

    def restyle(self) -> None:
        self._text_dirty = True
        self._restyle_bars()
        self._show_token()
        self._show_layer_views()

    def _restyle_bars(self) -> None:
        plot = self.load_bars_widget.getPlotItem()
        self.load_bars_widget.setBackground(self.palette().color(QPalette.Base))
        style_plot(plot, self)
        accent = self.palette().color(QPalette.Highlight)
        self.load_bars.setOpts(brush=pg.mkBrush(accent), pen=pg.mkPen(accent))
        self.uniform_line.setPen(pg.mkPen(self.palette().color(QPalette.WindowText), style=Qt.DashLine))

    def _update_caption(self) -> None:
        r = self._routing
        if r is None:
            self.set_caption("Routing: no model loaded")
            return
        if not r.moe_layers:
            self.set_caption("Routing: dense model")
            return
        shared = (f"; + {r.n_shared} shared expert{'s' if r.n_shared > 1 else ''}, always on"
                  if r.n_shared else "")
        head = f"Routing: {r.n_expert} experts, top-{r.n_used} ({r.gating}) at {len(r.moe_layers)} layers{shared}"
        tab = self.tabs.currentIndex()
        n = 0 if r.topk_ids is None else r.topk_ids.shape[0]
        if tab == 0:
            t = self._t()
            shown = "score + selection bias" if self._selection_mode() else "router probabilities"
            groups = ", experts of dropped groups hatched" if r.groups_kept is not None else ""
            what = (f" · token #{self._selected}: {shown}, chosen experts boxed{groups}"
                    if t is not None else " · select a routed token")
        elif tab == 1:
            what = f" · share of {n} tokens that chose each expert"
        elif tab == 2:
            what = f" · {n} tokens coloured by their first-choice expert"
        else:
            what = " · tokens that chose both experts (diagonal left blank: see the load)"
        self.set_caption(head + what)

