"""Tiny GGUF files written with gguf-py's `GGUFWriter`, for reader, browser and CLI tests."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def write_tiny_gguf(path: Path, *, arch: str = "llama", with_vocab: bool = True,
                    seed: int = 0) -> Path:
    """A small file with typed metadata of every kind and tensors of several ggml types."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_bool("test.flag", True)
    w.add_int8("test.i8", -5)
    w.add_float64("test.f64", 2.5)
    w.add_array("test.ints", [1, 2, 3])
    if with_vocab:
        tokens = ["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(197)]
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([float(-i) for i in range(len(tokens))])
        w.add_token_types([2, 3, 3] + [1] * (len(tokens) - 3))
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    w.add_tensor("token_embd.weight", rng.standard_normal((200, 64), dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((128, 64), dtype=np.float32),
                              gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", q8, raw_shape=q8.shape,
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.1.ffn_down.weight", rng.standard_normal((64, 128), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
