"""Sanity tests of the tiny reference models (tests/fixtures/tiny_models.py).

They check the fixtures themselves, not the engine: every recipe builds, its GGUF files open with
our reader and hold what the architecture needs, the reference outputs are not degenerate, and
llama.cpp (llama-cpp-python) reproduces transformers' logits from the f32 GGUF, which validates
the random model, the converter and the reference in one go.

The first run builds all models into the test cache (about 1-2 minutes on 2 cores); later runs
reuse them.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from engine.gguf.reader import open_gguf
from tests.fixtures.make_tiny_models import N_IDS, RECIPES, build
from tests.fixtures.tiny_models import (  # noqa: F401  (tiny_model_factory is a fixture)
    ARCHS, MOE_ARCHS, llama_cpp_greedy, llama_cpp_logits, max_rel_err, tiny_model,
    tiny_model_factory)

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python not installed")


# recipes whose routers rank experts by scores + a correction bias, not by their logits
SELECTION_BIAS = ("glm4moe", "ernie4_5_moe", "deepseek2_v3")
SELECTION_BIAS += ("lfm2moe",)


def _n_layers(name: str) -> int:
    return RECIPES[name].config["num_hidden_layers"]


@pytest.mark.parametrize("name", ARCHS)
def test_reference_outputs_are_informative(tiny_model_factory, name):
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    ids, logits = ref["ids"], ref["logits"]
    assert ids.shape == (N_IDS,) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < tm.vocab_size
    assert logits.shape == (N_IDS, tm.vocab_size) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    # loud random weights: a real spread of logits and different argmaxes along the sequence
    assert logits.std(axis=1).min() > 0.3
    assert len(set(logits.argmax(axis=1).tolist())) > N_IDS // 4
    assert ref["greedy"].shape == (12,) and (ref["greedy_prompt"] == ids[:8]).all()


@pytest.mark.parametrize("name", MOE_ARCHS)
def test_moe_routing_is_recorded_and_not_degenerate(tiny_model_factory, name):
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    cfg = RECIPES[name].config
    k = cfg.get("num_experts_per_tok") or cfg["moe_k"]  # ERNIE 4.5 names them moe_*
    n_expert = (cfg.get("n_routed_experts") or cfg.get("num_experts") or cfg.get("num_local_experts")
                or cfg.get("moe_num_experts"))
    first_moe = cfg.get("first_k_dense_replace", cfg.get("moe_layer_start_index", 0))
    first_moe = cfg.get("num_dense_layers", first_moe)  # LFM2-MoE
    assert ref["moe_layers"].tolist() == list(range(first_moe, _n_layers(name)))
    n_moe = len(ref["moe_layers"])
    assert ref["experts"].shape == (n_moe, N_IDS, k)
    assert ref["expert_weights"].shape == (n_moe, N_IDS, k)
    assert ref["router_logits"].shape == (n_moe, N_IDS, n_expert)
    experts = ref["experts"]
    assert experts.min() >= 0 and experts.max() < n_expert
    # each token's k experts are distinct and sorted by weight, descending
    assert all(len(set(row.tolist())) == k for row in experts.reshape(-1, k))
    assert (np.diff(ref["expert_weights"], axis=-1) <= 0).all()
    # the recorded choice is the top-k of the recorded router logits (unless a selection bias
    # takes part in the ranking: DeepSeek-V3 / GLM-4.5 / ERNIE 4.5, see tests/test_glm_ernie.py)
    if name not in SELECTION_BIAS:
        top = np.argsort(-ref["router_logits"], axis=-1, kind="stable")[..., :k]
        assert (np.sort(top, axis=-1) == np.sort(experts, axis=-1)).all()
    for layer in range(n_moe):
        used = np.unique(experts[layer])
        assert len(used) >= n_expert // 2, f"layer {layer} routes to only {used}"


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("name", ARCHS)
def test_gguf_opens_with_expected_arch_and_tensors(tiny_model_factory, name, outtype):
    tm = tiny_model_factory(name)
    n_layers = _n_layers(name)
    with open_gguf(tm.gguf[outtype]) as gf:
        assert gf.architecture == tm.arch
        # GLM-4.5's block_count also counts its NextN (MTP) blocks
        assert gf.metadata[f"{tm.arch}.block_count"] == \
            n_layers + gf.metadata.get(f"{tm.arch}.nextn_predict_layers", 0)
        assert len(gf.metadata["tokenizer.ggml.tokens"]) == tm.vocab_size
        names = {t.name for t in gf.tensors}
        final_norm = "token_embd_norm.weight" if tm.arch == "lfm2moe" else "output_norm.weight"
        for required in ["token_embd.weight", final_norm,
                         *(f"blk.{i}.attn_norm.weight" for i in range(n_layers))]:
            assert required in names
        emb = gf.tensor("token_embd.weight")
        assert emb.shape == (tm.vocab_size, RECIPES[name].config["hidden_size"])
        types = {t.type_name for t in gf.tensors}
        expected = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[outtype]
        assert expected in types
        if outtype == "f32":
            assert types == {"F32"}
        if tm.moe:
            ref = tm.load_ref()
            assert gf.metadata[f"{tm.arch}.expert_count"] == ref["router_logits"].shape[-1]
            assert gf.metadata[f"{tm.arch}.expert_used_count"] == ref["experts"].shape[-1]
            for layer in ref["moe_layers"].tolist():
                for t in ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
                    assert f"blk.{layer}.{t}.weight" in names


@needs_llama_cpp
@pytest.mark.parametrize("name", ARCHS)
def test_llama_cpp_f32_logits_match_transformers(tiny_model_factory, name):
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    got = llama_cpp_logits(tm.gguf["f32"], ref["ids"])
    assert got.shape == ref["logits"].shape
    assert max_rel_err(got, ref["logits"]) < 1e-3


@needs_llama_cpp
@pytest.mark.parametrize("name", ARCHS)
def test_llama_cpp_quantized_files_load_and_stay_close(tiny_model_factory, name):
    # Loose bounds, only to catch a broken conversion (garbage logits are off by ~100%):
    # f16 measures ~1e-3..1e-2, q8_0 ~3e-2..2e-1 (a flipped expert moves MoE logits a lot).
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    assert max_rel_err(llama_cpp_logits(tm.gguf["f16"], ref["ids"]), ref["logits"]) < 5e-2
    assert max_rel_err(llama_cpp_logits(tm.gguf["q8_0"], ref["ids"]), ref["logits"]) < 0.5


@needs_llama_cpp
@pytest.mark.parametrize("name", ["llama", "gemma3", "deepseek2", "qwen2moe"])
def test_llama_cpp_greedy_matches_transformers(tiny_model_factory, name):
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    got = llama_cpp_greedy(tm.gguf["f32"], ref["greedy_prompt"], len(ref["greedy"]))
    assert got == ref["greedy"].tolist()


def test_cache_is_reused_and_build_is_deterministic(tiny_model_factory, tmp_path):
    cached = tiny_model_factory("qwen3")
    again = tiny_model("qwen3")
    assert again == cached  # same directory: found by hash, not rebuilt
    # the converter is deterministic; its inputs (tokenizer, weights) and the reference must be
    build("qwen3", tmp_path / "qwen3", outtypes=())
    with np.load(tmp_path / "qwen3" / "ref.npz") as fresh:
        ref = cached.load_ref()
        assert (fresh["ids"] == ref["ids"]).all()
        assert np.array_equal(fresh["logits"], ref["logits"])
    for f in ("tokenizer.json", "config.json", "model.safetensors"):
        assert (tmp_path / "qwen3" / "hf" / f).read_bytes() == (cached.hf_dir / f).read_bytes()


def test_unknown_name_is_rejected():
    with pytest.raises(KeyError, match="known"):
        tiny_model("gpt5")
