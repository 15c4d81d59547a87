"""Model loading reports real progress and can be cancelled mid-way.

Engine level: `load_model(progress=, should_stop=)` on tiny models (dense llama q8_0, MoE
deepseek2_lite f32) and the embedded default model. App level (pytest-qt, offscreen): the chat
tab's load bar is determinate and follows the worker's progress, and Cancel stops a running
load while the previously loaded model keeps answering.
"""

from __future__ import annotations

import gc
import threading

import pytest

from engine.errors import LLMLensError, LoadCancelled
from engine.gguf import reader as gguf_reader
from engine.models import base
from engine.models.base import Model, load_model
from tests.fixtures.tiny_models import tiny_model
from tests.test_chat_app import (LOAD_TIMEOUT_MS, data_dir, open_chat,  # noqa: F401 (fixtures)
                                 set_settings, type_and_send, wait_reply)

TINY = [("llama", "q8_0"), ("deepseek2_lite", "f32")]


def _live_models() -> list[Model]:
    gc.collect()
    return [o for o in gc.get_objects() if Model in type(o).__mro__]  # no abc hooks


def _tracking_open(monkeypatch) -> list:
    """Record every GGUFFile load_model opens."""
    opened = []

    def spy(path):
        gf = gguf_reader.open_gguf(path)
        opened.append(gf)
        return gf

    monkeypatch.setattr(base, "open_gguf", spy)
    return opened


def _check_progress(values: list[float], n_layer: int) -> None:
    assert values, "no progress reported"
    assert values[-1] == 1.0
    assert all(0.0 < v <= 1.0 for v in values)
    assert all(a < b for a, b in zip(values, values[1:])), values  # strictly increasing
    # Reported while weights are built, not only at the end: at least once per layer.
    assert len(values) > n_layer


def _check_cancel(path, monkeypatch) -> None:
    opened = _tracking_open(monkeypatch)
    before = {id(m) for m in _live_models()}
    seen: list[float] = []
    polls = []

    def should_stop() -> bool:
        polls.append(len(seen))
        return bool(seen)  # cancel right after the first progress callback

    with pytest.raises(LoadCancelled, match="loading cancelled") as err:
        load_model(path, progress=seen.append, should_stop=should_stop)
    assert isinstance(err.value, LLMLensError)
    assert len(seen) == 1 and seen[0] < 1.0  # stopped at the very next weight, long before the end
    assert polls[-1] == 1
    # The file load_model opened is closed, and no half-built model is left alive.
    assert len(opened) == 1 and opened[0]._fh.closed
    del err
    assert {id(m) for m in _live_models()} <= before


@pytest.mark.parametrize("name,outtype", TINY)
def test_tiny_progress_and_cancel(name, outtype, monkeypatch):
    path = tiny_model(name).gguf[outtype]
    values: list[float] = []
    model = load_model(path, progress=values.append, should_stop=lambda: False)
    _check_progress(values, model.config.n_layer)

    _check_cancel(path, monkeypatch)

    # A previously loaded model is untouched by a cancelled load.
    from engine.generate import Done, generate
    from engine.sampling import SamplingParams
    from engine.tokenizer import load_tokenizer

    tok = load_tokenizer(model.gguf)
    events = list(generate(model, tok, tok.encode("hello"), SamplingParams(temperature=0.0),
                           max_new_tokens=3))
    assert isinstance(events[-1], Done) and events[-1].timings.gen_tokens >= 1


def test_no_hooks_is_unchanged():
    """Without callbacks nothing is hooked, and a load is not affected by an earlier cancel."""
    path = tiny_model("llama").gguf["q8_0"]
    with pytest.raises(LoadCancelled):
        load_model(path, should_stop=lambda: True)
    assert base._load_hooks.get() is None
    model = load_model(path)
    assert model.config.n_layer >= 1


def test_cancel_from_another_thread():
    """The app's shape: a flag set on one thread stops the load running on another."""
    path = tiny_model("deepseek2_lite").gguf["f32"]
    flag = threading.Event()
    result: list[object] = []

    def run():
        try:
            result.append(load_model(path, progress=lambda _f: flag.set(),
                                     should_stop=flag.is_set))
        except LoadCancelled as exc:
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert len(result) == 1 and isinstance(result[0], LoadCancelled)


@pytest.mark.slow
def test_default_model_progress_and_cancel(default_model, monkeypatch):
    values: list[float] = []
    model = load_model(default_model, progress=values.append)
    _check_progress(values, model.config.n_layer)
    del model
    _check_cancel(default_model, monkeypatch)


# --------------------------------------------------------------------------- app (pytest-qt)

@pytest.mark.slow
def test_chat_load_progress_and_cancel(qtbot, data_dir, open_chat):
    """Load the default model over a tiny one, cancel at the first progress signal: the load
    stops early, the bar was determinate, and the tiny model still answers."""
    from PySide6.QtCore import QObject, Qt, Slot

    ctl = open_chat(tiny_model("gemma3").gguf["f32"])
    info = ctl.model_info
    worker = ctl.engine.worker
    events: list[tuple] = []
    bar = ctl.panel.notice.progress

    class Watcher(QObject):
        """Receives the worker's signals on the GUI thread (queued, after the controller's)."""

        @Slot(int, int)
        def progress(self, rid, pct):
            events.append(("progress", rid, pct, bar.value()))
            if len(events) == 1:  # as a user would: press Cancel in the notice strip
                qtbot.mouseClick(ctl.panel.notice.button, Qt.LeftButton)

        @Slot(int)
        def cancelled(self, rid):
            events.append(("cancelled", rid))

        @Slot(int, dict)
        def loaded(self, rid, _info):
            events.append(("loaded", rid))

        @Slot(int, str)
        def failed(self, rid, msg):
            events.append(("failed", rid, msg))

    watcher = Watcher()
    worker.loadProgress.connect(watcher.progress)
    worker.loadCancelled.connect(watcher.cancelled)
    worker.modelLoaded.connect(watcher.loaded)
    worker.loadFailed.connect(watcher.failed)

    ctl.load_model("")  # the embedded default model
    rid = ctl.load_id
    assert not ctl.panel.notice.isHidden() and not bar.isHidden()
    assert (bar.minimum(), bar.maximum()) == (0, 100)  # determinate
    qtbot.waitUntil(lambda: any(e[0] != "progress" for e in events), timeout=LOAD_TIMEOUT_MS)

    kinds = [e[0] for e in events]
    assert kinds[-1] == "cancelled" and events[-1][1] == rid, events
    assert "loaded" not in kinds and "failed" not in kinds
    first = events[0]
    assert first[1] == rid and 0 <= first[2] < 100 and first[3] == first[2]  # the bar followed
    # Cancelled within a layer of the first report, not after the whole model was built.
    assert all(e[2] < 100 for e in events if e[0] == "progress")
    assert ctl.load_id is None and ctl.panel.notice.isHidden()
    assert ctl.speed_label.text() == "Loading cancelled"
    assert ctl.model_info is info

    set_settings(ctl, max_new_tokens=4, seed=3)
    type_and_send(qtbot, ctl, "still there?")
    reply = wait_reply(qtbot, ctl)
    assert reply.role == "assistant" and reply.token_ids
