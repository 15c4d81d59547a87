"""Qwen3-MoE (`qwen3moe`, e.g. Qwen3-30B-A3B): the Qwen3 attention (per-head q/k RMS norms,
NEOX rope) with a routed mixture of experts and no shared expert.

Routing as llama.cpp's qwen3moe graph: softmax over the experts, top-k weights renormalised.
"""

from __future__ import annotations

from engine.models.base import register
from engine.models.llama_moe import MoELlamaModel


@register("qwen3moe")
class Qwen3MoeModel(MoELlamaModel):
    rope_neox = True     # llama.cpp LLAMA_ROPE_TYPE_NEOX
    qk_norm = True       # blk.N.attn_q_norm / attn_k_norm, [head_dim]
    norm_topk = True     # llama.cpp qwen3moe: norm_w true
