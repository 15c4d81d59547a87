"""The inspection panels wired to the chat: real window, real worker, tiny dense and MoE models.

Each check recomputes the numbers with `engine.inspect.inspect` (or `engine.generate`) in the
test and compares them with what the panels hold (through their exports, as a user gets them).
"""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QTextCursor

from app.chat_controller import install_chat
from app.inspect_views import default_range
from ui.main_window import MainWindow

LOAD_TIMEOUT_MS = 180_000
REPLY_TIMEOUT_MS = 180_000
PASS_TIMEOUT_MS = 120_000


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LLMLENS_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


@pytest.fixture
def open_app(qtbot, dirs):
    made = []

    def make(model_path):
        win = MainWindow()
        qtbot.addWidget(win)
        win.resize(1500, 950)
        ctl = install_chat(win, model_path=model_path)
        win.show()
        made.append(ctl)
        qtbot.waitUntil(lambda: ctl.model_info is not None or not ctl.panel.error.isHidden(),
                        timeout=LOAD_TIMEOUT_MS)
        assert ctl.model_info is not None, ctl.panel.error.label.text()
        return win, ctl, ctl.inspect

    yield make
    for ctl in made:
        ctl.shutdown()


def send(qtbot, ctl, text, **settings):
    s = ctl.panel.settings
    for name, value in settings.items():
        getattr(s, name).setValue(value)
    ctl.send(text)
    qtbot.waitUntil(lambda: not ctl.busy, timeout=REPLY_TIMEOUT_MS)
    assert ctl.panel.error.isHidden(), ctl.panel.error.label.text()
    return ctl.messages[-1]


def engine_model(path):
    from engine.models.base import load_model
    from engine.tokenizer import load_tokenizer

    model = load_model(path)
    return model, load_tokenizer(model.gguf)


def click_offset(qtbot, ctl, message: int, offset: int) -> None:
    """Click the character at source `offset` of chat message `message`, as a user would."""
    w = ctl.panel.messages.widgets[message]
    ctl.panel.messages.ensureWidgetVisible(w)
    pos = w.source_map().to_doc(offset)
    a, b = QTextCursor(w.body.document()), QTextCursor(w.body.document())
    a.setPosition(pos)
    b.setPosition(pos + 1)
    ra, rb = w.body.cursorRect(a), w.body.cursorRect(b)
    assert ra.top() == rb.top(), "pick a character that does not end a line"
    point = QPoint((ra.left() + rb.left()) // 2, ra.center().y())
    viewport = w.body.viewport()
    qtbot.mousePress(viewport, Qt.LeftButton, pos=point)
    qtbot.mouseRelease(viewport, Qt.LeftButton, pos=point)


def wait_attention(qtbot, tmp_path, ins, query, layer=None):
    path = tmp_path / "attention.npz"

    def ready():
        try:
            ins.attention.export_data(path)
        except ValueError:  # nothing shown yet
            return False
        data = np.load(path)
        return int(data["query"]) == query and "matrix" in data and (
            layer is None or int(data["matrix_layer"]) == layer)
    qtbot.waitUntil(ready, timeout=PASS_TIMEOUT_MS)
    return dict(np.load(path))


# --------------------------------------------------------------------------- dense

@pytest.fixture(scope="module")
def tiny_gemma3(tiny_model_factory):
    return tiny_model_factory("gemma3").gguf["f32"]


def test_dense_click_a_token_and_every_panel_shows_the_engines_numbers(
        qtbot, open_app, tiny_gemma3, tmp_path):
    from engine.inspect import inspect

    win, ctl, ins = open_app(tiny_gemma3)
    ins.show_all()
    reply = send(qtbot, ctl, "hello there", seed=21, max_new_tokens=12, temperature=0.9)
    ids = reply.prompt_ids + reply.token_ids
    assert ctl.tokens.ids == ids
    assert [t.id for t in ins.strip.tokens()] == ids
    assert ins.selection.index == len(ids) - 1  # it followed the stream to the newest token

    # Click a character of a generated token in the reply: that token is selected everywhere.
    k = next(k for k, (s, e) in enumerate(reply.token_spans) if e - s >= 2
             and "\n" not in reply.content[s:e + 1])
    s, e = reply.token_spans[k]
    click_offset(qtbot, ctl, 1, s)
    q = ctl.tokens.n_prompt + k
    assert ins.selection.index == q and ins.strip.selected() == q
    assert ctl.panel.messages.widgets[1].highlight() == (s, e)

    # Attention: the worker's pass equals the engine's, rows sum to 1, causal, windows.
    model, tok = engine_model(tiny_gemma3)
    got = wait_attention(qtbot, tmp_path, ins, q)
    a, b = default_range(q)
    ref = inspect(model, ids[:b], what=("attention",), rows=(a, b))
    for layer in range(model.config.n_layer):
        np.testing.assert_allclose(got["rows"][layer], ref.attn[layer][:, q - a, :q + 1],
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["rows"].sum(-1), 1.0, atol=1e-5)
    windows = model.layer_windows
    for layer, w in enumerate(windows):
        if w is not None:  # keys older than the window get exactly nothing
            assert not got["rows"][layer][:, :max(0, q + 1 - w)].any()
    matrix = got["matrix"]  # [H, R, R] of layer 0 over [a, b)
    assert matrix.shape[1:] == (b - a, b - a)
    assert not np.triu(matrix, k=1).any(), "a query attends to a later key"
    np.testing.assert_allclose(matrix, ref.attn[int(got["matrix_layer"])][:, :, a:b],
                               rtol=1e-5, atol=1e-6)

    # Switch layer and head by clicking the grid: the matrix is fetched for that layer.
    layer, head = model.config.n_layer - 1, 1
    ins.attention.tabs.setCurrentIndex(0)
    grid = ins.attention.grid
    qtbot.mouseClick(grid, Qt.LeftButton, pos=grid.cell_rect(layer, head).center())
    assert ins.attention.layer_head() == (layer, head)
    got = wait_attention(qtbot, tmp_path, ins, q, layer=layer)
    np.testing.assert_allclose(got["matrix"], ref.attn[layer][:, :, a:b], rtol=1e-5, atol=1e-6)
    assert int(got["head"]) == head

    # Logit lens at the selected token: per layer, the top 10 under a softmax over the whole
    # vocabulary, and the rank of the token that came next.
    qtbot.waitUntil(lambda: ins.lens.model.lens() is not None
                    and ins.lens.model.lens().position == q, timeout=PASS_TIMEOUT_MS)
    lens = ins.lens.model.lens()
    ref_lens = inspect(model, ids[:q + 1], what=("lens",), rows=(q, q + 1), lens_k=model.n_vocab)
    assert lens.chosen_id == ids[q + 1]
    for li, layer in enumerate(sorted(ref_lens.lens_ids)):
        order, logits = ref_lens.lens_ids[layer][0], ref_lens.lens_logits[layer][0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        np.testing.assert_array_equal(lens.ids[li], order[:10])
        np.testing.assert_allclose(lens.probs[li], probs[:10], rtol=1e-4, atol=1e-7)
        assert lens.chosen_rank[li] == int(np.nonzero(order == ids[q + 1])[0][0])
    assert not ins.lens.is_busy()

    # Token probabilities: the streamed record of that token.
    from engine.generate import Token, generate
    from engine.sampling import SamplingParams

    st = ctl.panel.settings.values()
    params = SamplingParams(**{n: st[n] for n in ("temperature", "top_k", "top_p", "min_p",
                                                  "repeat_penalty", "seed")})
    events = [ev for ev in generate(model, tok, reply.prompt_ids, params, max_new_tokens=12)
              if isinstance(ev, Token)]
    rows = ins.probs.rows()
    chosen = [r for r in rows if r[4]]
    assert chosen and chosen[0][1] == events[k].id
    assert chosen[0][3] == pytest.approx(events[k].prob, rel=1e-5)
    assert [r[1] for r in rows if r[0] is not None] == [t[0] for t in events[k].top]
    assert "temperature 0.9" in ins.probs.sampling_label.text()

    # Routing of a dense model: the empty state says so.
    assert "dense" in ins.routing.empty_label.text()

    # Exports: a PNG of every panel, the data behind each (the attention's NPZ is checked above;
    # a dense model has no routing to export).
    for name, panel in ins.panels.items():
        png = tmp_path / f"{name}.png"
        panel.export_png(png)
        assert png.stat().st_size > 1000, name
    for name in ("strip", "probs", "lens", "throughput"):
        csv = tmp_path / f"{name}.csv"
        ins.panels[name].export_data(csv)
        assert csv.read_text().count("\n") >= 2, name

    # A prompt token: click a character of the user's message.
    user = ctl.messages[0]
    offset = user.content.index("there") + 1
    click_offset(qtbot, ctl, 0, offset)
    p = ins.selection.index
    assert p < ctl.tokens.n_prompt and ctl.tokens.view(p).role == "user"
    m, s, e = ctl.tokens.span_of(p)
    assert m == 0 and s <= offset < e and ctl.tokens.texts[p] == user.content[s:e]
    assert user.token_ids[user.token_spans.index((s, e))] == ids[p]
    wait_attention(qtbot, tmp_path, ins, p)

    assert len(ins.throughput.history()) == 1
    assert ins.throughput.history()[0].gen_tokens == len(reply.token_ids)

    # The whole window with every panel open, for a look.
    shot = tmp_path / "inspect-window.png"
    assert win.grab().save(str(shot))
    print(f"screenshot: {shot}")


# --------------------------------------------------------------------------- MoE

@pytest.fixture(scope="module")
def tiny_moe(tiny_model_factory):
    return tiny_model_factory("qwen2moe").gguf["f32"]


def test_moe_routing_follows_the_stream_and_matches_the_engine(qtbot, open_app, tiny_moe,
                                                                tmp_path):
    from engine.inspect import inspect

    win, ctl, ins = open_app(tiny_moe)
    ins.show_all()
    traces = []
    factory = ctl.trace_factory
    ctl.trace_factory = lambda: traces.append(factory()) or traces[-1]

    followed = []
    ctl.tokensAppended.connect(lambda first: followed.append(
        (ins.selection.index, ctl.tokens.newest)))
    reply = send(qtbot, ctl, "the experts", seed=4, max_new_tokens=10, temperature=1.0)
    ids = reply.prompt_ids + reply.token_ids
    assert followed and all(sel == newest for sel, newest in followed)

    model, _ = engine_model(tiny_moe)
    ref = inspect(model, ids, what=("routing",))
    moe_layers = model.moe_layers
    assert moe_layers

    # The live trace recorded during generation chose the experts the engine chooses.
    (trace,) = traces
    assert trace is not None
    snap = trace.snapshot_routing()
    n = snap.end  # the last sampled token was never fed back: it has no routing
    assert n == len(ids) - 1
    for layer in moe_layers:
        np.testing.assert_array_equal(snap.topk_ids[layer], ref.topk_ids[layer][:n])

    # What the panels got while streaming: the trace read a few positions at a time.
    from app.inspect_views import LiveRouting

    class Growing:  # the trace as successive timer ticks saw it
        limit = 0

        def snapshot_routing(self, start=0):
            return trace.snapshot_routing(start, self.limit)
    live, growing, view = LiveRouting(ctl.model_info), Growing(), None
    for growing.limit in (3, 3, 7, n - 2, n):
        view = live.update(growing) or view
    assert view.topk_ids.shape[:2] == (n, len(moe_layers)) and view.start == 0
    for li, layer in enumerate(moe_layers):
        np.testing.assert_array_equal(view.topk_ids[:, li], ref.topk_ids[layer][:n])
        np.testing.assert_allclose(view.probs[:, li], ref.router_probs[layer][:n],
                                   rtol=1e-5, atol=1e-6)

    # After the reply: one exact pass; the panel holds the engine's routing for every token.
    path = tmp_path / "routing.npz"

    def routed():
        if ins._routing_for != len(ids):
            return False
        ins.routing.export_data(path)
        return True
    qtbot.waitUntil(routed, timeout=PASS_TIMEOUT_MS)
    data = np.load(path)
    assert list(data["moe_layers"]) == moe_layers
    for li, layer in enumerate(moe_layers):
        np.testing.assert_array_equal(data["topk_ids"][:, li], ref.topk_ids[layer])
        np.testing.assert_allclose(data["topk_weights"][:, li], ref.topk_weights[layer],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(data["probs"][:, li], ref.router_probs[layer],
                                   rtol=1e-5, atol=1e-6)

    # Select a token in the strip: the routing panel boxes exactly its top-k experts.
    q = ctl.tokens.n_prompt + 2
    ins.strip.tokenSelected.emit(q)
    assert ins.selection.index == q
    marked = sorted(ins.routing.topk_marked())
    expected = sorted((li, int(e)) for li, layer in enumerate(moe_layers)
                      for e in ref.topk_ids[layer][q])
    assert marked == expected
    np.testing.assert_allclose(ins.routing.token_image(),
                               np.stack([ref.router_probs[l][q] for l in moe_layers]),
                               rtol=1e-5, atol=1e-6)
    ins.strip.set_color_mode("expert")
    shot = tmp_path / "inspect-moe.png"
    assert win.grab().save(str(shot))
    print(f"screenshot: {shot}")


def test_lfm2_conv_layers_live_and_exact(qtbot, open_app, tiny_model_factory, tmp_path):
    """LFM2 has layers without attention: the live trace still completes its steps and the
    panel keeps one row per model layer (conv rows empty, the others the engine's)."""
    from engine.inspect import inspect

    path = tiny_model_factory("lfm2moe").gguf["f32"]
    win, ctl, ins = open_app(path)
    ins.show_all()
    traces = []
    factory = ctl.trace_factory
    ctl.trace_factory = lambda: traces.append(factory()) or traces[-1]
    reply = send(qtbot, ctl, "the convolutions", seed=2, max_new_tokens=6, temperature=1.0)
    ids = reply.prompt_ids + reply.token_ids
    (trace,) = traces
    position, rows = trace.newest_attention()
    kinds = ctl.model_info["layer_kinds"]
    assert "conv" in kinds and position == len(ids) - 2  # the last token is never fed back
    assert len(rows) == sum(k != "conv" for k in kinds)

    q = ctl.tokens.n_prompt + 1
    ins.strip.tokenSelected.emit(q)
    data = wait_attention(qtbot, tmp_path, ins, q)
    model, _ = engine_model(path)
    ref = inspect(model, ids[:q + 1], what=("attention",))
    assert [str(k) for k in data["layer_kind"]] == kinds
    for layer, kind in enumerate(kinds):
        if kind == "conv":
            assert not data["rows"][layer].any()
        else:
            np.testing.assert_allclose(data["rows"][layer], ref.attn[layer][:, q, :], atol=1e-5)
    assert kinds[int(data["matrix_layer"])] != "conv"


def test_pinned_selection_stops_following(qtbot, open_app, tiny_gemma3):
    import time

    from app.engine_worker import BATCH_SECONDS

    win, ctl, ins = open_app(tiny_gemma3)
    ins.docks["strip"].show()
    ins.docks["attention"].show()
    # Slow the worker after the prompt and after each batch: then every token is more than
    # BATCH_SECONDS after the previous emit, so each arrives in a batch of its own.
    w = ctl.engine.worker
    for signal in (w.promptDone, w.tokens):
        signal.connect(lambda *_: time.sleep(BATCH_SECONDS * 1.5), Qt.DirectConnection)
    seen = []

    def on_batch(first):
        newest = ctl.tokens.newest
        if len(seen) == 1:
            ins.strip.tokenSelected.emit(newest - 1)  # a user click: pins while streaming
        seen.append((ins.selection.index, newest, ins.selection.pinned))
        if not ins.selection.pinned:
            ins._read_live()  # what the 10 Hz timer does
            position, _ = ctl.trace.newest_attention()
            if position >= 0:
                assert ins.attention._view.query == position
    ctl.tokensAppended.connect(on_batch)
    reply = send(qtbot, ctl, "pin me", seed=8, max_new_tokens=6, temperature=1.0)
    assert len(seen) == len(reply.token_ids) >= 3
    assert seen[0][0] == seen[0][1] and not seen[0][2]  # followed the newest token
    pinned_at = seen[1][1] - 1
    assert all(sel == pinned_at and pinned for sel, _, pinned in seen[1:])
    assert ins.strip.pinned() and ins.selection.index == pinned_at
    # Unpinning goes back to the newest token.
    ins.strip.set_pinned(False)
    assert ins.selection.index == ctl.tokens.newest


def test_first_run_kernel_build_is_announced(qtbot, open_app, tiny_gemma3, monkeypatch):
    """While the worker builds the CPU kernels, the chat says so (notice and status bar)."""
    from engine import kernels

    real_load = kernels.load

    def load(on_progress=None):
        if on_progress is not None:
            on_progress(kernels.PREPARING_MESSAGE)
        return real_load(on_progress)
    monkeypatch.setattr(kernels, "load", load)
    from PySide6.QtCore import QObject, Slot

    win, ctl, _ = open_app(tiny_gemma3)
    shown = []

    class Watcher(QObject):  # a GUI-thread receiver: queued after the chat's own slot
        @Slot(int, str)
        def seen(self, rid, text):
            shown.append((text, ctl.panel.notice.label.text(), ctl.model_label.text()))
    watcher = Watcher()
    ctl.engine.worker.loadMessage.connect(watcher.seen)
    ctl.load_model(str(tiny_gemma3))
    qtbot.waitUntil(lambda: ctl.load_id is None, timeout=LOAD_TIMEOUT_MS)
    assert shown == [(kernels.PREPARING_MESSAGE,) * 3]
    assert "gemma3" in ctl.model_label.text() and ctl.panel.notice.isHidden()


def test_dock_layout_is_remembered(qtbot, dirs):
    def window():
        win = MainWindow()
        qtbot.addWidget(win)
        ctl = install_chat(win, autoload=False)
        return win, ctl
    win, ctl = window()
    inspect_menu = ctl.inspect.menu
    titles = [a.text() for a in inspect_menu.actions() if a.text()]
    assert titles == ["Tokens", "Attention", "Expert routing", "Token probabilities",
                      "Logit lens", "Throughput", "Show &all"]
    assert not ctl.inspect.any_open()  # nothing open, nothing recorded: generation costs nothing
    assert ctl.inspect.new_trace() is None
    win.show()
    ctl.inspect.docks["attention"].toggleViewAction().trigger()
    ctl.inspect.docks["strip"].show()
    assert ctl.inspect.is_open("attention") and not ctl.inspect.is_open("lens")
    win.close()  # saves the layout
    ctl.shutdown()

    win2, ctl2 = window()
    win2.show()
    opened = {name for name in ctl2.inspect.docks if ctl2.inspect.is_open(name)}
    assert opened == {"attention", "strip"}
    ctl2.inspect.show_all_action.trigger()
    assert all(ctl2.inspect.is_open(name) for name in ctl2.inspect.docks)
    ctl2.shutdown()


def test_reopened_conversation_gets_its_tokens_back(qtbot, open_app, tiny_gemma3):
    win, ctl, ins = open_app(tiny_gemma3)
    ins.docks["strip"].show()
    reply = send(qtbot, ctl, "remember me", seed=3, max_new_tokens=8)
    streamed = ctl.tokens.views()
    first = ctl.conv.id
    ctl.new_chat()
    assert len(ctl.tokens) == 0 and ins.strip.tokens() == []
    ctl.open_conversation(first)
    qtbot.waitUntil(lambda: len(ctl.tokens) == len(streamed), timeout=PASS_TIMEOUT_MS)
    again = ctl.tokens.views()
    assert [t.id for t in again] == reply.prompt_ids + reply.token_ids
    # Same places in the chat; the probabilities existed only while streaming.
    assert [(t.role, t.message, t.text) for t in again] == [(t.role, t.message, t.text)
                                                             for t in streamed]
    assert all(t.prob is None for t in again)
    assert [t.id for t in ins.strip.tokens()] == [t.id for t in again]
    assert ins.selection.index == len(again) - 1


def test_source_map_aligns_rendered_markdown(qtbot):
    from ui.chat.messages import MessageWidget

    text = ("Some **bold**, `code` and [a link](http://example.com/a/long/path).\n\n"
            "- item one\n- item two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```\nx = 1\n```\n")
    w = MessageWidget(0, "assistant", text, "chat")
    qtbot.addWidget(w)
    w.resize(500, 300)
    smap, doc = w.source_map(), w.body.document()
    shown = 0
    for i, ch in enumerate(text):
        pos = smap.to_doc(i)
        if smap.to_source(pos) == i:  # rendered: the same character, both ways
            assert doc.characterAt(pos) in (ch, "\u2028", "\xa0")
            shown += 1
    # Every word's letters are rendered; the syntax is not.
    for word in ("bold", "code", "link", "item", "two", "x = 1"):
        at = text.index(word)
        assert all(smap.to_source(smap.to_doc(at + k)) == at + k for k in range(len(word)))
    for syntax in ("**", "](http", "|---|"):
        at = text.index(syntax)
        assert smap.to_source(smap.to_doc(at)) != at
    rendered = 0  # every character the document shows came from the source
    block = doc.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            rendered += len(it.fragment().text())
            it += 1
        block = block.next()
    assert shown == rendered
    w.set_highlight(text.index("bold"), text.index("bold") + 4)
    (sel,) = w.body.extraSelections()
    assert sel.cursor.selectedText() == "bold"


def test_complete_mode_clicks_and_superseded_requests(qtbot, open_app, tiny_model_factory,
                                                      tmp_path):
    """A model without a chat template (Complete mode: raw text, no Markdown): clicks map to
    tokens; of several quick requests only the newest answer is shown."""
    path = tiny_model_factory("llama").gguf["f32"]
    win, ctl, ins = open_app(path)
    assert ctl.conversation_settings()["mode"] == "complete"
    ins.docks["attention"].show()
    ins.docks["lens"].show()
    reply = send(qtbot, ctl, "the cat sat on", seed=5, max_new_tokens=8, temperature=0.0)
    ids = reply.prompt_ids + reply.token_ids
    for message, m in enumerate(ctl.messages):
        for offset in range(len(m.content)):
            if m.content[offset] == "\n" or (offset + 1 < len(m.content)
                                             and m.content[offset + 1] == "\n"):
                continue
            j = ctl.tokens.token_at(message, offset)
            if j is None:
                continue
            click_offset(qtbot, ctl, message, offset)
            assert ins.selection.index == j
            _, s, e = ctl.tokens.span_of(j)
            assert ctl.panel.messages.widgets[message].highlight() == (s, e)

    # Three selections in a row, each starting a request at once (no debounce): the earlier
    # ones are cancelled or ignored, the panels end on the last, the lens is not left busy.
    for q in (2, 4, len(ids) - 2):
        ins.selection.select(q)
        ins.request_inspection()
    got = wait_attention(qtbot, tmp_path, ins, len(ids) - 2)
    assert got["rows"].shape[-1] == len(ids) - 1
    qtbot.waitUntil(lambda: ins.lens.model.lens() is not None
                    and ins.lens.model.lens().position == len(ids) - 2, timeout=PASS_TIMEOUT_MS)
    assert not ins.lens.is_busy() and ins._pending is None
