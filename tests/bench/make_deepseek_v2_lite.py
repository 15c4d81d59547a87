"""Write a GGUF with DeepSeek-V2-Lite's exact architecture, metadata, tensor shapes and Q4_K_M
tensor types, random weights and DeepSeek's real tokenizer: a stand-in for
`DeepSeek-V2-Lite-Chat.Q4_K_M.gguf` (~10 GB) to benchmark the MoE + MLA engine on a 16B model
without downloading one.

    python tests/bench/make_deepseek_v2_lite.py OUT.gguf              # full size, 27 layers
    python tests/bench/make_deepseek_v2_lite.py OUT.gguf --layers 2   # smoke version (~0.7 GB)

Architecture (DeepSeek-V2-Lite config.json): 27 layers, hidden 2048, 16 heads, MLA with
kv_lora_rank 512, no q LoRA, qk_nope 128 + qk_rope 64, v_head 128; layer 0 dense (FFN 10944),
layers 1-26 DeepSeekMoE with 64 routed experts (6 active, softmax, no renormalisation, scale 1)
+ 2 shared experts, expert FFN 1408; vocab 102400; YaRN rope (factor 40 over 4096 positions,
mscale = mscale_all_dim = 0.707, stored as yarn_log_multiplier 0.0707), context 163840.

Metadata keys and the tensor layout are what llama.cpp's current convert_hf_to_gguf.py writes
(`--layout split`: attn_k_b/attn_v_b, key_length 576 / value_length 512 plus the *_mla head
dims); `--layout kv_b` writes the older single attn_kv_b with key_length 192 / value_length 128,
as most published V2-Lite GGUFs have it. Tensor types follow llama-quant.cpp's Q4_K_M recipe for
this shape: Q4_K by default; output Q6_K; norms and the expert router F32; `use_more_bits`
layers (0-2, 5, 8, ..., 20, 23-26) get Q6_K for ffn_down* and attn_kv_b; ffn_down rows of 1408
(experts) and 10944 (dense layer 0) do not divide into 256-blocks, so Q4_K falls back to Q5_0
and Q6_K to Q8_0, as does attn_k_b (rows of 128) from Q4_K to Q5_0.

Weights are random bytes with sane f16 block scales (|w| ~ 0.02), written one tensor at a time
(the largest is ~170 MB), so RAM use stays small. The tokenizer (102400 tokens, merges,
deepseek-llm pre-tokenizer, BOS 100000 / EOS 100001) is copied from llama.cpp's
`models/ggml-vocab-deepseek-llm.gguf` (tests/fixtures/llama_cpp_src.py fetches the tree).
`--layers N` other than 26/27 also writes `attention.q_lora_rank = 0`: llama.cpp only treats
26/27-layer files as "Lite" and otherwise requires that key.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import ExpertGatingFuncType, GGUFReader, GGUFValueType, GGUFWriter, RopeScalingType
from gguf.constants import GGML_QUANT_SIZES

ARCH = "deepseek2"
N_LAYER, N_EMBD, N_HEAD, N_VOCAB = 27, 2048, 16, 102400
N_FF, N_FF_EXP, N_EXPERT, N_USED, N_SHARED = 10944, 1408, 64, 6, 2
KV_LORA, QK_NOPE, QK_ROPE, V_HEAD = 512, 128, 64, 128
N_CTX, ORIG_CTX, ROPE_FACTOR, MSCALE_ALL_DIM = 163840, 4096, 40.0, 0.707
FTYPE_Q4_K_M = 15

CHAT_TEMPLATE = (  # DeepSeek-V2-Lite-Chat's tokenizer_config.json template
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

# Block layouts: byte offset of each f16 scale field, and a scale giving |w| ~ 0.02 for random
# quants (Q4_K: d*sc*q - dmin*m with 6-bit sc/m, 4-bit q; Q6_K: d*int8 sc*(q-32); ...).
_F16_FIELDS = {
    Q.Q4_K: ((0, 1.2e-4), (2, 9e-4)),   # d, dmin
    Q.Q6_K: ((208, 1.5e-5),),           # d (after ql[128], qh[64], scales[16])
    Q.Q5_0: ((0, 2e-3),),
    Q.Q8_0: ((0, 2.7e-4),),
}


def use_more_bits(i: int, n: int) -> bool:
    """llama-quant.cpp: the layers that get more bits in Q4_K_M."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fallback(qtype: Q, row_len: int) -> Q:
    """llama-quant.cpp's tensor_type_fallback for rows that do not divide into 256-blocks."""
    if row_len % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    return {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0}[qtype]


def plan(n_layer: int, layout: str) -> list[tuple[str, tuple[int, ...], Q]]:
    """(name, PyTorch-order shape, type) of every tensor, in file order."""
    t: list[tuple[str, tuple[int, ...], Q]] = [("token_embd.weight", (N_VOCAB, N_EMBD), Q.Q4_K)]
    for i in range(n_layer):
        p = f"blk.{i}."
        more = use_more_bits(i, N_LAYER)  # the recipe counts layers of the full model
        t += [(p + "attn_norm.weight", (N_EMBD,), Q.F32),
              (p + "attn_q.weight", (N_HEAD * (QK_NOPE + QK_ROPE), N_EMBD), Q.Q4_K),
              (p + "attn_kv_a_mqa.weight", (KV_LORA + QK_ROPE, N_EMBD), Q.Q4_K),
              (p + "attn_kv_a_norm.weight", (KV_LORA,), Q.F32)]
        if layout == "split":
            t += [(p + "attn_k_b.weight", (N_HEAD, KV_LORA, QK_NOPE), fallback(Q.Q4_K, QK_NOPE)),
                  (p + "attn_v_b.weight", (N_HEAD, V_HEAD, KV_LORA), Q.Q4_K)]
        else:
            t += [(p + "attn_kv_b.weight", (N_HEAD * (QK_NOPE + V_HEAD), KV_LORA),
                   Q.Q6_K if more else Q.Q4_K)]
        t += [(p + "attn_output.weight", (N_EMBD, N_HEAD * V_HEAD), Q.Q4_K),
              (p + "ffn_norm.weight", (N_EMBD,), Q.F32)]
        down = Q.Q6_K if more else Q.Q4_K
        if i == 0:  # leading_dense_block_count = 1
            t += [(p + "ffn_gate.weight", (N_FF, N_EMBD), Q.Q4_K),
                  (p + "ffn_up.weight", (N_FF, N_EMBD), Q.Q4_K),
                  (p + "ffn_down.weight", (N_EMBD, N_FF), fallback(down, N_FF))]
            continue
        sh = N_FF_EXP * N_SHARED
        t += [(p + "ffn_gate_inp.weight", (N_EXPERT, N_EMBD), Q.F32),
              (p + "ffn_gate_exps.weight", (N_EXPERT, N_FF_EXP, N_EMBD), Q.Q4_K),
              (p + "ffn_up_exps.weight", (N_EXPERT, N_FF_EXP, N_EMBD), Q.Q4_K),
              (p + "ffn_down_exps.weight", (N_EXPERT, N_EMBD, N_FF_EXP), fallback(down, N_FF_EXP)),
              (p + "ffn_gate_shexp.weight", (sh, N_EMBD), Q.Q4_K),
              (p + "ffn_up_shexp.weight", (sh, N_EMBD), Q.Q4_K),
              (p + "ffn_down_shexp.weight", (N_EMBD, sh), fallback(down, sh))]
    t += [("output_norm.weight", (N_EMBD,), Q.F32), ("output.weight", (N_VOCAB, N_EMBD), Q.Q6_K)]
    return t


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    return n // block * size


def byte_shape(shape: tuple[int, ...], qtype: Q) -> tuple[int, ...]:
    block, size = GGML_QUANT_SIZES[qtype]
    return (*shape[:-1], shape[-1] // block * size)


def random_tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...], qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        if name.endswith("norm.weight"):
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    n = nbytes(shape, qtype)
    data = np.frombuffer(bytearray(rng.bytes(n)), dtype=np.uint8)  # writable, no extra copy
    blocks = data.reshape(-1, GGML_QUANT_SIZES[qtype][1])
    for offset, scale in _F16_FIELDS[qtype]:
        d = (scale * rng.uniform(0.5, 1.5, blocks.shape[0])).astype(np.float16)
        blocks[:, offset:offset + 2] = d.view(np.uint8).reshape(-1, 2)
    return data.reshape(byte_shape(shape, qtype))


def vocab_path() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.fixtures.llama_cpp_src import llama_cpp_source_dir
    return llama_cpp_source_dir() / "models" / "ggml-vocab-deepseek-llm.gguf"


def add_metadata(w: GGUFWriter, n_layer: int, layout: str, vocab: Path) -> None:
    w.add_name("DeepSeek-V2-Lite-Chat (random weights, llmlens benchmark)")
    w.add_block_count(n_layer)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_used_count(N_USED)
    w.add_file_type(FTYPE_Q4_K_M)
    w.add_leading_dense_block_count(1)
    w.add_vocab_size(N_VOCAB)
    if n_layer not in (26, 27):
        w.add_q_lora_rank(0)
    w.add_kv_lora_rank(KV_LORA)
    if layout == "split":
        w.add_head_count_kv(1)
        w.add_key_length(KV_LORA + QK_ROPE)
        w.add_value_length(KV_LORA)
        w.add_key_length_mla(QK_NOPE + QK_ROPE)
        w.add_value_length_mla(V_HEAD)
    else:
        w.add_head_count_kv(N_HEAD)
        w.add_key_length(QK_NOPE + QK_ROPE)
        w.add_value_length(V_HEAD)
    w.add_expert_feed_forward_length(N_FF_EXP)
    w.add_expert_count(N_EXPERT)
    w.add_expert_shared_count(N_SHARED)
    w.add_expert_weights_scale(1.0)
    w.add_expert_group_count(1)
    w.add_expert_group_used_count(1)
    w.add_expert_gating_func(ExpertGatingFuncType.SOFTMAX)
    w.add_rope_dimension_count(QK_ROPE)
    w.add_rope_scaling_type(RopeScalingType.YARN)
    w.add_rope_scaling_factor(ROPE_FACTOR)
    w.add_rope_scaling_orig_ctx_len(ORIG_CTX)
    w.add_rope_scaling_yarn_log_mul(0.1 * MSCALE_ALL_DIM)
    r = GGUFReader(vocab)
    for name, f in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = GGUFValueType(f.types[0])
        sub = GGUFValueType(f.types[-1]) if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub_type=sub)
    w.add_chat_template(CHAT_TEMPLATE)
    w.add_quantization_version(2)


def write(out: Path, n_layer: int = N_LAYER, layout: str = "split", seed: int = 0,
          log=print) -> int:
    """Write the file; returns its size in bytes."""
    tensors = plan(n_layer, layout)
    w = GGUFWriter(out, ARCH)
    add_metadata(w, n_layer, layout, vocab_path())
    for name, shape, qtype in tensors:
        if qtype == Q.F32:
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes(shape, qtype))
        else:
            w.add_tensor_info(name, byte_shape(shape, qtype), np.dtype(np.uint8),
                              nbytes(shape, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    t0, done, total = time.perf_counter(), 0, sum(nbytes(s, q) for _, s, q in tensors)
    for i, (name, shape, qtype) in enumerate(tensors):
        w.write_tensor_data(random_tensor(rng, name, shape, qtype))
        done += nbytes(shape, qtype)
        if log and (i % 25 == 0 or i == len(tensors) - 1):
            log(f"{done / 2**30:6.2f} / {total / 2**30:.2f} GiB  {name}  "
                f"({time.perf_counter() - t0:.0f} s)")
    w.close()
    return out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output .gguf path")
    ap.add_argument("--layers", type=int, default=N_LAYER, help="number of layers (default 27)")
    ap.add_argument("--layout", choices=("split", "kv_b"), default="split",
                    help="MLA tensors: split attn_k_b/attn_v_b (current converter) or attn_kv_b")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 1 <= args.layers <= N_LAYER:
        ap.error(f"--layers must be in 1..{N_LAYER}")
    size = write(args.out, args.layers, args.layout, args.seed)
    print(f"wrote {args.out} ({size / 2**30:.2f} GiB, {args.layers} layers, {args.layout} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
