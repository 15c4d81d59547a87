"""Write a GGUF with gpt-oss-20b's architecture, metadata and tensor shapes, MXFP4 experts and
random weights: a stand-in for `gpt-oss-20b-mxfp4.gguf` (~12 GB) to benchmark the gpt-oss
engine (MXFP4 experts read through the memory map) without downloading one.

    python tests/bench/make_gpt_oss_20b.py OUT.gguf              # full size, 24 layers (~12 GB)
    python tests/bench/make_gpt_oss_20b.py OUT.gguf --layers 2   # smoke version (~1.9 GB)

Architecture (openai/gpt-oss-20b config.json, as llama.cpp's converter writes it): 24 layers,
hidden 2880, 64 query heads and 8 kv heads of 64, attention sinks, q/k/v/o biases; even layers
slide over 128 tokens, odd layers attend to everything; every layer is MoE with 32 experts
(top 4, softmax over the chosen logits), expert FFN 2880, biased router and experts; vocab
201088; rope base 150000 with YaRN (factor 32 over 4096 positions), context 131072.

Tensor types: experts MXFP4 (as released; every published gpt-oss GGUF keeps them so), the
other matrices Q8_0, vectors (norms, sinks, biases) and the router F32. The tokenizer is a
stand-in: Qwen2's BPE vocabulary and merges (llama.cpp's `models/ggml-vocab-qwen2.gguf`,
fetched by tests/fixtures/llama_cpp_src.py) padded to 201088 tokens, with the harmony special
tokens at gpt-oss's ids (<|start|> 200006, <|message|> 200008, <|return|> 200002 as EOS, ...)
and gpt-oss's real chat template (llama.cpp's `models/templates/openai-gpt-oss-120b.jinja`,
the template both sizes ship). Weights are random bytes with sane scales (|w| ~ 0.02), written
one tensor at a time (the largest, token_embd, is ~600 MB), so RAM use stays small.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter, RopeScalingType, TokenType
from gguf.constants import GGML_QUANT_SIZES

ARCH = "gpt-oss"
N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_VOCAB = 24, 2880, 64, 8, 64, 201088
N_FF_EXP, N_EXPERT, N_USED = 2880, 32, 4
N_CTX, ORIG_CTX, ROPE_FACTOR, ROPE_BASE, SLIDING_WINDOW = 131072, 4096, 32.0, 150000.0, 128
FTYPE_MOSTLY_MXFP4 = 38  # llama_ftype LLAMA_FTYPE_MOSTLY_MXFP4_MOE

# gpt-oss's o200k_harmony special tokens at their real ids
SPECIALS = {199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>",
            200003: "<|constrain|>", 200005: "<|channel|>", 200006: "<|start|>",
            200007: "<|end|>", 200008: "<|message|>", 200012: "<|call|>"}
BOS, EOS, PAD = 199998, 200002, 199999

# Q8_0: d (f16) | 32 x int8: d ~ 2.7e-4 gives |w| ~ 0.02 for random int8
_Q8_0_SCALE = 2.7e-4
# MXFP4: one E8M0 exponent byte (scale 2^(e - 128), values doubled E2M1 up to +-12): e in
# 118..121 gives |w| ~ 0.02
_MXFP4_EXP = (118, 122)


def plan(n_layer: int) -> list[tuple[str, tuple[int, ...], Q]]:
    """(name, PyTorch-order shape, type) of every tensor, in file order."""
    q_dim, kv_dim = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    t: list[tuple[str, tuple[int, ...], Q]] = [("token_embd.weight", (N_VOCAB, N_EMBD), Q.Q8_0)]
    for i in range(n_layer):
        p = f"blk.{i}."
        t += [(p + "attn_norm.weight", (N_EMBD,), Q.F32),
              (p + "attn_q.weight", (q_dim, N_EMBD), Q.Q8_0), (p + "attn_q.bias", (q_dim,), Q.F32),
              (p + "attn_k.weight", (kv_dim, N_EMBD), Q.Q8_0), (p + "attn_k.bias", (kv_dim,), Q.F32),
              (p + "attn_v.weight", (kv_dim, N_EMBD), Q.Q8_0), (p + "attn_v.bias", (kv_dim,), Q.F32),
              (p + "attn_output.weight", (N_EMBD, q_dim), Q.Q8_0),
              (p + "attn_output.bias", (N_EMBD,), Q.F32),
              (p + "attn_sinks.weight", (N_HEAD,), Q.F32),
              (p + "post_attention_norm.weight", (N_EMBD,), Q.F32),
              (p + "ffn_gate_inp.weight", (N_EXPERT, N_EMBD), Q.F32),
              (p + "ffn_gate_inp.bias", (N_EXPERT,), Q.F32),
              (p + "ffn_gate_exps.weight", (N_EXPERT, N_FF_EXP, N_EMBD), Q.MXFP4),
              (p + "ffn_gate_exps.bias", (N_EXPERT, N_FF_EXP), Q.F32),
              (p + "ffn_up_exps.weight", (N_EXPERT, N_FF_EXP, N_EMBD), Q.MXFP4),
              (p + "ffn_up_exps.bias", (N_EXPERT, N_FF_EXP), Q.F32),
              (p + "ffn_down_exps.weight", (N_EXPERT, N_EMBD, N_FF_EXP), Q.MXFP4),
              (p + "ffn_down_exps.bias", (N_EXPERT, N_EMBD), Q.F32)]
    t += [("output_norm.weight", (N_EMBD,), Q.F32), ("output.weight", (N_VOCAB, N_EMBD), Q.Q8_0)]
    return t


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def byte_shape(shape: tuple[int, ...], qtype: Q) -> tuple[int, ...]:
    block, size = GGML_QUANT_SIZES[qtype]
    return (*shape[:-1], shape[-1] // block * size)


def random_tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...], qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        if name.endswith("norm.weight"):
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if name.endswith("sinks.weight"):
            return rng.standard_normal(shape).astype(np.float32)  # logits: O(1)
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    data = np.frombuffer(bytearray(rng.bytes(nbytes(shape, qtype))), dtype=np.uint8)  # writable
    blocks = data.reshape(-1, GGML_QUANT_SIZES[qtype][1])
    if qtype == Q.Q8_0:
        d = (_Q8_0_SCALE * rng.uniform(0.5, 1.5, blocks.shape[0])).astype(np.float16)
        blocks[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    else:  # MXFP4
        blocks[:, 0] = rng.integers(*_MXFP4_EXP, blocks.shape[0], dtype=np.uint8)
    return data.reshape(byte_shape(shape, qtype))


def llama_cpp_tree() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.fixtures.llama_cpp_src import llama_cpp_source_dir
    return llama_cpp_source_dir()


def add_tokenizer(w: GGUFWriter, tree: Path) -> None:
    r = GGUFReader(tree / "models" / "ggml-vocab-qwen2.gguf")
    fields = {name: f.contents() for name, f in r.fields.items()}
    # Qwen2's vocabulary has some of gpt-oss's special strings (`<|endoftext|>`) at other ids:
    # llama.cpp refuses a vocabulary with a duplicated token, so the borrowed ones are renamed.
    taken = set(SPECIALS.values())
    tokens = [f"<|qwen2_{i}|>" if t in taken else t
              for i, t in enumerate(fields["tokenizer.ggml.tokens"])]
    types = list(fields["tokenizer.ggml.token_type"])
    # pad to gpt-oss's vocabulary; its special tokens go to their real ids
    for i in range(len(tokens), N_VOCAB):
        tokens.append(SPECIALS.get(i, f"<|reserved_{i}|>"))
        types.append(int(TokenType.CONTROL))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(fields["tokenizer.ggml.pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(fields["tokenizer.ggml.merges"])
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_pad_token_id(PAD)
    w.add_add_bos_token(False)
    w.add_chat_template((tree / "models" / "templates" / "openai-gpt-oss-120b.jinja").read_text())


def add_metadata(w: GGUFWriter, n_layer: int, tree: Path) -> None:
    w.add_name("gpt-oss-20b (random weights, llmlens benchmark)")
    w.add_block_count(n_layer)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF_EXP)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_USED)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_sliding_window(SLIDING_WINDOW)
    w.add_expert_feed_forward_length(N_FF_EXP)
    w.add_rope_scaling_type(RopeScalingType.YARN)
    w.add_rope_scaling_factor(ROPE_FACTOR)
    w.add_rope_scaling_orig_ctx_len(ORIG_CTX)
    w.add_file_type(FTYPE_MOSTLY_MXFP4)
    add_tokenizer(w, tree)
    w.add_quantization_version(2)


def write(out: Path, n_layer: int = N_LAYER, seed: int = 0, log=print) -> int:
    """Write the file; returns its size in bytes."""
    tensors = plan(n_layer)
    w = GGUFWriter(out, ARCH)
    add_metadata(w, n_layer, llama_cpp_tree())
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
    ap.add_argument("--layers", type=int, default=N_LAYER, help=f"number of layers (default {N_LAYER})")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 1 <= args.layers <= N_LAYER:
        ap.error(f"--layers must be in 1..{N_LAYER}")
    size = write(args.out, args.layers, args.seed)
    print(f"wrote {args.out} ({size / 2**30:.2f} GiB, {args.layers} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
