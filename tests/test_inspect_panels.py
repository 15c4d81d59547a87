"""The inspection panels (`ui/inspect/`) and the shared `HeatmapPlot`, driven headless.

Synthetic but realistic data (causal softmax attention with sliding windows, softmax routers
with top-k, per-token timings): every check compares what a panel shows (image arrays, table
cells, plotted curves, bars) with a reference computed here from the same data.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from ui.chat.theme import dark_palette
from ui.inspect.attention_panel import AttentionPanel
from ui.inspect.logit_lens_panel import LensTableModel, LogitLensPanel, ProbRole
from ui.inspect.model import (AttentionView, LensView, ReplyTimings, RoutingView,
                              ThroughputSample, TokenView)
from ui.inspect.panel import category_color, tint
from ui.inspect.routing_panel import DENSE_TEXT, RoutingPanel
from ui.inspect.throughput_panel import ThroughputPanel, summary_line
from ui.inspect.token_probs_panel import TokenProbsPanel
from ui.inspect.token_strip import TokenStrip
from ui.widgets.heatmap import HeatmapPlot

WORDS = ("The quick brown fox jumps over the lazy dog . Then it runs into the forest and "
         "finds a small river where the water is cold and clear .").split()


# -- synthetic data ---------------------------------------------------------------------------

def make_tokens(n_prompt: int = 24, n_gen: int = 36, seed: int = 0) -> list[TokenView]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_prompt + n_gen):
        gen = i >= n_prompt
        text = "\n" if i == n_prompt - 1 else (" " if i else "") + WORDS[i % len(WORDS)]
        prob = float(rng.uniform(0.05, 0.95)) if gen else None
        top: tuple = ()
        if gen:
            rest = np.sort(rng.dirichlet(np.ones(4)) * (1 - prob))[::-1]
            alts = [(1000 + k, f" alt{k}", float(p)) for k, p in enumerate(rest)]
            top = tuple(sorted([(100 + i, text, prob)] + alts, key=lambda a: -a[2]))
        out.append(TokenView(index=i, id=100 + i, text=text, role="assistant" if gen else "user",
                             generated=gen, message=1 if gen else 0, prob=prob, top=top))
    return out


def causal_attention(rng, n_layers: int, n_heads: int, t: int, windows) -> np.ndarray:
    """[L, H, T, T] softmax over keys ≤ query (and inside the window), zeros elsewhere."""
    out = np.zeros((n_layers, n_heads, t, t), np.float32)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    for layer in range(n_layers):
        logits = rng.normal(size=(n_heads, t, t)) * 1.5 - 0.05 * (i - j)
        mask = j > i
        if windows[layer]:
            mask = mask | (j <= i - windows[layer])
        logits = np.where(mask, -np.inf, logits)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        out[layer] = e / e.sum(-1, keepdims=True)
    return out


def make_attention(t: int = 60, q: int = 50, seed: int = 0, kinds=("sliding", "global", "sliding", "mla")):
    rng = np.random.default_rng(seed)
    windows = [16 if k == "sliding" else None for k in kinds]
    a = causal_attention(rng, len(kinds), 4, t, windows)
    view = AttentionView(query=q, rows=[a[layer, :, q, :q + 1].copy() for layer in range(len(kinds))],
                         window=windows, kv_head=[0, 0, 1, 1], layer_kind=list(kinds),
                         matrix_layer=2, range_start=10, matrix=a[2, :, 10:58, 10:58].copy())
    return view, a


def make_routing(t: int = 60, n_layers: int = 3, n_expert: int = 8, k: int = 2, seed: int = 0,
                 start: int = 0) -> RoutingView:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(t, n_layers, n_expert)) * 2
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    ids = np.argsort(-probs, axis=-1, kind="stable")[..., :k].astype(np.int32)  # [T, L, k]
    w = np.take_along_axis(probs, ids, -1)
    w = (w / w.sum(-1, keepdims=True)).astype(np.float32)
    return RoutingView(moe_layers=list(range(1, n_layers + 1)), n_expert=n_expert, n_used=k,
                       n_shared=2, start=start, probs=probs.astype(np.float32), topk_ids=ids,
                       topk_weights=w)


def make_timings(seed: int = 0, n: int = 128, prompt: int = 34) -> ReplyTimings:
    rng = np.random.default_rng(seed)
    secs = tuple(float(x) for x in rng.gamma(20, 0.0005, size=n))
    return ReplyTimings(prompt, 612.1, 0.06, n, n / sum(secs), secs, 36864, 36864 * (prompt + n),
                        1_300_000_000)


def make_lens(n_layers: int = 6, k: int = 5, seed: int = 0) -> LensView:
    """Later layers grow more confident, and the next token (id 7) wins from layer 3 on."""
    rng = np.random.default_rng(seed)
    vocab = np.array([i for i in range(60) if i != 7])
    ids = np.stack([rng.permutation(vocab)[:k] for _ in range(n_layers)]).astype(np.int32)
    ids[3:, 0] = 7
    ids[1, 2] = 7
    probs = np.zeros((n_layers, k), np.float32)
    for layer in range(n_layers):
        logits = np.sort(rng.normal(size=60))[::-1] * (0.5 + layer)
        p = np.exp(logits - logits.max())
        probs[layer] = (p / p.sum())[:k]
    texts = [[f" w{int(i)}" for i in row] for row in ids]
    ranks = [int(np.nonzero(row == 7)[0][0]) if 7 in row else 40 for row in ids]
    return LensView(position=12, ids=ids, probs=probs, texts=texts, chosen_id=7, chosen_rank=ranks)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path, min_w: int, min_h: int) -> QImage:
    assert path.stat().st_size > 1000
    img = QImage(str(path))
    assert not img.isNull() and img.width() >= min_w and img.height() >= min_h
    return img


# -- HeatmapPlot ------------------------------------------------------------------------------

def test_heatmap_shows_the_matrix_and_maps_cells(qtbot):
    hm = HeatmapPlot()
    qtbot.addWidget(hm)
    hm.resize(500, 400)
    hm.show()
    qtbot.waitExposed(hm)
    img = np.random.default_rng(1).random((30, 40)).astype(np.float32)
    hm.set_image(img)
    np.testing.assert_array_equal(hm.image_data(), img)
    assert hm.levels() == pytest.approx((float(img.min()), float(img.max())))
    vb = hm.plot.vb
    assert hm.cell_at(vb.mapViewToScene(QPointF(7.5, 3.5))) == (3, 7)  # row 3, column 7
    assert hm.cell_at(vb.mapViewToScene(QPointF(45.0, 3.5))) is None
    with qtbot.waitSignal(hm.cellClicked) as sig:
        pos = hm.mapFromScene(vb.mapViewToScene(QPointF(12.5, 20.5)))
        qtbot.mouseClick(hm.viewport(), Qt.LeftButton, pos=pos)
    assert sig.args == [20, 12]


def test_heatmap_thins_tick_labels_to_fit(qtbot):
    hm = HeatmapPlot()
    qtbot.addWidget(hm)
    hm.resize(400, 300)
    hm.show()
    qtbot.waitExposed(hm)
    hm.set_image(np.zeros((300, 300), np.float32))
    labels = [f"token{i:03d}" for i in range(300)]
    hm.set_axis_labels(labels, labels)
    ticks = hm.axis_ticks("bottom")
    assert 2 <= len(ticks) < 60  # 300 labels cannot fit in ~350 px
    assert all(labels[int(pos - 0.5)] == text for pos, text in ticks)  # each at its cell centre
    hm.plot.vb.setXRange(100, 104, padding=0)  # zoomed in: every cell labelled
    assert [t for _p, t in hm.axis_ticks("bottom")] == labels[100:104]


# -- TokenStrip -------------------------------------------------------------------------------

@pytest.fixture
def strip(qtbot):
    s = TokenStrip()
    qtbot.addWidget(s)
    s.resize(420, 300)
    s.show()
    qtbot.waitExposed(s)
    return s


def test_token_strip_layout_wraps_without_overlap(strip):
    tokens = make_tokens()
    strip.set_tokens(tokens)
    rects = [strip.token_rect(i) for i in range(len(tokens))]
    width = strip.canvas.width()
    for i, r in enumerate(rects):
        assert r.left() >= 0 and r.right() < width
        if i:
            prev = rects[i - 1]
            assert r.top() > prev.top() or r.left() > prev.right()  # reading order, no overlap
    newline_at = next(i for i, t in enumerate(tokens) if t.text == "\n")
    assert rects[newline_at + 1].left() == 0 and rects[newline_at + 1].top() > rects[newline_at].top()
    # streaming lays out like the whole list at once
    strip.set_tokens(tokens[:10])
    strip.append_tokens(tokens[10:40])
    strip.append_tokens(tokens[40:])
    assert [strip.token_rect(i) for i in range(len(tokens))] == rects
    assert strip.tokens() == tokens


def test_token_strip_click_keys_and_signals(qtbot, strip):
    tokens = make_tokens()
    strip.set_tokens(tokens)
    with qtbot.waitSignal(strip.tokenSelected) as sig:
        qtbot.mouseClick(strip.canvas, Qt.LeftButton, pos=strip.token_rect(5).center())
    assert sig.args == [5] and strip.selected() == 5
    seen = []
    strip.tokenSelected.connect(seen.append)
    for key in (Qt.Key_Right, Qt.Key_Right, Qt.Key_Left, Qt.Key_End, Qt.Key_Right, Qt.Key_Home, Qt.Key_Left):
        qtbot.keyClick(strip.canvas, key)
    assert seen == [6, 7, 6, len(tokens) - 1, 0]  # no signal when the selection cannot move
    assert strip.selected() == 0
    strip.set_selected(9)  # programmatic: no signal
    assert strip.selected() == 9 and seen[-1] == 0
    with qtbot.waitSignal(strip.pinnedChanged) as pin:
        strip.pin_button.click()
    assert pin.args == [True] and strip.pinned()
    tip = strip.tooltip(30)
    assert f"id {tokens[30].id}" in tip and repr(tokens[30].text) in tip and f"{tokens[30].prob:.4g}" in tip


def test_token_strip_colour_modes(strip):
    tokens = make_tokens()
    strip.set_tokens(tokens)
    strip.set_color_mode("none")
    assert strip.token_color(0) is None and strip.token_color(30) is not None  # reply tokens tinted
    strip.set_color_mode("probability")
    gen = [i for i, t in enumerate(tokens) if t.generated]
    lo, hi = min(gen, key=lambda i: tokens[i].prob), max(gen, key=lambda i: tokens[i].prob)
    base = strip.palette().color(strip.palette().ColorRole.Base)

    def distance(c):  # how far from the background: stronger colour = likelier here
        return abs(c.red() - base.red()) + abs(c.green() - base.green()) + abs(c.blue() - base.blue())
    assert distance(strip.token_color(hi)) > distance(strip.token_color(lo))
    assert strip.token_color(0) is None  # a prompt token has no probability
    strip.set_color_mode("surprise")
    assert distance(strip.token_color(lo)) > distance(strip.token_color(hi))
    routing = make_routing()
    strip.set_routing(routing)
    strip.set_color_mode("expert")
    strip.set_expert_layer(2)
    assert strip.expert_layer() == 2 and "layer 2" in strip.caption()
    for i in (0, 17, 59):
        e = int(routing.topk_ids[i, 1, 0])  # layer 2 is moe index 1
        assert strip.expert_of(i) == e
        assert strip.token_color(i) == tint(strip.palette(), category_color(e), 0.6)


def test_token_strip_export_and_many_tokens(strip, tmp_path):
    tokens = make_tokens()
    strip.set_tokens(tokens)
    strip.export_data(tmp_path / "tokens.csv")
    rows = read_csv(tmp_path / "tokens.csv")
    assert [int(r["id"]) for r in rows] == [t.id for t in tokens]
    assert [r["text"] for r in rows] == [t.text for t in tokens]
    for r, t in zip(rows, tokens):
        assert (r["prob"] == "") == (t.prob is None)
        if t.prob is not None:
            assert float(r["prob"]) == pytest.approx(t.prob)
            assert float(r["surprise"]) == pytest.approx(-math.log(t.prob))
    many = [TokenView(i, i % 500, f" w{i}", "user") for i in range(6000)]
    strip.set_tokens(many[:3000])
    strip.append_tokens(many[3000:])
    last = strip.token_rect(5999)
    assert last.bottom() < strip.canvas.minimumHeight()
    strip.set_selected(5999)
    assert strip.scroll.verticalScrollBar().value() > 0  # scrolled to the selection


# -- AttentionPanel ---------------------------------------------------------------------------

@pytest.fixture
def attention(qtbot):
    p = AttentionPanel()
    qtbot.addWidget(p)
    p.resize(800, 500)
    p.show()
    qtbot.waitExposed(p)
    p.set_tokens(make_tokens())
    return p


def test_attention_matrix_modes_show_the_data(attention):
    view, full = make_attention()
    attention.set_attention(view)
    assert attention.layer_head() == (2, 0)  # starts on the layer the matrix covers
    attention.set_view_mode("head")
    np.testing.assert_array_equal(attention.matrix_image(), view.matrix[0])
    attention.set_layer_head(2, 3)
    np.testing.assert_array_equal(attention.matrix_image(), view.matrix[3])
    attention.set_view_mode("mean")
    np.testing.assert_allclose(attention.matrix_image(), view.matrix.mean(axis=0), rtol=1e-6)
    attention.set_view_mode("layers")
    ref = np.stack([full[layer, :, 50, :51].mean(axis=0) for layer in range(4)])
    np.testing.assert_allclose(attention.matrix_image(), ref, rtol=1e-6)
    assert np.allclose(attention.matrix_image().sum(axis=1), 1.0, atol=1e-5)  # softmax rows
    attention.set_view_mode("head")
    assert "sliding window 16" in attention.matrix_note.text()
    assert "h3 (kv 1)" in attention.matrix_note.text()


def test_attention_grid_and_labels(qtbot, attention):
    view, _ = make_attention()
    attention.set_attention(view)
    attention.tabs.setCurrentIndex(0)
    grid = attention.grid
    np.testing.assert_array_equal(np.stack(grid._rows), np.stack(view.rows))
    assert [attention.head_box.itemText(h) for h in range(4)] == ["h0 (kv 0)", "h1 (kv 0)",
                                                                 "h2 (kv 1)", "h3 (kv 1)"]
    assert attention.layer_box.itemText(3) == "layer 3 (MLA)"
    with qtbot.waitSignal(attention.layerHeadChosen) as sig:
        qtbot.mouseClick(grid, Qt.LeftButton, pos=grid.cell_rect(1, 2).center())
    assert sig.args == [1, 2] and attention.layer_head() == (1, 2)
    assert attention.tabs.currentIndex() == 1  # the click opens the matrix
    assert "(layer 1 requested)" in attention.matrix_note.text()  # until the app answers
    with qtbot.waitSignal(attention.layerHeadChosen) as sig:
        attention.head_box.setCurrentIndex(3)
    assert sig.args == [1, 3]
    # head view: the chosen layer's row; keys hidden by nothing, so all 51 > 24 are thinned
    attention.tabs.setCurrentIndex(2)
    shown = attention.head_view.shown_keys()
    strongest = view.rows[1].max(axis=0)
    assert len(shown) == 24 and set(shown) == set(np.argsort(-strongest, kind="stable")[:24].tolist())
    attention.set_layer_head(0, 0)  # sliding layer: only the 16 keys in the window have weight
    assert attention.head_view.shown_keys() == list(range(35, 51))
    attention.set_heads_shown({1})
    assert attention.head_view.heads_enabled() == {1}
    assert [b.isChecked() for b in attention._head_buttons] == [False, True, False, False]


def test_attention_range_request_and_export(qtbot, attention, tmp_path):
    view, _ = make_attention()
    attention.set_attention(view)
    assert attention.range_start.value() == 10 and attention.range_len.value() == 48
    attention.range_start.setValue(5)
    attention.range_len.setValue(512)
    with qtbot.waitSignal(attention.rangeRequested) as sig:
        attention.range_button.click()
    assert sig.args == [5, 60]  # clipped to the 60 tokens of the conversation
    attention.set_view_mode("mean")
    attention.export_data(tmp_path / "att.npz")
    data = np.load(tmp_path / "att.npz")
    np.testing.assert_array_equal(data["rows"], np.stack(view.rows))
    np.testing.assert_array_equal(data["matrix"], view.matrix)
    np.testing.assert_allclose(data["shown"], view.matrix.mean(axis=0), rtol=1e-6)
    assert list(data["window"]) == [16, -1, 16, -1] and int(data["query"]) == 50
    assert list(data["layer_kind"]) == ["sliding", "global", "sliding", "mla"]


# -- RoutingPanel -----------------------------------------------------------------------------

@pytest.fixture
def routing_panel(qtbot):
    p = RoutingPanel()
    qtbot.addWidget(p)
    p.resize(800, 500)
    p.show()
    qtbot.waitExposed(p)
    p.set_tokens(make_tokens())
    return p


def test_routing_selected_token(routing_panel):
    r = make_routing(start=4, t=56)
    routing_panel.set_routing(r)
    routing_panel.set_selected(30)
    t = 30 - 4
    np.testing.assert_array_equal(routing_panel.token_image(), r.probs[t])
    expected = {(li, int(e)) for li in range(3) for e in r.topk_ids[t, li]}
    assert set(routing_panel.topk_marked()) == expected
    listing = routing_panel.weights_listing()
    for li in range(3):
        for e, w in zip(r.topk_ids[t, li], r.topk_weights[t, li]):
            assert f"e{int(e)} {float(w):.3f}" in listing
    assert "+ 2 shared experts, always on" in listing and "2 shared experts" in routing_panel.caption()
    routing_panel.set_selected(2)  # before the routed span
    assert routing_panel.token_image() is None


def test_routing_load_coactivation_and_text(routing_panel):
    r = make_routing()
    routing_panel.set_routing(r)
    ref = np.zeros((3, 8), int)
    for t in range(60):
        for li in range(3):
            for e in r.topk_ids[t, li]:
                ref[li, e] += 1
    np.testing.assert_array_equal(routing_panel.load_counts(), ref)
    np.testing.assert_allclose(routing_panel.load_map.image_data(), ref / 60, rtol=1e-6)
    routing_panel.set_layer(1)
    np.testing.assert_array_equal(routing_panel.bar_heights(), ref[1])
    co = np.zeros((8, 8), int)
    for t in range(60):
        chosen = r.topk_ids[t, 1]
        for a in chosen:
            for b in chosen:
                co[a, b] += 1
    assert np.array_equal(np.diag(co), ref[1])  # the diagonal is the load
    np.fill_diagonal(co, 0)
    np.testing.assert_array_equal(routing_panel.coactivation_image(), co)
    routing_panel.tabs.setCurrentIndex(2)  # the text is built when its tab shows
    html = routing_panel.text_view.toHtml()
    first = int(r.topk_ids[0, 1, 0])
    assert tint(routing_panel.palette(), category_color(first), 0.55).name() in html
    assert "jumps" in routing_panel.text_view.toPlainText()


def test_routing_dense_empty_state_and_export(qtbot, routing_panel, tmp_path):
    routing_panel.set_routing(RoutingView(moe_layers=[], n_expert=0, n_used=0, n_shared=0))
    assert routing_panel.stack.currentWidget() is routing_panel.empty
    assert routing_panel.empty_label.text() == DENSE_TEXT and routing_panel.demo_button.isVisible()
    with qtbot.waitSignal(routing_panel.openDemoRequested):
        routing_panel.demo_button.click()
    with pytest.raises(ValueError):
        routing_panel.export_data(tmp_path / "none.npz")
    r = make_routing()
    routing_panel.set_routing(r)
    assert routing_panel.stack.currentWidget() is not routing_panel.empty
    routing_panel.export_data(tmp_path / "routing.npz")
    data = np.load(tmp_path / "routing.npz")
    np.testing.assert_array_equal(data["topk_ids"], r.topk_ids)
    np.testing.assert_array_equal(data["probs"], r.probs)
    np.testing.assert_array_equal(data["load"], routing_panel.load_counts())
    assert data["coactivation"].shape == (3, 8, 8)
    assert np.array_equal(np.diagonal(data["coactivation"], axis1=1, axis2=2), data["load"])


# -- ThroughputPanel --------------------------------------------------------------------------

def test_summary_line_format():
    t = ReplyTimings(34, 612.1, 0.06, 4, 92.4, (0.0001, 0.011, 0.010, 0.012))
    secs = np.array(t.per_token_s)[1:]  # the first token's time is in the TTFT, not a decode step
    assert summary_line(t) == (f"prompt 34 tok @ 612.1 tok/s · first token 0.06 s · 4 tok @ 92.4 tok/s "
                               f"({1000 * secs.mean():.1f} ms/tok, p95 {1000 * np.percentile(secs, 95):.1f} ms)")
    assert summary_line(ReplyTimings(3, 50.0, None, 10, 20.0)) == "prompt 3 tok @ 50.0 tok/s · 10 tok @ 20.0 tok/s (50.0 ms/tok)"


def test_throughput_live_and_history(qtbot, tmp_path):
    p = ThroughputPanel()
    qtbot.addWidget(p)
    p.show()
    t1, t2 = make_timings(1), make_timings(2, n=64, prompt=100)
    p.reply_started(t1.prompt_tokens)
    p.prompt_done(t1.prompt_tokens, 0.05, 680.0)
    samples = [ThroughputSample(i, s) for i, s in enumerate(t1.per_token_s)]
    for k in range(0, len(samples), 10):  # batches, as the app sends them
        p.add_samples(samples[k:k + 10])
    # the 10 Hz timer draws the decode steps: every token but the first (sampled from the prompt)
    qtbot.waitUntil(lambda: len(p.live_data()[0]) == len(samples) - 1, timeout=5000)
    x, y = p.live_data()
    np.testing.assert_array_equal(x, np.arange(1, len(samples)))
    np.testing.assert_allclose(y, 1.0 / np.array(t1.per_token_s[1:]))
    assert p.stats["TTFT"].text() == f"{0.05 + t1.per_token_s[0]:.2f} s"
    p.reply_finished(t1)
    p.set_memory(1_300_000_000, 36864, 36864 * 162, "MLA latent cache")
    assert p.summary.text() == summary_line(t1)
    assert p.stats["Cache"].text() == "36.00 KiB/tok · 5.70 MiB"
    assert p._stat_captions["Cache"].text() == "MLA latent cache"
    p.reply_started(t2.prompt_tokens)
    p.add_samples([ThroughputSample(i, s) for i, s in enumerate(t2.per_token_s)])
    p.reply_finished(t2)
    n, speed, ttft = p.history_data()
    np.testing.assert_array_equal(n, [1, 2])
    np.testing.assert_allclose(speed, [t1.gen_tok_s, t2.gen_tok_s])
    np.testing.assert_allclose(ttft, [t1.ttft_s, t2.ttft_s])
    p.export_data(tmp_path / "speed.csv")
    rows = read_csv(tmp_path / "speed.csv")
    assert [int(r["gen_tokens"]) for r in rows] == [128, 64]
    assert float(rows[1]["gen_tok_s"]) == pytest.approx(t2.gen_tok_s)
    assert float(rows[0]["ms_per_tok_p95"]) == pytest.approx(1000 * np.percentile(t1.per_token_s[1:], 95))
    assert rows[1]["summary"] == summary_line(t2)
    restored = ThroughputPanel()
    qtbot.addWidget(restored)
    restored.set_history([t1, t2])
    assert restored.history() == [t1, t2] and restored.summary.text() == summary_line(t2)
    np.testing.assert_allclose(restored.live_data()[1], 1.0 / np.array(t2.per_token_s[1:]))


# -- TokenProbsPanel --------------------------------------------------------------------------

def test_token_probs_generated_and_prompt(qtbot, tmp_path):
    p = TokenProbsPanel()
    qtbot.addWidget(p)
    tokens = make_tokens()
    tok = tokens[30]
    p.set_token(tok, {"temperature": 0.7, "top_k": 40, "top_p": 0.95})
    rows = p.rows()
    assert [(r[1], r[3]) for r in rows] == [(a[0], a[2]) for a in tok.top]
    assert [r[4] for r in rows] == [a[0] == tok.id for a in tok.top] and sum(r[4] for r in rows) == 1
    assert "temperature 0.7 · top k 40 · top p 0.95" in p.sampling_label.text()
    # the chosen token outside the listed alternatives is added below them
    outside = TokenView(40, 555, " zebra", "assistant", True, prob=0.004,
                        top=((1, " a", 0.6), (2, " b", 0.3)))
    p.set_token(outside, {})
    assert p.rows()[-1] == (None, 555, " zebra", 0.004, True) and "not in the top list" in p.status_text()
    p.export_data(tmp_path / "probs.csv")
    assert [(r["rank"], r["id"], r["text"], float(r["prob"]), r["chosen"]) for r in read_csv(tmp_path / "probs.csv")] == [
        ("1", "1", " a", 0.6, "0"), ("2", "2", " b", 0.3, "0"), ("", "555", " zebra", 0.004, "1")]
    p.set_token(tokens[3])
    assert p.status_text() == "prompt token: not sampled" and p.rows() == []
    p.set_token(TokenView(3, 9, " x", "user", prob=0.25))
    assert "teacher-forced p = 0.25" in p.status_text()


# -- LogitLensPanel ---------------------------------------------------------------------------

def test_lens_model_passes_modeltester(qtmodeltester):
    model = LensTableModel()
    model.set_lens(make_lens())
    qtmodeltester.check(model)
    model.set_lens(LensView(position=3, ids=np.zeros((2, 3), np.int32), probs=np.zeros((2, 3), np.float32),
                            texts=[["a"] * 3] * 2))
    qtmodeltester.check(model)
    model.set_lens(None)
    qtmodeltester.check(model)


def test_lens_panel_cells_rank_busy_export(qtbot, tmp_path):
    p = LogitLensPanel()
    qtbot.addWidget(p)
    lens = make_lens()
    p.set_busy(True)
    assert p.is_busy() and not p.table.isEnabled() and "computing" in p.caption()
    p.set_lens(lens)
    assert not p.is_busy() and p.table.isEnabled()
    m = p.model
    assert (m.rowCount(), m.columnCount()) == (6, 6)
    for layer in range(6):
        for r in range(5):
            idx = m.index(layer, r)
            assert m.data(idx, ProbRole) == pytest.approx(float(lens.probs[layer, r]))
            assert m.data(idx).startswith(lens.texts[layer][r].replace(" ", "·"))
            is_chosen = lens.ids[layer, r] == 7
            assert (m.data(idx, Qt.FontRole) is not None) == is_chosen
        assert m.data(m.index(layer, 5)) == str(lens.chosen_rank[layer] + 1)
    assert m.headerData(5, Qt.Horizontal) == "chosen rank" and m.headerData(0, Qt.Vertical) == "layer 0"
    # shading follows probability
    light = m.data(m.index(0, 4), Qt.BackgroundRole).color()
    strong = m.data(m.index(0, 1), Qt.BackgroundRole).color()
    assert light != strong
    p.export_data(tmp_path / "lens.csv")
    rows = read_csv(tmp_path / "lens.csv")
    assert len(rows) == 30
    got = np.array([float(r["prob"]) for r in rows]).reshape(6, 5)
    np.testing.assert_allclose(got, lens.probs, rtol=1e-6)
    assert [int(rows[5 * layer]["chosen_rank"]) for layer in range(6)] == [c + 1 for c in lens.chosen_rank]


# -- export and screenshots -------------------------------------------------------------------

def _filled_panels(qtbot):
    tokens = make_tokens()
    view, _ = make_attention()
    routing = make_routing()
    strip = TokenStrip()
    strip.set_tokens(tokens)
    strip.set_routing(routing)
    strip.set_color_mode("probability")
    strip.set_selected(30)
    att = AttentionPanel()
    att.set_tokens(tokens)
    att.set_attention(view)
    att.tabs.setCurrentIndex(1)
    route = RoutingPanel()
    route.set_tokens(tokens)
    route.set_routing(routing)
    route.set_selected(30)
    speed = ThroughputPanel()
    speed.set_history([make_timings(1), make_timings(2, prompt=90), make_timings(3, prompt=200)])
    speed.set_memory(1_300_000_000, 36864, 36864 * 400, "KV cache")
    probs = TokenProbsPanel()
    probs.set_token(tokens[30], {"temperature": 0.7, "top_k": 40})
    lens = LogitLensPanel()
    lens.set_lens(make_lens())
    panels = dict(strip=strip, attention=att, routing=route, throughput=speed, probs=probs, lens=lens)
    for w in panels.values():
        qtbot.addWidget(w)
        w.resize(760, 440)
        w.show()
        qtbot.waitExposed(w)
    return panels


def test_export_png_at_one_and_two_times(qtbot, tmp_path):
    for name, panel in _filled_panels(qtbot).items():
        panel.export_png(tmp_path / f"{name}.png")
        one = assert_png(tmp_path / f"{name}.png", 700, 400)
        panel.export_png(tmp_path / f"{name}@2x.png", scale=2)
        two = assert_png(tmp_path / f"{name}@2x.png", 1400, 800)
        assert (two.width(), two.height()) == (2 * one.width(), 2 * one.height())


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_screenshots(qtbot, tmp_path, theme):
    """Screenshots of every panel; set LLMLENS_SHOTS=dir to keep them for a look."""
    app = QApplication.instance()
    old = app.palette()
    out = Path(os.environ.get("LLMLENS_SHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    try:
        if theme == "dark":
            app.setPalette(dark_palette())
        for name, panel in _filled_panels(qtbot).items():
            tabs = getattr(panel, "tabs", None)
            for tab in range(tabs.count() if tabs is not None else 1):
                if tabs is not None:
                    tabs.setCurrentIndex(tab)
                path = out / f"{name}{tab if tabs is not None else ''}_{theme}.png"
                panel.export_png(path)
                img = assert_png(path, 700, 400)
                corner = img.pixelColor(img.width() // 2, img.height() - 3)  # window background
                assert (corner.lightness() < 100) == (theme == "dark")
    finally:
        app.setPalette(old)


def test_grid_strips_keep_peaks_of_long_rows():
    from ui.inspect.attention_views import pool_max

    row = np.zeros(5000, np.float32)
    row[3217] = 0.9
    pooled = pool_max(row, 60)
    assert pooled.shape == (60,) and pooled.max() == np.float32(0.9)
    assert int(np.argmax(pooled)) == int(3217 * 60 / 5000)
    np.testing.assert_array_equal(pool_max(row[:40], 60), row[:40])  # short rows unchanged


def test_heatmap_follows_a_theme_switch(qtbot):
    app = QApplication.instance()
    old = app.palette()
    hm = HeatmapPlot()
    qtbot.addWidget(hm)
    try:
        light = hm.backgroundBrush().color()
        app.setPalette(dark_palette())
        qtbot.waitUntil(lambda: hm.backgroundBrush().color() != light, timeout=2000)
        assert hm.backgroundBrush().color().lightness() < 80
    finally:
        app.setPalette(old)


def test_panels_restyle_on_a_theme_switch(qtbot):
    app = QApplication.instance()
    old = app.palette()
    speed, lens = ThroughputPanel(), LogitLensPanel()
    for w in (speed, lens):
        qtbot.addWidget(w)
    lens.set_lens(make_lens())
    cell = lens.model.index(5, 0)
    before = lens.model.data(cell, Qt.BackgroundRole).color()
    try:
        app.setPalette(dark_palette())
        qtbot.waitUntil(lambda: speed.live_widget.backgroundBrush().color().lightness() < 80, timeout=2000)
        qtbot.waitUntil(lambda: lens.model.data(cell, Qt.BackgroundRole).color() != before, timeout=2000)
        assert lens.model.data(cell, Qt.BackgroundRole).color().lightness() < before.lightness()
    finally:
        app.setPalette(old)
