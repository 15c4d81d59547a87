"""Granite MoE (`granitemoe`, plain and GraniteMoeShared) and LFM2-MoE (`lfm2moe`) against
references computed here: transformers 5 (float32) and llama.cpp (llama-cpp-python).

Tiny random models (tests/fixtures/make_tiny_models.py: granitemoe, granitemoeshared,
lfm2moe), converted by llama.cpp's own convert_hf_to_gguf.py:

- f32 logits at every position within 1e-4 of max|ref|, the tokens fed in uneven pieces
  (prefill chunks and one-token decode steps) so that the KV cache and LFM2's convolution
  state carry across calls; the experts picked are transformers' router choice, with its gate
  weights, and the recorded router probabilities are its softmax (Granite) or sigmoid (LFM2);
- LFM2: every position decoded one token at a time, and greedy decoding, equal transformers'
  full-sequence outputs; the convolution state refuses to continue from a wrong position;
- `llmlens trace` (in 12-token passes): attention of every attention layer (LFM2's
  convolution layers have none), router probabilities, top-k ids in the router's own order
  and the logit lens equal transformers' with hooks;
- f32 / f16 / q8_0 logits agree with llama.cpp as the dense reference tests do (LFM2-MoE at
  q8_0: 3 positions in 4, as quantization flips a few sigmoid-routed choices), and 32 greedy
  tokens are llama.cpp's at f32;
- the facts the panels read (layer kinds, windows, MoE layers, router info, cache size).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.cli import main
from engine import inspect as inspect_mod
from engine.errors import LLMLensError
from engine.models.base import estimate_memory, load_model
from engine.moe import collect_routing
from engine.trace import Recorder
from tests.fixtures.tiny_models import (llama_cpp_greedy, llama_cpp_logits, max_rel_err,
                                        tiny_model_factory)  # noqa: F401 (fixture)

MODELS = ("granitemoe", "granitemoeshared", "lfm2moe")
TOL = 1e-4
# as tests/test_models_reference.py: llama.cpp rounds activations to f16 / 8-bit blocks
LLAMA_CPP_TOL = {"f32": 1e-4, "f16": 5e-3, "q8_0": 5e-2}
PIECES = ((0, 5), (5, 6), (6, 7), (7, 19), (19, 20), (20, 32))  # prefill, decode, prefill, ...


def run_pieces(model, ids: torch.Tensor, recorder=None, pieces=PIECES) -> np.ndarray:
    cache = model.new_cache(len(ids) + 4)
    out = [model.forward(ids[a:b], cache, a, recorder) for a, b in pieces]
    return torch.cat(out).numpy()


def router_probs(name: str, logits: np.ndarray) -> np.ndarray:
    """transformers' router scores: Granite softmax, LFM2-MoE sigmoid (before the bias)."""
    t = torch.from_numpy(logits).float()
    return (torch.sigmoid(t) if name == "lfm2moe" else torch.softmax(t, -1)).numpy()


# ----------------------------------------------------------------------------- vs transformers

@pytest.mark.parametrize("name", MODELS)
def test_logits_and_routing_match_transformers(name, tiny_model_factory):
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    model = load_model(tm.gguf["f32"])
    assert model.gguf.architecture == tm.arch
    rec = Recorder(names=("moe_topk_ids", "moe_topk_weights", "moe_probs"))
    ids = torch.from_numpy(ref["ids"])
    assert len(ids) == PIECES[-1][1]
    logits = run_pieces(model, ids, rec)
    assert logits.shape == ref["logits"].shape
    assert max_rel_err(logits, ref["logits"]) <= TOL

    assert list(model.moe_layers) == [int(x) for x in ref["moe_layers"]]
    ids_got, w_got = collect_routing(rec, model.moe_layers)
    for li, layer in enumerate(model.moe_layers):
        ref_ids, ref_w = ref["experts"][li], ref["expert_weights"][li]  # [T, k]
        # same experts with the same weights; the order may differ where a selection bias
        # ranks them (LFM2: ours by score + bias, the reference by weight)
        ours, theirs = np.argsort(ids_got[li], 1), np.argsort(ref_ids, 1)
        np.testing.assert_array_equal(np.take_along_axis(ids_got[li], ours, 1),
                                      np.take_along_axis(ref_ids, theirs, 1),
                                      err_msg=f"{name} layer {layer}")
        np.testing.assert_allclose(np.take_along_axis(w_got[li], ours, 1),
                                   np.take_along_axis(ref_w, theirs, 1), rtol=1e-4, atol=1e-6)
        probs = np.concatenate([s.get("moe_probs", layer) for s in rec.steps])  # [T, E]
        np.testing.assert_allclose(probs, router_probs(name, ref["router_logits"][li]),
                                   rtol=0, atol=1e-5)


def test_lfm2_selection_bias_changes_choices(tiny_model_factory):
    """The test model's expert bias is large enough to matter: without it, some tokens would
    pick other experts (so the choices matching transformers checks the bias is applied)."""
    ref = tiny_model_factory("lfm2moe").load_ref()
    k = ref["experts"].shape[-1]
    plain = np.argsort(-ref["router_logits"], axis=-1)[..., :k]  # sigmoid is monotonic
    assert np.any(np.sort(plain, -1) != np.sort(ref["experts"], -1))


def test_lfm2_decode_one_token_at_a_time(tiny_model_factory):
    """Generation's path: a short prompt, then every position as its own forward call, each
    reading the convolution state the previous call left; and greedy decoding."""
    tm = tiny_model_factory("lfm2moe")
    ref = tm.load_ref()
    model = load_model(tm.gguf["f32"])
    ids = ref["ids"]
    steps = [(0, 3)] + [(i, i + 1) for i in range(3, len(ids))]
    logits = run_pieces(model, torch.from_numpy(ids), pieces=steps)
    assert max_rel_err(logits, ref["logits"]) <= TOL

    prompt, want = [int(i) for i in ref["greedy_prompt"]], [int(i) for i in ref["greedy"]]
    cache = model.new_cache(len(prompt) + len(want))
    for rep in range(2):  # a reset cache is as good as a new one
        cache.reset()
        out = model.forward(torch.tensor(prompt), cache, 0, all_logits=False)
        got = []
        for pos in range(len(prompt), len(prompt) + len(want)):
            got.append(int(out[-1].argmax()))
            out = model.forward(torch.tensor(got[-1:]), cache, pos)
        assert got == want, f"pass {rep}"


def test_lfm2_conv_state_cannot_be_rolled_back(tiny_model_factory):
    model = load_model(tiny_model_factory("lfm2moe").gguf["f32"])
    cache = model.new_cache(16)
    model.forward(torch.arange(5, 10), cache, 0)
    with pytest.raises(LLMLensError, match="cannot continue at position 3"):
        model.forward(torch.arange(5, 7), cache, 3)


# ----------------------------------------------------------------------------- panels' facts

def test_layer_facts(tiny_model_factory):
    lfm = load_model(tiny_model_factory("lfm2moe").gguf["f32"])
    assert lfm.layer_kinds == ["conv", "global", "conv", "global"]
    assert lfm.layer_windows == [None] * 4
    assert lfm.moe_layers == [1, 2, 3]  # layer 0 is dense (leading_dense_block_count 1)
    assert lfm.router_info == {"n_expert": 8, "n_used": 2, "n_shared": 0, "gating": "sigmoid"}
    assert lfm.kv_head_of == [0, 0, 1, 1]
    # keys and values of the 2 attention layers only: 2 layers x 2 kv heads x (16 + 16) x 4 B
    assert lfm.cache_bytes_per_token == 2 * 2 * 32 * 4
    cache = lfm.new_cache(64)
    assert cache.bytes_per_token == lfm.cache_bytes_per_token
    assert cache.nbytes == 64 * cache.bytes_per_token + 2 * 2 * 64 * 4  # + 2 conv states [2, 64]
    assert estimate_memory(lfm.gguf, 64).cache_bytes == 64 * lfm.cache_bytes_per_token
    # inspect() sizes (and may refuse) attention results by the layers that record it
    assert inspect_mod._attn_bytes(lfm, 10, 32, None) == 4 * 4 * 10 * 32 * 2
    assert inspect_mod._attn_bytes(lfm, 10, 32, [0, 1]) == 4 * 4 * 10 * 32
    ins = inspect_mod.inspect(lfm, list(range(3, 20)), layers=[0, 1, 2])
    assert sorted(ins.attn) == [1] and sorted(ins.topk_ids) == [1, 2]

    for name, shared in (("granitemoe", 0), ("granitemoeshared", 1)):
        g = load_model(tiny_model_factory(name).gguf["f32"])
        assert g.layer_kinds == ["global", "global"] and g.layer_windows == [None, None]
        assert g.moe_layers == [0, 1]
        assert g.router_info == {"n_expert": 8, "n_used": 2, "n_shared": shared,
                                 "gating": "softmax"}


# ----------------------------------------------------------------------------- llmlens trace

def hf_reference(tm, ids) -> dict:
    """transformers (eager, float32) over ids with hooks: attention per attention layer
    [H, T, T]; per MoE layer the router scores [T, E] and top-k ids [T, k] as the router ranks
    them; the lens logits [T, V] (final norm + lm_head, / logits_scaling for Granite) of every
    layer."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tm.hf_dir, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    layers = hf.model.layers
    resid: dict[int, torch.Tensor] = {}
    routes: dict[int, tuple] = {}
    hooks = [layer.register_forward_hook(
        lambda m, i, o, li=li: resid.__setitem__(li, (o[0] if isinstance(o, tuple) else o)[0]))
        for li, layer in enumerate(layers)]
    for mod_name, mod in hf.named_modules():
        parts = mod_name.split(".")
        if parts[-1] in ("gate", "router") and "layers" in parts and hasattr(mod, "top_k"):
            li = int(parts[parts.index("layers") + 1])
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, li=li: routes.__setitem__(li, o)))
    norm = getattr(hf.model, "norm", None) or hf.model.embedding_norm  # LFM2: embedding_norm
    scale = getattr(hf.config, "logits_scaling", 1.0)
    try:
        with torch.no_grad():
            out = hf(input_ids=torch.as_tensor(np.asarray(ids, np.int64))[None],
                     output_attentions=True)
            lens = {li: (hf.lm_head(norm(h)) / scale).numpy() for li, h in sorted(resid.items())}
    finally:
        for h in hooks:
            h.remove()
    np.testing.assert_allclose(lens[len(layers) - 1], out.logits[0].numpy(), rtol=0, atol=1e-4)
    types = getattr(hf.config, "layer_types", None) or ["full_attention"] * len(layers)
    attn_layers = [li for li, t in enumerate(types) if t == "full_attention"]
    assert len(out.attentions) == len(attn_layers)
    # the routers' own top-k order: by score (+ LFM2's selection bias), best first
    router = {li: (router_probs(tm.name, logits.float().numpy()), idx.numpy())
              for li, (logits, _w, idx) in sorted(routes.items())}
    return {"attn": {li: a[0].numpy() for li, a in zip(attn_layers, out.attentions)},
            "router": router, "lens": lens}


@pytest.mark.parametrize("name", MODELS)
def test_trace_matches_transformers(name, tiny_model_factory, tmp_path, monkeypatch):
    # 3 passes of 12 tokens: the trace's passes carry the KV cache and conv state across
    monkeypatch.setattr(inspect_mod, "PROMPT_CHUNK", 12)
    tm = tiny_model_factory(name)
    ids = tm.load_ref()["ids"]
    T = len(ids)
    assert main(["trace", str(tm.gguf["f32"]), "--ids", ",".join(map(str, ids)),
                 "--out", str(tmp_path / "t.npz")]) == 0
    with np.load(tmp_path / "t.npz") as z:
        got = {k: z[k] for k in z.files}
    ref = hf_reference(tm, ids)

    assert sorted(int(k.split(".")[1]) for k in got if k.startswith("attn.")) == sorted(ref["attn"])
    for li, ref_a in ref["attn"].items():
        a = got[f"attn.{li}"]
        assert a.shape == ref_a.shape == (ref_a.shape[0], T, T)
        np.testing.assert_allclose(a, ref_a, rtol=0, atol=1e-5, err_msg=f"{name} layer {li}")
    moe = sorted(ref["router"])
    assert sorted(int(k.split(".")[1]) for k in got if k.startswith("topk_ids.")) == moe
    for li in moe:
        probs, ref_ids = ref["router"][li]
        np.testing.assert_allclose(got[f"router_probs.{li}"], probs, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(got[f"topk_ids.{li}"], ref_ids, err_msg=f"{name} {li}")
    for li, ref_l in ref["lens"].items():
        lens_ids, lens_logits = got[f"lens_ids.{li}"], got[f"lens_logits.{li}"]  # [T, 10]
        top = np.take_along_axis(ref_l, lens_ids.astype(np.int64), -1)  # ref at our ids
        scale = np.abs(ref_l).max()
        np.testing.assert_allclose(lens_logits, top, rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(lens_logits[:, 0], ref_l.max(-1), rtol=0, atol=1e-4 * scale)


# ----------------------------------------------------------------------------- vs llama.cpp

@pytest.mark.parametrize("outtype", ("f32", "f16", "q8_0"))
@pytest.mark.parametrize("name", MODELS)
def test_logits_match_llama_cpp(name, outtype, tiny_model_factory):
    tm = tiny_model_factory(name)
    ids = tm.load_ref()["ids"]
    model = load_model(tm.gguf[outtype])
    ref = llama_cpp_logits(tm.gguf[outtype], ids)
    ours = run_pieces(model, torch.from_numpy(ids))
    tol = LLAMA_CPP_TOL[outtype]
    if name == "lfm2moe" and outtype == "q8_0":
        # q8_0 moves sigmoid router scores by more than the gaps between the 2nd and 3rd
        # expert of some tokens (>= 0.004 at f32 here), and llama.cpp (8-bit activations)
        # and we (exact products) round differently: a few tokens pick another expert, and
        # their rows differ by ~0.2 (measured: 5 of 32). The rest must agree as closely as
        # the dense models' do; a wrong kernel or layout is off by O(1) everywhere.
        per_row = np.abs(ours - ref).max(-1) / np.abs(ref).max()  # [T]
        assert np.mean(per_row <= tol) >= 0.75 and per_row.max() <= 0.5, np.round(per_row, 3)
    else:
        assert max_rel_err(ours, ref) <= tol


@pytest.mark.parametrize("name", MODELS)
def test_greedy_32_matches_llama_cpp(name, tiny_model_factory):
    tm = tiny_model_factory(name)
    prompt = [int(i) for i in tm.load_ref()["greedy_prompt"]]
    model = load_model(tm.gguf["f32"])
    cache = model.new_cache(len(prompt) + 33)
    out = model.forward(torch.tensor(prompt), cache, 0, all_logits=False)
    got = []
    for pos in range(len(prompt), len(prompt) + 32):
        got.append(int(out[-1].argmax()))
        out = model.forward(torch.tensor(got[-1:]), cache, pos)
    assert got == llama_cpp_greedy(tm.gguf["f32"], prompt, 32)
