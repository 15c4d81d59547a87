"""MoE and MLA models against references computed here: transformers and llama.cpp.

Tiny random models (tests/fixtures/tiny_models.py) for deepseek2 (V2-Lite-like without q
LoRA, and V2-like with q LoRA + YaRN + routed_scaling_factor), qwen2moe, qwen3moe, Mixtral
(arch `llama`) and olmoe, converted by llama.cpp's own converter:

- f32 logits at every position equal transformers' (max|ours - ref| <= 1e-4 max|ref|), with
  the prompt fed in three pieces so the cache path (prefill, one-token decode, prefill again)
  is exercised; the experts picked per token and MoE layer are transformers' router choice,
  with the same gate weights;
- the older single-`attn_kv_b` DeepSeek layout (rewritten from the converter's split
  `attn_k_b`/`attn_v_b` file with gguf-py) gives the same logits, and llama.cpp agrees;
- 32 greedy tokens equal llama.cpp's (llama-cpp-python over the same f32 file);
- the router against transformers' DeepSeek-V3 router (sigmoid + bias + group limit);
- quantized stacked experts: one expert computed from its packed bytes equals the
  dequantized tensor's expert;
- the routing trace JSON and the MLA cache size.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from engine.gguf.reader import open_gguf
from engine.moe import (GATING_SIGMOID, RouterConfig, StackedExperts, collect_routing, route,
                        routing_trace_json)
from engine.trace import Recorder
from tests.fixtures.tiny_models import (llama_cpp_greedy, llama_cpp_logits, max_rel_err,
                                        tiny_model_factory)  # noqa: F401 (fixture)

MOE_MODELS = ("deepseek2_lite", "deepseek2", "qwen2moe", "qwen3moe", "mixtral", "olmoe")
TOL = 1e-4


def model_class(name: str):
    """The engine class for a tiny model (bypasses the arch registry, tested separately)."""
    if name.startswith("deepseek2"):
        from engine.models.deepseek2 import DeepseekV2Model
        return DeepseekV2Model
    if name == "olmoe":
        from engine.models.olmoe import OlmoeModel
        return OlmoeModel
    from engine.models import mixtral, qwen2moe, qwen3moe
    return {"qwen2moe": qwen2moe.Qwen2MoeModel, "qwen3moe": qwen3moe.Qwen3MoeModel,
            "mixtral": mixtral.MixtralModel}[name]


def load(name: str, path, n_ctx: int = 128):
    return model_class(name).from_gguf(open_gguf(path), n_ctx)


def run_in_pieces(model, ids: torch.Tensor, recorder=None) -> torch.Tensor:
    """Logits for ids fed as prefill [0, n-12), one decode step, then prefill of the rest."""
    cache = model.new_cache(len(ids) + 8)
    cut = len(ids) - 12
    parts = [model.forward(ids[:cut], cache, 0, recorder),
             model.forward(ids[cut:cut + 1], cache, cut, recorder),
             model.forward(ids[cut + 1:], cache, cut + 1, recorder)]
    return torch.cat(parts)


def greedy(model, prompt: list[int], n: int) -> list[int]:
    cache = model.new_cache(len(prompt) + n + 1)
    logits = model.forward(torch.tensor(prompt), cache, 0)
    out, pos = [], len(prompt)
    for _ in range(n):
        nxt = int(logits[-1].argmax())
        out.append(nxt)
        logits = model.forward(torch.tensor([nxt]), cache, pos)
        pos += 1
    return out


# ----------------------------------------------------------------------------- vs transformers

@pytest.mark.parametrize("name", MOE_MODELS)
def test_logits_and_routing_match_transformers(name, tiny_model_factory):
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    model = load(name, tm.gguf["f32"])
    rec = Recorder(names=("moe_topk_ids", "moe_topk_weights", "moe_probs"))
    logits = run_in_pieces(model, torch.from_numpy(ref["ids"]), rec).numpy()
    assert logits.shape == ref["logits"].shape
    assert max_rel_err(logits, ref["logits"]) <= TOL

    assert list(model.moe_layers) == [int(x) for x in ref["moe_layers"]]
    ids, weights = collect_routing(rec, model.moe_layers)
    for li, layer in enumerate(model.moe_layers):
        ref_ids, ref_w = ref["experts"][li], ref["expert_weights"][li]       # [T, k], desc weight
        assert ids[li].shape == ref_ids.shape
        np.testing.assert_array_equal(np.sort(ids[li], 1), np.sort(ref_ids, 1),
                                      err_msg=f"{name}: experts differ in layer {layer}")
        # ours are best-first too; compare weights matched by expert id
        order_ours = np.argsort(ids[li], 1)
        order_ref = np.argsort(ref_ids, 1)
        np.testing.assert_allclose(np.take_along_axis(weights[li], order_ours, 1),
                                   np.take_along_axis(ref_w, order_ref, 1), rtol=1e-4, atol=1e-6)
        probs = np.concatenate([s.get("moe_probs", layer) for s in rec.steps])  # [T, E]
        assert probs.shape == ref["router_logits"][li].shape
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)  # all these routers use softmax


def test_recorder_changes_nothing(tiny_model_factory):
    tm = tiny_model_factory("deepseek2")
    ref = tm.load_ref()
    model = load("deepseek2", tm.gguf["f32"])
    ids = torch.from_numpy(ref["ids"])
    plain = run_in_pieces(model, ids)
    recorded = run_in_pieces(model, ids, Recorder())
    torch.testing.assert_close(plain, recorded, rtol=0, atol=0)


# ----------------------------------------------------------------------------- vs llama.cpp

@pytest.mark.parametrize("name", MOE_MODELS)
def test_greedy_32_matches_llama_cpp(name, tiny_model_factory):
    tm = tiny_model_factory(name)
    prompt = [int(i) for i in tm.load_ref()["greedy_prompt"]]
    ours = greedy(load(name, tm.gguf["f32"]), prompt, 32)
    assert ours == llama_cpp_greedy(tm.gguf["f32"], prompt, 32)


# ----------------------------------------------------------------------------- DeepSeek layouts

def _field_value(field: gguf.ReaderField):
    return field.contents()


def rewrite_deepseek_kv_b(src, dst) -> None:
    """Rewrite a split-layout deepseek2 GGUF (attn_k_b [H, L, nope] + attn_v_b [H, v, L], what
    current converters write) into the older layout: one attn_kv_b [H*(nope+v), L], with
    key_length/value_length the per-head dims and no *_mla keys. Float32 files only."""
    r = gguf.GGUFReader(src)
    arch = "deepseek2"
    md = {f.name: f for f in r.fields.values()}
    H = int(_field_value(md[f"{arch}.attention.head_count"]))
    L = int(_field_value(md[f"{arch}.attention.kv_lora_rank"]))
    qk_head = int(_field_value(md[f"{arch}.attention.key_length_mla"]))
    v_head = int(_field_value(md[f"{arch}.attention.value_length_mla"]))
    rope = int(_field_value(md[f"{arch}.rope.dimension_count"]))
    nope = qk_head - rope
    w = gguf.GGUFWriter(dst, arch)
    replaced = {f"{arch}.attention.key_length": qk_head, f"{arch}.attention.value_length": v_head,
                f"{arch}.attention.head_count_kv": H}
    for name, f in md.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name in (f"{arch}.attention.key_length_mla", f"{arch}.attention.value_length_mla"):
            continue
        vtype = gguf.GGUFValueType(f.types[0])
        sub = gguf.GGUFValueType(f.types[-1]) if vtype == gguf.GGUFValueType.ARRAY else None
        value = replaced.get(name, _field_value(f))
        w.add_key_value(name, value, vtype, sub_type=sub)
    tensors = {t.name: t for t in r.tensors}
    for t in r.tensors:
        if t.name.endswith("attn_v_b.weight"):
            continue
        if t.name.endswith("attn_k_b.weight"):
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            prefix = t.name[: -len("attn_k_b.weight")]
            k_b = np.asarray(t.data).reshape(H, L, nope)                       # stored transposed
            v_b = np.asarray(tensors[prefix + "attn_v_b.weight"].data).reshape(H, v_head, L)
            kv_b = np.concatenate([k_b.transpose(0, 2, 1), v_b], axis=1)       # [H, nope+v, L]
            w.add_tensor(prefix + "attn_kv_b.weight", np.ascontiguousarray(
                kv_b.reshape(H * (nope + v_head), L), dtype=np.float32))
            continue
        shape = [int(x) for x in reversed(t.shape)]
        data = np.asarray(t.data)
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(t.name, data.reshape(shape))
        else:
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("name", ("deepseek2_lite", "deepseek2"))
def test_deepseek_kv_b_layout_gives_same_logits(name, tiny_model_factory, tmp_path):
    tm = tiny_model_factory(name)
    split = tm.gguf["f32"]
    with open_gguf(split) as gf:
        assert gf.has_tensor("blk.0.attn_k_b.weight")  # what the converter writes today
    old = tmp_path / f"{name}-kv_b.gguf"
    rewrite_deepseek_kv_b(split, old)
    with open_gguf(old) as gf:
        assert gf.has_tensor("blk.0.attn_kv_b.weight") and not gf.has_tensor("blk.0.attn_k_b.weight")
    ref = tm.load_ref()
    ids = torch.from_numpy(ref["ids"])
    m_split, m_old = load(name, split), load(name, old)
    a = m_split.forward(ids, m_split.new_cache(64), 0).numpy()
    b = m_old.forward(ids, m_old.new_cache(64), 0).numpy()
    assert max_rel_err(b, a) <= 1e-5
    assert max_rel_err(b, ref["logits"]) <= TOL
    # llama.cpp reads the old layout through its non-absorbed path: same numbers
    assert max_rel_err(llama_cpp_logits(old, ref["ids"]), ref["logits"]) <= TOL


def test_mla_cache_holds_latents_only(tiny_model_factory):
    tm = tiny_model_factory("deepseek2_lite")
    model = load("deepseek2_lite", tm.gguf["f32"])
    c = model.config
    cache = model.new_cache(100)
    per_token = c.n_layer * (c.kv_lora_rank + c.qk_rope) * 4
    assert cache.bytes_per_token == per_token == model.cache_bytes_per_token
    assert sum(t.numel() * t.element_size() for t in cache.latents) == 100 * per_token
    full_kv = c.n_layer * c.n_head * (c.qk_head + c.v_head) * 4  # what a decompressed cache takes
    assert per_token < full_kv


# ----------------------------------------------------------------------------- router

@pytest.mark.parametrize("norm", (True, False))
def test_sigmoid_group_router_matches_transformers_v3(norm):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    cfg = DeepseekV3Config(hidden_size=32, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                           topk_group=2, norm_topk_prob=norm, routed_scaling_factor=2.5)
    hf = DeepseekV3TopkRouter(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(16, 32, generator=gen))
        hf.e_score_correction_bias.copy_(torch.randn(16, generator=gen) * 0.5)
    x = torch.randn(50, 32, generator=gen)
    with torch.no_grad():
        logits, ref_w, ref_idx = hf(x)
    rc = RouterConfig(n_expert=16, n_used=4, gating=GATING_SIGMOID, norm_weights=norm, scale=2.5,
                      n_groups=4, n_groups_used=2)
    idx, w, probs = route(logits, rc, hf.e_score_correction_bias)
    np.testing.assert_array_equal(np.sort(idx.numpy(), 1), np.sort(ref_idx.numpy(), 1))
    np.testing.assert_allclose(torch.gather(w, 1, idx.argsort(1)).numpy(),
                               torch.gather(ref_w, 1, ref_idx.argsort(1)).numpy(), rtol=1e-5)
    torch.testing.assert_close(probs, torch.sigmoid(logits))


# ----------------------------------------------------------------------------- quantized experts

@pytest.mark.parametrize("qtype", (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0))
@pytest.mark.parametrize("n_tok", (1, 20))  # decode (fused kernel) and prefill (dequant + GEMM)
def test_stacked_quantized_experts(qtype, n_tok):
    rng = np.random.default_rng(0)
    E, out_f, in_f = 4, 48, 64
    w = rng.standard_normal((E, out_f, in_f)).astype(np.float32)
    packed = gguf.quants.quantize(w, qtype)                       # [E, out, row_bytes] uint8
    full = torch.from_numpy(gguf.quants.dequantize(packed, qtype))  # [E, out, in] reference
    se = StackedExperts(packed.reshape(-1), qtype, (E, out_f, in_f), "ffn_up_exps")
    assert se.expert_bytes * E == packed.nbytes
    x = torch.from_numpy(rng.standard_normal((n_tok, in_f)).astype(np.float32))
    for e in range(E):
        torch.testing.assert_close(se.weight(e), full[e], rtol=0, atol=0)
        want = x @ full[e].T
        got = se.matmul(e, x)
        # the decode kernel rounds activations to 8 bits per block, as llama.cpp does
        assert float((got - want).abs().max() / want.abs().max()) < 2e-2


def test_quantized_moe_model_keeps_experts_packed(tiny_model_factory, monkeypatch):
    """A q8_0 file: experts stay packed (a QuantLinear per expert over the memory map). Through
    QuantLinear's exact path (dequantize rows + GEMM) the logits equal decoding each used expert
    in full; through the fused kernel (which rounds activations to 8 bits, as llama.cpp does)
    they stay close."""
    import engine.moe
    import engine.quant_linear as ql

    # without kernels experts would take the int4 path (tests/test_packed_fallback.py)
    monkeypatch.setattr(engine.moe, "_int4_fallback", lambda ggml_type: False)
    tm = tiny_model_factory("qwen3moe")
    ids = torch.from_numpy(tm.load_ref()["ids"])
    model = load("qwen3moe", tm.gguf["q8_0"])
    stacks = [s for b in model.blocks for s in (b.moe.gate, b.moe.up, b.moe.down)]
    assert all(s._packed is not None and s._dense is None for s in stacks)

    kernel = model.forward(ids, model.new_cache(64), 0)  # grouped kernel calls, if kernels
    from engine.moe import MoEFeedForward

    monkeypatch.setattr(MoEFeedForward, "_grouped", lambda self: False)  # one QuantLinear per expert
    monkeypatch.setattr(ql, "GEMV_MAX_T", 0)           # every call takes the exact path
    monkeypatch.setattr(ql, "KERNEL_MAX_T", {})
    model.forward(ids[:2], model.new_cache(64), 0)
    assert all(len(s._linears) > 0 for s in stacks)  # the QuantLinear path really ran
    rec_q = Recorder()
    exact = model.forward(ids, model.new_cache(64), 0, rec_q)
    for s in stacks:
        s._qlin_cls = None  # decode the one expert per call instead of QuantLinear
    rec_d = Recorder()
    decoded = model.forward(ids, model.new_cache(64), 0, rec_d)
    assert max_rel_err(exact.numpy(), decoded.numpy()) < 1e-5
    for layer in model.moe_layers:
        np.testing.assert_array_equal(rec_q.last.get("moe_topk_ids", layer),
                                      rec_d.last.get("moe_topk_ids", layer))
    assert max_rel_err(kernel.numpy(), decoded.numpy()) < 5e-2


# ----------------------------------------------------------------------------- routing trace

def test_routing_trace_json(tiny_model_factory, tmp_path):
    from engine.tokenizer import load_tokenizer

    tm = tiny_model_factory("olmoe")
    model = load("olmoe", tm.gguf["f32"])
    tok = load_tokenizer(model.gguf)
    prompt = [int(i) for i in tm.load_ref()["ids"][:6]]
    rec = Recorder(names=("moe_topk_ids", "moe_topk_weights"))
    cache = model.new_cache(32)
    logits = model.forward(torch.tensor(prompt), cache, 0, rec)
    seq = list(prompt)
    for _ in range(4):
        seq.append(int(logits[-1].argmax()))
        logits = model.forward(torch.tensor(seq[-1:]), cache, len(seq) - 1, rec)
    ids, weights = collect_routing(rec, model.moe_layers)
    doc = routing_trace_json(model.moe_layers, seq, [tok.token_text(t) for t in seq], ids, weights)
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(doc))
    back = json.loads(path.read_text())
    assert back["layers"] == list(model.moe_layers)
    assert [t["id"] for t in back["tokens"]] == seq
    k = model.config.n_expert_used
    for i, t in enumerate(back["tokens"]):
        assert len(t["experts"]) == len(model.moe_layers)
        for li, layer in enumerate(model.moe_layers):
            assert t["experts"][li] == [int(v) for v in ids[li][i]]
            assert len(t["experts"][li]) == k and len(set(t["experts"][li])) == k
            assert t["weights"][li] == sorted(t["weights"][li], reverse=True)


def test_moe_grouped_kernel_equals_per_expert_loop(tiny_model_factory, monkeypatch):
    """Decode steps and prompt passes send the tokens of all experts through one grouped kernel
    call per projection; the logits equal the per-expert loop's up to float summation order."""
    from engine import kernels
    from engine.moe import MoEFeedForward

    if kernels.load() is None:
        pytest.skip(f"fused kernels unavailable here: {kernels.disabled_reason()}")
    tm = tiny_model_factory("qwen3moe")
    ids = torch.from_numpy(tm.load_ref()["ids"])[:8]
    model = load("qwen3moe", tm.gguf["q8_0"])
    calls = []
    real = MoEFeedForward._experts_grouped

    def counting(self, *a):
        calls.append(1)
        return real(self, *a)

    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        cache = model.new_cache(32)
        steps = torch.cat([model.forward(ids[i:i + 1], cache, i) for i in range(len(ids))])
        prompt = model.forward(ids, model.new_cache(32), 0, all_logits=True)
        return steps, prompt

    monkeypatch.setattr(MoEFeedForward, "_experts_grouped", counting)
    steps, prompt = logits()
    assert len(calls) >= 2 * len(ids) * len(model.moe_layers) // 2  # the grouped path really ran
    monkeypatch.setattr(MoEFeedForward, "_grouped", lambda self: False)
    steps_loop, prompt_loop = logits()
    assert max_rel_err(steps.numpy(), steps_loop.numpy()) < 1e-5
    assert max_rel_err(prompt.numpy(), prompt_loop.numpy()) < 1e-5
