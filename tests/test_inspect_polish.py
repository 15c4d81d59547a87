"""The inspection panels' readability fixes found by the README screenshots.

Greedy sampling worded as greedy, compact logit-lens cells, a sliding-window line only where
the window starts inside the matrix, surprise colours on a square-root scale, the routing
weights listing sized to its lines.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QHeaderView

from ui.inspect.attention_panel import AttentionPanel
from ui.inspect.logit_lens_panel import LogitLensPanel, percent
from ui.inspect.model import AttentionView, LensView, RoutingView, TokenView
from ui.inspect.panel import tint
from ui.inspect.routing_panel import WEIGHTS_MAX_W, RoutingPanel
from ui.inspect.token_probs_panel import sampling_text
from ui.inspect.token_strip import SURPRISE_FULL, TokenStrip


def test_sampling_text_says_greedy_at_temperature_zero():
    greedy = sampling_text({"temperature": 0.0, "top_k": 40, "top_p": 0.95, "seed": None,
                            "repeat_penalty": 1.0, "repeat_last_n": 64})
    assert "greedy" in greedy
    assert "top k" not in greedy and "seed" not in greedy and "repeat" not in greedy
    # a repetition penalty does change a greedy choice: it stays listed
    assert "repeat penalty 1.1" in sampling_text({"temperature": 0, "repeat_penalty": 1.1,
                                                  "repeat_last_n": 64})
    sampled = sampling_text({"temperature": 0.7, "top_k": 40, "seed": None})
    assert sampled == "Sampling: temperature 0.7 · top k 40 · seed random"
    assert sampling_text({}) == "Sampling: settings not recorded"


@pytest.mark.parametrize("prob, text", [(1.0, "100%"), (0.623, "62%"), (0.0996, "10%"),
                                        (0.058, "5.8%"), (0.0006, "0.1%"), (0.0004, "<0.1%")])
def test_lens_percent_is_short(prob, text):
    assert percent(prob) == text


def test_lens_rank_column_fits_its_header_and_cells_keep_a_width(qtbot):
    p = LogitLensPanel()
    qtbot.addWidget(p)
    k, n_layers = 10, 4
    probs = np.full((n_layers, k), 1.0 / k, np.float32)
    p.set_lens(LensView(position=3, ids=np.arange(n_layers * k, dtype=np.int32).reshape(n_layers, k),
                        probs=probs, texts=[[" Paris"] * k for _ in range(n_layers)],
                        chosen_id=5, chosen_rank=[5] * n_layers))
    header = p.table.horizontalHeader()
    assert header.sectionResizeMode(k) == QHeaderView.ResizeToContents
    assert header.sectionResizeMode(0) == QHeaderView.Stretch
    need = p.fontMetrics().horizontalAdvance("·Paris 10%")
    assert header.minimumSectionSize() > need
    assert p.model.data(p.model.index(0, 0)) == "·Paris 10%"


def _attention_view(window: int, n: int) -> AttentionView:
    """One sliding layer of 2 heads, a uniform causal matrix over positions [0, n)."""
    m = np.tril(np.ones((n, n), np.float32))
    m /= m.sum(-1, keepdims=True)
    matrix = np.stack([m, m])  # [H, R, R]
    q = n - 1
    return AttentionView(query=q, rows=[matrix[:, q, :q + 1].copy()], window=[window],
                         kv_head=[0, 1], layer_kind=["sliding"], matrix_layer=0,
                         range_start=0, matrix=matrix)


def test_matrix_window_line_only_when_the_window_starts_inside_the_range(qtbot):
    p = AttentionPanel()
    qtbot.addWidget(p)
    p.set_attention(_attention_view(window=512, n=10))
    # the outline of the selected row only: no dashed line far left of the image
    assert len(p._overlays) == 1
    assert "wider than this range" in p.matrix_note.text()
    assert "dashed" not in p.matrix_note.text()
    p.set_attention(_attention_view(window=4, n=10))
    assert len(p._overlays) == 2
    assert "dashed line: window start" in p.matrix_note.text()


def test_surprise_colour_is_a_square_root_scale(qtbot):
    strip = TokenStrip()
    qtbot.addWidget(strip)
    probs = [0.9, 0.5, 0.1, 1e-3, 1e-6]
    strip.set_tokens([TokenView(index=i, id=i, text=f" t{i}", role="assistant", generated=True,
                                prob=p) for i, p in enumerate(probs)])
    strip.set_color_mode("surprise")
    pal = strip.palette()
    for i, p in enumerate(probs):
        strength = 0.8 * math.sqrt(min(1.0, -math.log(p) / SURPRISE_FULL))
        assert strip.token_color(i) == tint(pal, QColor(235, 110, 50), strength)
    # a token at p = 0.5 (0.69 nats) is visibly tinted, not left near the background
    assert 0.8 * math.sqrt(math.log(2) / SURPRISE_FULL) > 0.2


def test_routing_weights_listing_names_the_token_and_fits_its_lines(qtbot):
    p = RoutingPanel()
    qtbot.addWidget(p)
    t, n_layers, n_expert, k = 3, 2, 8, 2
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(n_expert), size=(t, n_layers)).astype(np.float32)  # [T, L, E]
    ids = np.argsort(-probs, axis=-1)[..., :k].astype(np.int32)  # [T, L, k]
    weights = np.take_along_axis(probs, ids, -1)
    p.set_tokens([TokenView(index=i, id=i, text=w, role="prompt")
                  for i, w in enumerate(["def", " add", "("])])
    p.set_routing(RoutingView(moe_layers=[1, 2], n_expert=n_expert, n_used=k, n_shared=1,
                              probs=probs, topk_ids=ids, topk_weights=weights))
    p.set_selected(1)
    listing = p.weights_listing()
    assert listing.splitlines()[0] == "#1 ·add"
    fm = p.weights_text.fontMetrics()
    widest = max(fm.horizontalAdvance(line) for line in listing.splitlines())
    assert widest < p.weights_text.maximumWidth() <= WEIGHTS_MAX_W
