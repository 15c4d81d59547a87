"""OLMoE (`olmoe`): the MoE decoder of `qwen2moe.py` with q/k RMS norms over whole projections.

Unlike Qwen3's per-head norms, OLMoE normalises q [T, n_head * head_dim] and k
[T, n_kv * head_dim] across all heads at once, before splitting heads and applying NEOX rope.
Routing: softmax top-k, weights not renormalised, no shared expert (llama.cpp's olmoe graph).
"""

from __future__ import annotations

import torch

from engine.kv_cache import KVCache
from engine.layers import RoPE, attention
from engine.models.base import register
from engine.models.llama import Attention
from engine.models.qwen2moe import MoETransformer
from engine.trace import Recorder


class OlmoeAttention(Attention):
    def __init__(self, m: "OlmoeModel", i: int):
        super().__init__(m, i)  # qk_norm is False on the model: load the wide norms here
        self.q_norm_full = m.load_norm(f"blk.{i}.attn_q_norm")  # [n_head * head_dim]
        self.k_norm_full = m.load_norm(f"blk.{i}.attn_k_norm")  # [n_kv * head_dim]

    def __call__(self, x: torch.Tensor, cache: KVCache, layer: int, start_pos: int, rope: RoPE,
                 cos: torch.Tensor, sin: torch.Tensor, key_start: int, mask: torch.Tensor | None,
                 recorder: Recorder | None) -> torch.Tensor:
        T = x.shape[0]
        q, k, v = self.wqkv(x)                             # [T, Hq*D], [T, Hkv*D], [T, Hkv*Dv]
        q = self.q_norm_full(q).view(T, self.n_head, -1)           # [T, Hq, D]
        k = self.k_norm_full(k).view(T, self.n_kv, -1)             # [T, Hkv, D]
        v = v.view(T, self.n_kv, -1)                               # [T, Hkv, Dv]
        q = rope.rotate(q.transpose(0, 1), cos, sin)               # [Hq, T, D]
        k = rope.rotate(k.transpose(0, 1), cos, sin)               # [Hkv, T, D]
        keys, values = cache.update(layer, start_pos, k, v.transpose(0, 1))  # [Hkv, S, D]
        out = attention(q, keys[:, key_start:], values[:, key_start:], mask, self.scale,
                        recorder, layer)                           # [Hq, T, Dv]
        return self.wo(out.transpose(0, 1).reshape(T, -1))         # [T, n_embd]


@register("olmoe")
class OlmoeModel(MoETransformer):
    attention_class = OlmoeAttention
    norm_topk = False  # llama.cpp olmoe: norm_w false
