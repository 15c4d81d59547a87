"""Qwen3 (dense): the Llama block with per-head RMS norms on q and k before rope, NEOX rope."""

from __future__ import annotations

from engine.models.base import register
from engine.models.llama import LlamaModel


@register("qwen3")
class Qwen3Model(LlamaModel):
    rope_neox = True  # llama.cpp LLAMA_ROPE_TYPE_NEOX
    qk_norm = True  # blk.N.attn_q_norm / attn_k_norm, [head_dim]
