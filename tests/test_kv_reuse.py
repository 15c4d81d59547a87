"""A kept cache across turns: generate() processes only what follows the longest common prefix.

On tiny random models (tests/fixtures/tiny_models.py) of every kind of cache: llama (KVCache),
gemma3 and gpt-oss (sliding-window layers), deepseek2 (the MLA latent cache), each float32 and,
for llama, gemma3 and deepseek2, float16, and lfm2moe (short-convolution state + attention):

- the first-token logits after reuse equal a full recomputation of the whole prompt (1e-5;
  3e-4 with a float16 cache: values that differ in the last float32 bit with the batch shape
  can round to neighbouring float16 values, 5e-4 apart);
- the next turn, a regenerated reply, an edited last message and a changed system prompt reuse
  exactly what they can (a convolution cache only restarts where its state is known);
- through the app's engine worker: prompt tokens processed per turn, a few recent
  conversations kept within a memory budget, and the live trace's
  routing stays complete (copied from the previous reply's trace, or the prompt is processed
  in full when that trace has nothing to give);
- the float16 MLA cache: its size, and its logits against transformers and llama.cpp's own
  float16 cache;
- `llmlens bench --chat-turns N --json`'s keys.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.generate import Done, PromptDone, Token, generate
from engine.kv_cache import common_prefix
from engine.models.base import load_model
from engine.sampling import SamplingParams
from engine.tokenizer import load_tokenizer
from tests.fixtures.tiny_models import max_rel_err, tiny_model_factory  # noqa: F401 (fixture)

GREEDY = SamplingParams(temperature=0.0)
# name, cache dtype (None: the model's default; float16: the KV / MLA cache as llama.cpp keeps it), tolerance on the first-token logits
CASES = [("llama", None, 1e-5), ("llama", torch.float16, 3e-4), ("gemma3", None, 1e-5),
         ("gemma3", torch.float16, 3e-4), ("gpt_oss", None, 1e-5),
         ("deepseek2_lite", torch.float32, 1e-5), ("deepseek2_lite", torch.float16, 3e-4),
         ("lfm2moe", None, 1e-5)]
IDS = [f"{n}-{'f16' if d is torch.float16 else 'default'}" for n, d, _ in CASES]


class Capture:
    """Wraps model.forward to keep the logits of the last forward call."""

    def __init__(self, model) -> None:
        self.model, self.forward = model, model.forward
        self.last: torch.Tensor | None = None
        model.forward = self

    def __call__(self, ids, cache, start_pos, recorder=None, *, all_logits=True):
        out = self.forward(ids, cache, start_pos, recorder, all_logits=all_logits)
        self.last = out[-1].clone()  # [V]
        return out


def setup(factory, name: str, dtype):
    tm = factory(name)
    model = load_model(tm.gguf["f32"], n_ctx=128)
    tok = load_tokenizer(model.gguf)
    cache = model.new_cache(128, dtype=dtype) if dtype is not None else model.new_cache(128)
    ids = [int(i) for i in tm.load_ref()["ids"]]
    return model, tok, cache, ids


def full_logits(model, prompt: list[int], dtype) -> torch.Tensor:
    """The last position's logits from one pass over the whole prompt on a fresh cache."""
    cache = model.new_cache(128, dtype=dtype) if dtype is not None else model.new_cache(128)
    return model.forward(torch.tensor(prompt), cache, 0)[-1]  # [V]


def turn(model, tok, cache, prompt: list[int], n: int = 4):
    """generate() on the kept cache: (PromptDone, generated ids, Done, first-token logits [V])."""
    cap = Capture(model)
    first = None
    try:
        events = []
        for ev in generate(model, tok, prompt, GREEDY, max_new_tokens=n, cache=cache):
            if isinstance(ev, PromptDone):
                first = cap.last  # the prompt pass's logits, before any decode step
            events.append(ev)
    finally:
        model.forward = cap.forward
    pd = next(e for e in events if isinstance(e, PromptDone))
    gen = [e.id for e in events if isinstance(e, Token)]
    return pd, gen, events[-1], first


def check(model, prompt, first, dtype, tol) -> None:
    ref = full_logits(model, prompt, dtype)
    assert max_rel_err(first.numpy(), ref.numpy()) <= tol


@pytest.mark.parametrize("name, dtype, tol", CASES, ids=IDS)
def test_next_turn_reuses_the_conversation(name, dtype, tol, tiny_model_factory):
    model, tok, cache, ids = setup(tiny_model_factory, name, dtype)
    p1 = ids[:20]  # longer than the sliding windows (8) of gemma3 and gpt-oss
    pd1, gen, done, first = turn(model, tok, cache, p1)
    assert (pd1.n_tokens, pd1.n_reused) == (20, 0)
    check(model, p1, first, dtype, tol)
    assert len(gen) == 4 and done.reason == "length"
    # the last sampled token was never forwarded: it is not in the cache
    assert cache.ids == p1 + gen[:-1]

    p2 = p1 + gen + ids[20:27]
    pd2, _, done2, first2 = turn(model, tok, cache, p2, n=1)
    assert (pd2.n_reused, pd2.n_tokens) == (23, len(p2) - 23)
    assert (done2.timings.prompt_tokens, done2.timings.prompt_reused) == (len(p2) - 23, 23)
    check(model, p2, first2, dtype, tol)


@pytest.mark.parametrize("name, dtype, tol", CASES, ids=IDS)
def test_regenerate_edit_and_system_prompt_reuse_what_they_can(name, dtype, tol,
                                                               tiny_model_factory):
    model, tok, cache, ids = setup(tiny_model_factory, name, dtype)
    recurrent = not cache.any_position  # lfm2moe: a convolution state summarises the past
    system, user1, user2 = ids[:8], ids[8:16], ids[16:22]
    p1 = system + user1
    _, gen, _, first = turn(model, tok, cache, p1)

    # regenerate: the same prompt again; only its last token is processed
    pd, gen_again, _, again = turn(model, tok, cache, p1)
    assert (pd.n_reused, pd.n_tokens) == (len(p1) - 1, 1)
    check(model, p1, again, dtype, tol)
    assert gen_again == gen  # greedy

    # the next turn
    p2 = p1 + gen + user2
    pd, _, _, logits = turn(model, tok, cache, p2)
    assert pd.n_reused == len(p1) + len(gen) - 1
    check(model, p2, logits, dtype, tol)

    # an edit of the last message: from its first changed token on
    edited = p1 + gen + user2[:2] + ids[30:34]
    pd, _, _, logits = turn(model, tok, cache, edited)
    lcp = len(p1) + len(gen) + 2
    # a convolution state is known where the prompt before the reply ended (a checkpoint)
    assert pd.n_reused == (len(p1) - 1 if recurrent else lcp)
    assert pd.n_tokens == len(edited) - pd.n_reused
    check(model, edited, logits, dtype, tol)

    # a changed system prompt: only what precedes the change
    changed = system[:3] + ids[40:45] + user1
    keep = common_prefix(cache.ids, changed)
    pd, _, _, logits = turn(model, tok, cache, changed)
    assert pd.n_reused == (0 if recurrent else keep) and keep >= 3
    check(model, changed, logits, dtype, tol)


@pytest.mark.parametrize("name, dtype, tol", CASES, ids=IDS)
def test_a_copied_prefix_gives_the_same_logits(name, dtype, tol, tiny_model_factory):
    """What the cache pool does for another conversation sharing a prefix with a kept one."""
    model, tok, source, ids = setup(tiny_model_factory, name, dtype)
    turn(model, tok, source, ids[:16])  # checkpoint at 15 for a convolution cache
    target = model.new_cache(128, dtype=dtype) if dtype is not None else model.new_cache(128)
    n = target.copy_prefix(source, 17)  # the prompt, then one generated token
    assert n == (15 if not source.any_position else 17) and target.ids == source.ids[:n]
    prompt = source.ids[:17] + ids[30:36]
    pd, _, _, logits = turn(model, tok, target, prompt)
    assert pd.n_reused == n
    check(model, prompt, logits, dtype, tol)


def test_a_foreign_forward_pass_forgets_the_ids_it_overwrites(tiny_model_factory):
    model, tok, cache, ids = setup(tiny_model_factory, "llama", None)
    turn(model, tok, cache, ids[:12])
    assert len(cache.ids) == 15
    model.forward(torch.tensor(ids[20:25]), cache, 5)  # someone else writes positions 5..9
    assert cache.ids == ids[:5]
    pd, _, _, logits = turn(model, tok, cache, ids[:12])
    assert pd.n_reused == 5
    check(model, ids[:12], logits, None, 1e-5)


def test_a_convolution_cache_restarts_only_where_its_state_is_known(tiny_model_factory):
    from engine.errors import LLMLensError

    model, tok, cache, ids = setup(tiny_model_factory, "lfm2moe", None)
    turn(model, tok, cache, ids[:12])            # checkpoint at 11, state at 15
    assert sorted(cache.checkpoints) == [11]
    assert cache.reusable(ids[:9] + ids[40:44]) == 0
    assert cache.reusable(ids[:13]) == 11
    with pytest.raises(LLMLensError, match="not known"):
        cache.truncate(7)


# ----------------------------------------------------------------------------- the engine worker

def worker_for(path, qtbot=None):
    from app.engine_worker import EngineWorker

    w = EngineWorker()
    seen: dict[str, list] = {"prompt": [], "finished": [], "failed": [], "ids": []}
    w.promptReady.connect(lambda _r, _t, ids, _s: seen["ids"].append(list(ids)))
    w.promptDone.connect(lambda _r, info: seen["prompt"].append(info))
    w.finished.connect(lambda _r, res: seen["finished"].append(res))
    w.failed.connect(lambda _r, msg: seen["failed"].append(msg))
    w.loadFailed.connect(lambda _r, msg: seen["failed"].append(msg))
    w.load(1, str(path), 256, 0)
    assert not seen["failed"] and w.model is not None
    return w, seen


def ask(w, seen, messages, system: str = "", trace=None, mode: str = "chat"):
    from app.prompting import PromptRequest

    req = PromptRequest(mode=mode, system_prompt=system, messages=tuple(messages),
                        params={"temperature": 0.0}, max_new_tokens=3)
    w.generate(len(seen["finished"]) + 10, req, trace)
    assert not seen["failed"], seen["failed"]
    return seen["prompt"][-1], seen["finished"][-1]


def test_worker_processes_only_the_new_tokens_of_each_turn(tiny_model_factory):
    w, seen = worker_for(tiny_model_factory("llama").gguf["f32"])
    messages = []
    for i, text in enumerate(["hello there", "what is two plus two", "thanks a lot"]):
        messages.append(("user", text))
        cached = list(w.cache.ids) if w.cache is not None else []
        info, res = ask(w, seen, messages)
        ids = seen["ids"][-1]
        assert info["n_reused"] == min(common_prefix(cached, ids), len(ids) - 1)
        assert info["n_tokens"] + info["n_reused"] == len(ids)
        assert res["timings"]["prompt_reused"] == info["n_reused"]
        if i:  # the earlier conversation is kept: the new message and the markup are processed
            assert info["n_reused"] > len(seen["ids"][-2]) // 2
        messages.append(("assistant", res["text"]))
    # regenerate the last reply: one token processed
    info, _ = ask(w, seen, messages[:-1])
    assert info["n_tokens"] == 1
    # a new system prompt: everything after it again
    info, _ = ask(w, seen, messages[:-1], system="be brief")
    assert info["n_reused"] == common_prefix(seen["ids"][-2], seen["ids"][-1])


def test_worker_keeps_recent_conversations_within_a_budget(tiny_model_factory):
    w, seen = worker_for(tiny_model_factory("llama").gguf["f32"])
    a = [("user", "the first conversation is about the sea and its fish")]
    b = [("user", "a second one, about mountains")]
    ask(w, seen, a)
    a_ids = seen["ids"][-1]
    info, _ = ask(w, seen, b)
    assert info["n_reused"] < len(a_ids) // 2 and len(w.caches.caches) == 2
    info, res = ask(w, seen, a + [("assistant", "fish"), ("user", "which ones?")])
    assert info["n_reused"] >= len(a_ids) - 1  # conversation a's cache was kept aside
    assert len(w.caches.caches) == 2

    w.caches.budget_bytes = 1  # nothing beyond the cache in use
    ask(w, seen, b)
    assert len(w.caches.caches) == 1
    info, _ = ask(w, seen, a + [("assistant", "fish"), ("user", "which ones?")])
    assert info["n_reused"] < len(a_ids) // 2  # a's cache is gone: read again


def test_worker_keeps_the_live_routing_complete(tiny_model_factory):
    from engine.inspect import inspect
    from engine.trace import LiveTrace

    w, seen = worker_for(tiny_model_factory("deepseek2_lite").gguf["f32"])
    n_layer = w.model.config.n_layer

    def live(attention=True, routing=True):
        return LiveTrace(n_layer, attention=attention, routing=routing)

    def assert_complete(trace):
        """Every forwarded position has routing, equal to one full pass's (up to float32
        rounding: decode steps go through the fused attention and rotary kernels, the full
        pass through batched products, which sum in another order)."""
        n = trace.n_tokens
        assert n == len(w.cache.ids) > len(seen["ids"][-1])
        ins = inspect(w.model, list(w.cache.ids), what=("routing",))
        snap = trace.snapshot_routing(0, n)
        for li in snap.layers:
            np.testing.assert_array_equal(snap.topk_ids[li], ins.topk_ids[li])
            np.testing.assert_allclose(snap.topk_weights[li], ins.topk_weights[li], atol=3e-5)
            np.testing.assert_allclose(snap.router_probs[li], ins.router_probs[li], atol=3e-5)

    messages = [("user", "hello")]
    first = live()
    info, res = ask(w, seen, messages, trace=first)
    assert info["n_reused"] == 0
    messages += [("assistant", res["text"]), ("user", "and then")]
    second = live()
    info, res = ask(w, seen, messages, trace=second)
    assert info["n_reused"] > 0  # the first trace's routing was copied into the second
    assert_complete(second)

    # the GUI cleared the trace (another conversation was shown): nothing to copy, full pass
    second.clear()
    third = live()
    info, _ = ask(w, seen, messages, trace=third)
    assert info["n_reused"] == 0
    assert_complete(third)

    # attention alone (one row per step) needs no earlier rows: reuse, and the same row
    attn = live(routing=False)
    info, _ = ask(w, seen, messages, trace=attn)
    assert info["n_reused"] == len(seen["ids"][-1]) - 1
    pos, rows = attn.newest_attention()
    ins = inspect(w.model, list(w.cache.ids)[:pos + 1], what=("attention",))
    for li, row in enumerate(rows):
        np.testing.assert_allclose(row, ins.attn[li][:, pos], atol=1e-5)


# ----------------------------------------------------------------------------- float16 MLA cache

def test_mla_cache_is_float16_by_default(tiny_model_factory, monkeypatch):
    from tests.fixtures.llama_cpp_ref import no_repack

    monkeypatch.setenv("LLMLENS_MLA_CACHE", "f16")  # tests/conftest.py makes it f32
    tm = tiny_model_factory("deepseek2_lite")
    model = load_model(tm.gguf["f32"], n_ctx=64)
    c = model.config
    cache = model.new_cache()
    per_token = c.n_layer * (c.kv_lora_rank + c.qk_rope) * 2
    assert all(t.dtype == torch.float16 for t in cache.latents)
    assert cache.bytes_per_token == model.cache_bytes_per_token == per_token
    ref = tm.load_ref()
    ids = [int(i) for i in ref["ids"]]
    ours = model.forward(torch.tensor(ids), cache, 0).numpy()
    # float16 rounding alone: llama.cpp's own f16 cache is 1.1e-2 off transformers here
    assert max_rel_err(ours, ref["logits"]) <= 2e-2
    from llama_cpp import Llama

    with no_repack():
        llm = Llama(model_path=str(tm.gguf["f32"]), n_ctx=64, n_batch=64, n_ubatch=64,
                    logits_all=True, n_threads=2, type_k=1, type_v=1, verbose=False)  # f16
    try:
        llm.eval(ids)
        theirs = np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()
    assert max_rel_err(ours, theirs) <= 5e-3  # seen: 2.2e-3
    tok = load_tokenizer(model.gguf)
    done = list(generate(model, tok, ids[:5], GREEDY, max_new_tokens=2))[-1]
    assert isinstance(done, Done) and done.timings.cache_bytes_per_token == per_token

    monkeypatch.setenv("LLMLENS_MLA_CACHE", "f32")
    assert load_model(tm.gguf["f32"], n_ctx=64).cache_bytes_per_token == 2 * per_token


# ----------------------------------------------------------------------------- the bench

def test_bench_chat_turns_json(tiny_model_factory, capsys):
    from app.cli import main

    path = tiny_model_factory("llama").gguf["f32"]
    assert main(["bench", str(path), "--chat-turns", "3", "--chat-reply-tokens", "2",
                 "--reps", "1", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    for key in ("ttft_s_per_turn", "prompt_tokens_per_turn", "prompt_reused_per_turn",
                "context_tokens_per_turn"):
        assert len(s[key]) == 3, key
    assert s["mode"] == "complete" and s["turns"] == 3  # the tiny llama has no chat template
    assert s["prompt_reused_per_turn"][0] == 0
    for t in range(3):
        assert (s["prompt_tokens_per_turn"][t] + s["prompt_reused_per_turn"][t]
                == s["context_tokens_per_turn"][t])
        assert s["no_reuse"]["prompt_tokens_per_turn"][t] == s["context_tokens_per_turn"][t]
    assert s["prompt_reused_per_turn"][2] > s["prompt_reused_per_turn"][1] > 0
    assert s["ttft_ratio_last_first"] == pytest.approx(
        s["ttft_s_per_turn"][-1] / s["ttft_s_per_turn"][0], rel=1e-2)
