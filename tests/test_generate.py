"""generate(): the event stream, stop conditions, timings, determinism.

The stop logic runs on a scripted model (the next token is a fixed function of the position)
and a byte-level tokenizer, so every case is exact; the engine path runs on a tiny llama.
"""

from __future__ import annotations

import codecs

import pytest
import torch

from engine.errors import ContextOverflowError
from engine.generate import Done, PromptDone, Token, generate
from engine.kv_cache import KVCache
from engine.models.base import load_model
from engine.sampling import SamplingParams
from engine.trace import Recorder
from tests.fixtures.tiny_models import tiny_model_factory  # noqa: F401 (fixture)

GREEDY = SamplingParams(temperature=0)


class ByteTokenizer:
    """ids 0..255 are bytes; 256 is EOS, 257 an end-of-turn token."""

    eos_id, bos_id, n_vocab = 256, None, 258
    eot_ids = frozenset({257})

    def decode(self, ids, skip_special=True):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def stream_decoder(self):
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

        class Dec:
            def feed(self, i):
                return utf8.decode(bytes([i]) if i < 256 else b"")

            def flush(self):
                return utf8.decode(b"", final=True)
        return Dec()


class ScriptedModel:
    """Emits `script` (bytes/ids) after the prompt, then repeats its last id."""

    n_vocab = 258

    def __init__(self, script, n_ctx=64):
        self.script = list(script)
        self.n_ctx = n_ctx
        self.calls = []

    def new_cache(self, n_ctx=None):
        return KVCache(1, 1, n_ctx or self.n_ctx, 1)

    def forward(self, ids, cache, start_pos, recorder=None, *, all_logits=True):
        self.calls.append((start_pos, len(ids)))
        if recorder is not None:
            recorder.begin_step(start_pos, len(ids))
        nxt = start_pos + len(ids) - self.prompt_len
        tok = self.script[min(nxt, len(self.script) - 1)]
        logits = torch.full((1, self.n_vocab), -10.0)
        logits[0, tok] = 10.0
        logits[0, (tok + 1) % self.n_vocab] = 9.0
        return logits


def run(script, prompt=b"ab", **kw):
    model = ScriptedModel(script, kw.pop("n_ctx", 64))
    model.prompt_len = len(prompt)
    events = list(generate(model, ByteTokenizer(), list(prompt), GREEDY, **kw))
    return model, events


def tokens(events):
    return [e for e in events if isinstance(e, Token)]


def test_event_order_and_eos():
    _, events = run(list(b"hello") + [256])
    assert isinstance(events[0], PromptDone) and events[0].n_tokens == 2
    assert isinstance(events[-1], Done) and events[-1].reason == "eos"
    toks = tokens(events)
    assert [t.index for t in toks] == list(range(5))
    assert "".join(t.text for t in toks) == events[-1].text == "hello"
    t = events[-1].timings
    assert t.gen_tokens == 5 and len(t.per_token_s) == 5 and t.prompt_tokens == 2
    assert t.ttft_s is not None and t.gen_tok_s > 0 and t.prompt_tok_s > 0


def test_end_of_turn_token_stops():
    _, events = run(list(b"hi") + [257, 65])
    assert events[-1].reason == "eos" and events[-1].text == "hi"


def test_probabilities_and_alternatives():
    _, events = run(list(b"x") + [256], top_n=3)
    tok = tokens(events)[0]
    assert tok.top[0][0] == tok.id == ord("x") and tok.top[1][0] == ord("y")
    assert tok.prob == pytest.approx(tok.top[0][2]) and 0.5 < tok.prob < 1
    assert tok.top[0][2] > tok.top[1][2] > tok.top[2][2]


def test_max_tokens():
    model, events = run(list(b"abcdefgh"), max_new_tokens=3)
    assert events[-1].reason == "length" and events[-1].text == "abc"
    assert len(model.calls) == 1 + 2  # the prompt, then a forward for each token but the last


def test_stop_string_is_cut_and_never_streamed():
    _, events = run(list(b"say STOP now"), stop_strings=["STOP"])
    assert events[-1].reason == "stop" and events[-1].text == "say "
    assert "".join(t.text for t in tokens(events)) == "say "


def test_partial_stop_string_is_released_when_it_does_not_complete():
    _, events = run(list(b"a STAR b") + [256], stop_strings=["STOP"])
    assert events[-1].reason == "eos" and events[-1].text == "a STAR b"
    assert "".join(t.text for t in tokens(events)) == "a STAR b"


def test_multibyte_characters_stream_whole():
    _, events = run(list("é€".encode()) + [256])
    texts = [t.text for t in tokens(events)]
    assert texts == ["", "é", "", "", "€"]


def test_cancel_is_checked_every_token():
    n = {"tokens": 0}

    def should_stop():
        return n["tokens"] >= 2

    model = ScriptedModel(list(b"abcdef"))
    model.prompt_len = 1
    events = []
    for ev in generate(model, ByteTokenizer(), [1], GREEDY, should_stop=should_stop):
        events.append(ev)
        n["tokens"] += isinstance(ev, Token)
    assert events[-1].reason == "cancelled" and events[-1].text == "ab"


def test_context_limits():
    with pytest.raises(ContextOverflowError, match="context window is 4 tokens"):
        run(list(b"abc"), prompt=b"abcd", n_ctx=4)
    model, events = run(list(b"abcdefgh"), prompt=b"ab", n_ctx=6, max_new_tokens=100)
    assert events[-1].reason == "context" and events[-1].text == "abcd"  # 2 + 4 = 6 tokens
    assert max(start + n for start, n in model.calls) <= 6


# -- on a real (tiny) model -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    from engine.tokenizer import load_tokenizer

    tm = tiny_model_factory("llama")
    model = load_model(tm.gguf["f32"], n_ctx=64)
    return model, load_tokenizer(model.gguf), [int(i) for i in tm.load_ref()["ids"][:6]]


def test_greedy_generation_matches_stepwise_forward(tiny):
    model, tok, prompt = tiny
    events = list(generate(model, tok, prompt, GREEDY, max_new_tokens=10))
    ids = [t.id for t in tokens(events)]
    # reference: full forward of the growing sequence without any cache reuse
    seq = list(prompt)
    for _ in range(len(ids)):
        logits = model.forward(torch.tensor(seq), model.new_cache(len(seq)), 0)
        nxt = int(logits[-1].argmax())
        if nxt in tok.eot_ids or nxt == tok.eos_id:
            break
        seq.append(nxt)
    assert ids == seq[len(prompt):]
    assert events[-1].text == tok.decode(ids)


def test_same_seed_same_text(tiny):
    model, tok, prompt = tiny
    params = SamplingParams(temperature=1.0, seed=1234)
    runs = [[t.id for t in tokens(generate(model, tok, prompt, params, max_new_tokens=12))]
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_trace_records_each_step(tiny):
    model, tok, prompt = tiny
    rec = Recorder(["attn_probs"])
    events = list(generate(model, tok, prompt, GREEDY, max_new_tokens=4, trace=rec))
    n = len(tokens(events))
    assert len(rec.steps) == n  # the prompt step, then a decode step per token but the last
    assert rec.steps[0].get("attn_probs", 0).shape == (model.config.n_head, len(prompt), len(prompt))
    last = rec.steps[-1]
    assert last.get("attn_probs", 1).shape == (model.config.n_head, 1, last.start_pos + 1)


# -- CLI --------------------------------------------------------------------------------------------

def test_cli_generate_json_and_logits(tiny, tiny_model_factory, tmp_path, capsys):
    import json

    import numpy as np

    from app.cli import main

    model, tok, prompt = tiny
    path = str(tiny_model_factory("llama").gguf["f32"])
    text = tok.decode(prompt)
    assert main(["generate", path, "-p", text, "-n", "5", "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = [t.id for t in tokens(generate(model, tok, out["prompt_ids"], GREEDY, max_new_tokens=5))]
    assert out["ids"] == want and out["text"] == tok.decode(want)
    assert out["timings"]["prompt_tokens"] == len(out["prompt_ids"])

    assert main(["generate", path, "-p", text, "-n", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == out["text"] + "\n"

    npy = tmp_path / "l.npy"
    ids = ",".join(map(str, prompt))
    assert main(["logits", path, "--ids", ids, "--out", str(npy)]) == 0
    got = np.load(npy)
    assert got.dtype == np.float32 and got.shape == (len(prompt), model.n_vocab)
    np.testing.assert_array_equal(got, model.forward(torch.tensor(prompt), model.new_cache(), 0))
    assert main(["logits", path, "--ids", "1,x", "--out", str(npy)]) == 2
