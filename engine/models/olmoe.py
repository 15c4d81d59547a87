"""OLMoE (`olmoe`): the MoE Llama block (llama_moe.py) with q/k RMS norms over whole projections.

Unlike Qwen3's per-head norms, OLMoE normalises q [T, n_head * head_dim] and k
[T, n_kv * head_dim] across all heads at once, before splitting heads and applying NEOX rope.
Routing: softmax top-k, weights not renormalised, no shared expert (llama.cpp's olmoe graph).
"""

from __future__ import annotations

import torch

from engine.models.base import register
from engine.models.llama import Attention
from engine.models.llama_moe import MoELlamaModel


class OlmoeAttention(Attention):
    def __init__(self, m: "OlmoeModel", i: int):
        super().__init__(m, i)  # qk_norm is False on the model: load the wide norms here
        self.q_norm_full = m.load_norm(f"blk.{i}.attn_q_norm")  # [n_head * head_dim]
        self.k_norm_full = m.load_norm(f"blk.{i}.attn_k_norm")  # [n_kv * head_dim]

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """OLMoE normalises q and k over all heads at once, before splitting them."""
        T = x.shape[0]
        q, k, v = self.wqkv(x)                                     # [T, Hq*D], [T, Hkv*D], [T, Hkv*Dv]
        q = self.q_norm_full(q).view(T, self.n_head, -1)           # [T, Hq, D]
        k = self.k_norm_full(k).view(T, self.n_kv, -1)             # [T, Hkv, D]
        return q, k, v.view(T, self.n_kv, -1)                      # v [T, Hkv, Dv]


@register("olmoe")
class OlmoeModel(MoELlamaModel):
    attention_class = OlmoeAttention
    rope_neox = True   # llama.cpp LLAMA_ROPE_TYPE_NEOX
    norm_topk = False  # llama.cpp olmoe: norm_w false
