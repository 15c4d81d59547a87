"""The inspection panels on the newer families: LFM2 (convolution layers without attention),
routers with a selection bias and expert groups (DeepSeek-V3, GLM-4.5), gpt-oss's sinks.

References are recomputed with `engine.inspect.inspect` / `engine.generate` in each test and
compared with what the app's views and the real panel widgets hold.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.inspect_views import (InspectRequest, attention_layers, facts, inspection_views,
                               live_attention_view, routing_view)
from engine.generate import SamplingParams, Token, generate
from engine.inspect import inspect
from engine.models.base import load_model
from engine.tokenizer import load_tokenizer
from engine.trace import LiveTrace
from ui.inspect.attention_panel import AttentionPanel
from ui.inspect.routing_panel import RoutingPanel, surprising_picks

IDS = list(range(5, 29))  # 24 tokens of the tiny vocabularies


@pytest.fixture(scope="module")
def lfm2(tiny_model_factory):
    tm = tiny_model_factory("lfm2moe")
    model = load_model(tm.gguf["f32"], n_ctx=64)
    return tm, model, load_tokenizer(model.gguf)


def test_lfm2_attention_panel_marks_conv_layers(qtbot, lfm2, tmp_path):
    _tm, model, tok = lfm2
    kinds = model.layer_kinds
    conv = [i for i, k in enumerate(kinds) if k == "conv"]
    attn = [i for i, k in enumerate(kinds) if k != "conv"]
    assert conv and attn and conv[0] == 0  # layer 0 is a convolution: indices would shift
    q = 17
    # Ask for the matrix of a conv layer: the view falls back to an attention layer.
    res = inspection_views(model, tok, InspectRequest(tuple(IDS), q, ("attention",),
                                                      matrix_layer=conv[0]))
    view = res.attention
    ref = inspect(model, IDS[:q + 1], what=("attention",))
    assert len(view.rows) == len(kinds) == len(view.layer_kind) == len(view.window)
    assert view.matrix_layer in attn
    np.testing.assert_allclose(view.matrix, ref.attn[view.matrix_layer][:, max(0, q - 47):, :],
                               atol=1e-6)

    panel = AttentionPanel()
    qtbot.addWidget(panel)
    panel.resize(900, 500)
    panel.show()
    panel.set_attention(view)
    path = tmp_path / "attn.npz"
    panel.export_data(path)
    data = np.load(path)
    for layer in attn:
        assert panel.grid.is_attention(layer)
        np.testing.assert_allclose(data["rows"][layer], ref.attn[layer][:, q, :], atol=1e-6)
    for layer in conv:
        assert not panel.grid.is_attention(layer)
        assert not data["rows"][layer].any()
        assert str(data["layer_kind"][layer]) == "conv"
        # a conv row is no cell: clicking it chooses nothing
        assert panel.grid.cell_at(panel.grid.cell_rect(layer, 0).center()) is None
    assert panel.grid.cell_at(panel.grid.cell_rect(attn[0], 1).center()) == (attn[0], 1)
    assert "conv" in panel.layer_box.itemText(conv[0])

    # The matrix of the attention layer is drawn; choosing a conv layer is refused with a note.
    panel.set_layer_head(view.matrix_layer, 0)
    np.testing.assert_allclose(panel.matrix_image(), view.matrix[0], atol=1e-6)
    panel.set_layer_head(conv[0], 0)
    assert panel.matrix_image() is None
    assert "convolution" in panel.matrix_note.text()
    panel.set_view_mode("layers")  # every layer's row: conv rows stay blank, others exact
    img = panel.matrix_image()
    for layer in attn:
        np.testing.assert_allclose(img[layer], ref.attn[layer][:, q, :].mean(0), atol=1e-6)
    assert not img[conv].any()
    panel.tabs.setCurrentIndex(0)
    shot = tmp_path / "attention-lfm2.png"
    assert panel.grab().save(str(shot))
    print(f"screenshot: {shot}")


def test_lfm2_live_trace_completes_attention_steps(lfm2):
    tm, model, tok = lfm2
    info = facts(model)
    live = LiveTrace(model.config.n_layer, attn_layers=attention_layers(info))
    prompt = [int(i) for i in tm.load_ref()["ids"][:12]]
    gen = [e.id for e in generate(model, tok, prompt, SamplingParams(temperature=0.0),
                                  max_new_tokens=5, trace=live.recorder) if isinstance(e, Token)]
    fed = prompt + gen[:-1]  # generate() never feeds its last token back
    position, rows = live.newest_attention()
    assert position == len(fed) - 1
    assert len(rows) == len(attention_layers(info)) > 0
    ref = inspect(model, fed, what=("attention", "routing"))
    view = live_attention_view(info, position, rows)
    assert len(view.rows) == model.config.n_layer
    for layer, kind in enumerate(model.layer_kinds):
        if kind == "conv":
            assert not view.rows[layer].any()
        else:
            np.testing.assert_allclose(view.rows[layer], ref.attn[layer][:, position, :],
                                       atol=1e-5)
    # LFM2's router has a selection bias: live routing carries the selection scores too.
    snap = live.snapshot_routing()
    assert set(snap.select_scores) == set(ref.select_scores) == set(model.moe_layers)
    for layer in model.moe_layers:
        np.testing.assert_allclose(snap.select_scores[layer], ref.select_scores[layer],
                                   atol=1e-5)


@pytest.fixture(scope="module")
def v3(tiny_model_factory):
    tm = tiny_model_factory("deepseek2_v3")
    model = load_model(tm.gguf["f32"], n_ctx=64)
    return tm, model, load_tokenizer(model.gguf)


def test_biased_grouped_routing_is_shown_and_explained(qtbot, v3, tmp_path):
    tm, model, tok = v3
    ids = [int(i) for i in tm.load_ref()["ids"][:24]]
    res = inspection_views(model, tok, InspectRequest(tuple(ids), 3, ("routing",)))
    view = res.routing
    ref = inspect(model, ids, what=("routing",))
    layers = model.moe_layers
    assert view.n_groups == 4 and ref.select_scores and ref.groups_kept
    for li, layer in enumerate(layers):
        np.testing.assert_allclose(view.select_scores[:, li], ref.select_scores[layer], atol=1e-6)
        np.testing.assert_array_equal(view.groups_kept[:, li], ref.groups_kept[layer])

    # A token and layer where a chosen expert has a lower router score than an unchosen one
    # whose group was kept: only the selection bias can have lifted it (found from the data).
    E, per_group = view.n_expert, view.n_expert // view.n_groups
    found = None
    for t in range(len(ids)):
        for li, layer in enumerate(layers):
            p, chosen = ref.router_probs[layer][t], set(ref.topk_ids[layer][t].tolist())
            kept = set(ref.groups_kept[layer][t].tolist())
            for e in ref.topk_ids[layer][t]:
                rivals = [u for u in range(E) if u not in chosen and p[u] > p[e]]
                if rivals:
                    u = max(rivals, key=lambda j: p[j])
                    if u // per_group in kept:
                        found = found or (t, li, layer, int(e), u)
    assert found, "no pick decided by the bias in this data: choose other tokens"
    t, li, layer, e, u = found
    bias = ref.select_scores[layer][t] - ref.router_probs[layer][t]  # [E]
    assert bias[e] - bias[u] > 0

    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.resize(1000, 500)
    panel.show()
    panel.set_routing(view)
    panel.set_selected(t)
    assert f"L{layer}: e{e} chosen over e{u}: {bias[e] - bias[u]:+.2f} selection bias" \
        in panel.selection_notes()
    np.testing.assert_allclose(panel.token_image(),
                               np.stack([ref.router_probs[l][t] for l in layers]), atol=1e-6)
    panel.set_score_mode("selection")
    np.testing.assert_allclose(panel.token_image(),
                               np.stack([ref.select_scores[l][t] for l in layers]), atol=1e-6)
    dropped = sorted(panel.dropped_marked())
    expected = sorted((i, x) for i, l in enumerate(layers) for x in range(E)
                      if x // per_group not in set(ref.groups_kept[l][t].tolist()))
    assert dropped == expected and len(expected) == len(layers) * (E - 2 * per_group)
    shot = tmp_path / "routing-v3.png"
    assert panel.grab().save(str(shot))
    print(f"screenshot: {shot}")


def test_surprising_picks_names_the_dropped_group():
    probs = np.array([0.9, 0.1, 0.2, 0.3], np.float32)  # e0 is the best router score
    select = probs + np.array([0.0, 0.5, 0.0, 0.4], np.float32)
    # two groups {e0, e1}, {e2, e3}; only group 1 kept: e0 could not be picked
    picks = surprising_picks(probs, np.array([3, 2]), select, np.array([1]), n_groups=2)
    assert picks == [(3, 0, "group", 0.0), (2, 0, "group", 0.0)]
    # no groups: e1 (0.1 + 0.5) beats e2 (0.2) by its bias
    picks = surprising_picks(probs, np.array([0, 1]), select, None, n_groups=0)
    assert [(e, u, why) for e, u, why, _ in picks] == [(1, 3, "bias")]
    assert picks[0][3] == pytest.approx(0.5 - 0.4)
    # a plain router (no bias, no groups) explains nothing
    assert surprising_picks(probs, np.array([0, 3]), None, None, 0) == []


def test_plain_routing_view_has_no_selection_extras(qtbot, tiny_model_factory):
    model = load_model(tiny_model_factory("qwen2moe").gguf["f32"], n_ctx=64)
    ref = inspect(model, IDS, what=("routing",))
    view = routing_view(facts(model), ref.topk_ids, ref.topk_weights, ref.router_probs,
                        select_scores=ref.select_scores, groups_kept=ref.groups_kept)
    assert view.select_scores is None and view.groups_kept is None and view.n_groups == 0
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.set_routing(view)
    panel.set_selected(3)
    assert panel.score_box.isHidden() and panel.why_label.isHidden()
    assert panel.dropped_marked() == []


def test_gpt_oss_sinks_reach_the_grid(qtbot, tiny_model_factory, tmp_path):
    model = load_model(tiny_model_factory("gpt_oss").gguf["f32"], n_ctx=64)
    tok = load_tokenizer(model.gguf)
    q = 14
    view = inspection_views(model, tok, InspectRequest(tuple(IDS), q, ("attention",))).attention
    ref = inspect(model, IDS[:q + 1], what=("attention",))
    assert set(ref.attn_sink) == set(ref.attn) == set(range(model.config.n_layer))
    assert view.sink.shape == (model.config.n_layer, model.config.n_head)
    for layer in ref.attn:
        np.testing.assert_allclose(view.sink[layer], ref.attn_sink[layer][:, q], atol=1e-6)
        # the keys get what the sink leaves
        np.testing.assert_allclose(view.rows[layer].sum(-1), 1.0 - view.sink[layer], atol=1e-5)
    panel = AttentionPanel()
    qtbot.addWidget(panel)
    panel.resize(900, 400)
    panel.show()
    panel.set_attention(view)
    share = float(view.sink[1, 2])
    assert panel.grid.sink_share(1, 2) == pytest.approx(share)
    assert f"sink {100 * share:.0f}%" in panel.grid.cell_tooltip(1, 2)
    assert "sink" in panel.caption()
    path = tmp_path / "attn.npz"
    panel.export_data(path)
    np.testing.assert_allclose(np.load(path)["sink"], view.sink)
    shot = tmp_path / "attention-gpt-oss.png"
    assert panel.grab().save(str(shot))
    print(f"screenshot: {shot}")


def test_gpt_oss_live_trace_keeps_the_newest_sinks(tiny_model_factory):
    tm = tiny_model_factory("gpt_oss")
    model = load_model(tm.gguf["f32"], n_ctx=64)
    tok = load_tokenizer(model.gguf)
    info = facts(model)
    live = LiveTrace(model.config.n_layer, attn_layers=attention_layers(info))
    prompt = [int(i) for i in tm.load_ref()["ids"][:12]]
    gen = [e.id for e in generate(model, tok, prompt, SamplingParams(temperature=0.0),
                                  max_new_tokens=4, trace=live.recorder) if isinstance(e, Token)]
    fed = prompt + gen[:-1]
    position, rows = live.newest_attention()
    assert position == len(fed) - 1
    assert live.newest_sink(position - 1) is None  # only the newest position is kept
    ref = inspect(model, fed, what=("attention",))
    view = live_attention_view(info, position, rows, live.newest_sink(position))
    for layer in ref.attn:
        np.testing.assert_allclose(view.sink[layer], ref.attn_sink[layer][:, position], atol=1e-5)
        np.testing.assert_allclose(view.rows[layer], ref.attn[layer][:, position, :], atol=1e-5)
