"""`llmlens generate --trace-routing FILE.json` and the MLA cache size in generation timings.

On the tiny qwen2moe and deepseek2_lite models (tests/fixtures/tiny_models.py):
- the routing of the prompt tokens is transformers' router choice stored in the fixture's
  ref.npz (the prompt is the fixture's token ids: the CLI's tokenizer is made to return them);
- the routing of the generated tokens, the last one included, is transformers' router choice
  for the whole sequence (computed here with the fixture's own reference function);
- the JSON's generated ids are the `--json` output's ids;
- a recorder changes nothing: every logit generate() sees is bit-identical with and without one;
- a dense model gets one error line and exit status 2;
- `--json` timings carry the cache bytes per token, the MLA latent size for deepseek2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.cli import main
from engine.generate import Done, Token, generate
from engine.gguf.reader import open_gguf
from engine.models.base import load_model
from engine.sampling import SamplingParams
from engine.tokenizer import load_tokenizer
from engine.trace import Recorder

GREEDY = SamplingParams(temperature=0.0)
N_GEN = 6
MOE_NAMES = ("qwen2moe", "deepseek2_lite")


def transformers_routing(tm, ids: list[int]) -> dict[str, np.ndarray]:
    """transformers' router choice for `ids` (experts [L, T, k] sorted by weight, desc)."""
    from transformers import AutoModelForCausalLM

    from tests.fixtures.make_tiny_models import reference

    hf = AutoModelForCausalLM.from_pretrained(tm.hf_dir, dtype=torch.float32).eval()
    return reference(hf, np.asarray(ids, dtype=np.int64), moe=True)


def run_cli_with_ids(monkeypatch, capsys, path, prompt_ids: list[int], out_json, *extra: str):
    """`llmlens generate PATH -p ... --json --trace-routing OUT` with the prompt tokenized to
    `prompt_ids` (the fixture's ids are random tokens that no text encodes to exactly)."""
    import app.commands.generate as cmd

    real_load = cmd.load_tokenizer

    def load_fixed(gf):
        tok = real_load(gf)
        tok.encode = lambda text, add_special=True, parse_special=True: list(prompt_ids)
        return tok

    monkeypatch.setattr(cmd, "load_tokenizer", load_fixed)
    rc = main(["generate", str(path), "-p", "ignored", "-n", str(N_GEN), "--temperature", "0",
               "--json", "--trace-routing", str(out_json), *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out), json.loads(out_json.read_text(encoding="utf-8"))


def assert_same_experts(doc_tokens, ref_experts, ref_weights, first: int, what: str):
    """doc tokens [first, first + T) route to ref_experts [L, T, k] with ref_weights."""
    L, T, k = ref_experts.shape
    for t in range(T):
        tok = doc_tokens[first + t]
        for li in range(L):
            got = np.asarray(tok["experts"][li])
            got_w = np.asarray(tok["weights"][li])
            assert got.shape == (k,)
            np.testing.assert_array_equal(np.sort(got), np.sort(ref_experts[li, t]),
                                          err_msg=f"{what}: token {first + t}, MoE layer {li}")
            np.testing.assert_allclose(got_w[np.argsort(got)],
                                       ref_weights[li, t][np.argsort(ref_experts[li, t])],
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MOE_NAMES)
def test_trace_routing_matches_transformers(name, tiny_model_factory, monkeypatch, capsys,
                                            tmp_path):
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    prompt = [int(i) for i in ref["ids"]]
    out, doc = run_cli_with_ids(monkeypatch, capsys, tm.gguf["f32"], prompt,
                                tmp_path / "routing.json")
    assert out["prompt_ids"] == prompt
    gen = out["ids"]
    assert len(gen) >= 1, "nothing was generated: the last-token path is untested"

    assert doc["layers"] == [int(x) for x in ref["moe_layers"]]
    seq = prompt + gen
    assert [t["id"] for t in doc["tokens"]] == seq  # every prompt and generated token, in order
    with open_gguf(tm.gguf["f32"]) as gf:
        tok = load_tokenizer(gf)
        texts = [tok.decode([i], skip_special=False) for i in seq]
        assert [t["text"] for t in doc["tokens"]] == texts
    k = ref["experts"].shape[-1]
    for t in doc["tokens"]:
        assert len(t["experts"]) == len(t["weights"]) == len(doc["layers"])
        assert all(len(e) == k == len(set(e)) for e in t["experts"])

    # prompt tokens: the router choice stored in the fixture
    assert_same_experts(doc["tokens"], ref["experts"], ref["expert_weights"], 0, f"{name} prompt")
    # generated tokens (the last one included): transformers over the whole sequence
    full = transformers_routing(tm, seq)
    np.testing.assert_array_equal(full["experts"][:, :len(prompt)], ref["experts"])
    assert_same_experts(doc["tokens"], full["experts"][:, len(prompt):],
                        full["expert_weights"][:, len(prompt):], len(prompt), f"{name} generated")


def test_trace_routing_on_dense_model_is_one_line_error(tiny_model_factory, tmp_path, capsys):
    path = tiny_model_factory("llama").gguf["f32"]
    out = tmp_path / "routing.json"
    rc = main(["generate", str(path), "-p", "hi", "-n", "2", "--trace-routing", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("llmlens: error: ")
    assert "mixture-of-experts" in err
    assert not out.exists()


@pytest.mark.parametrize("name", MOE_NAMES)
def test_recorder_leaves_logits_bit_identical(name, tiny_model_factory):
    tm = tiny_model_factory(name)
    model = load_model(tm.gguf["f32"], n_ctx=64)
    tok = load_tokenizer(model.gguf)
    prompt = [int(i) for i in tm.load_ref()["ids"][:10]]
    forward = model.forward

    def run(trace):
        seen = []

        def spy(*a, **kw):
            logits = forward(*a, **kw)
            seen.append(logits.clone())
            return logits

        model.forward = spy
        try:
            events = list(generate(model, tok, prompt, GREEDY, max_new_tokens=N_GEN, trace=trace))
        finally:
            del model.forward
        return [e.id for e in events if isinstance(e, Token)], seen

    rec = Recorder(names=("moe_topk_ids", "moe_topk_weights"))
    ids_plain, plain = run(None)
    ids_rec, recorded = run(rec)
    assert ids_plain == ids_rec
    assert len(plain) == len(recorded) == len(rec.steps) >= 2
    for a, b in zip(plain, recorded):
        assert torch.equal(a, b)


def test_cache_bytes_per_token_in_timings(tiny_model_factory, capsys):
    tm = tiny_model_factory("deepseek2_lite")
    model = load_model(tm.gguf["f32"], n_ctx=64)
    c = model.config
    mla = c.n_layer * (c.kv_lora_rank + c.qk_rope) * 4  # f32 latent + shared rope key per layer
    assert model.cache_bytes_per_token == mla
    assert mla < c.n_layer * c.n_head * (c.qk_head + c.v_head) * 4  # the decompressed K/V size
    tok = load_tokenizer(model.gguf)
    done = list(generate(model, tok, [int(i) for i in tm.load_ref()["ids"][:5]], GREEDY,
                         max_new_tokens=2))[-1]
    assert isinstance(done, Done) and done.timings.cache_bytes_per_token == mla

    for name, want in (("deepseek2_lite", mla), ("llama", None)):
        path = tiny_model_factory(name).gguf["f32"]
        assert main(["generate", str(path), "-p", "hello", "-n", "2", "--json"]) == 0
        timings = json.loads(capsys.readouterr().out)["timings"]
        if want is None:  # a dense model: the K/V cache of its config
            want = load_model(path, n_ctx=64).cache_bytes_per_token
        assert timings["cache_bytes_per_token"] == want
