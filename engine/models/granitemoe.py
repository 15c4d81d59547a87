"""Granite MoE (`granitemoe`: IBM Granite 3.x MoE, and GraniteMoeShared files).

The Llama block (grouped-query attention, NORM rope: the converter permutes q/k) with a routed
mixture of experts, plus Granite's four multipliers, as llama.cpp's granite graph applies them
(src/models/granite.cpp, shared by granitemoe):

- token embeddings times `embedding_scale` (HF `embedding_multiplier`);
- attention scores times `attention.scale` (HF `attention_multiplier`) instead of 1/sqrt(d);
- each block's attention and FFN outputs times `residual_scale` before they join the residual;
- logits divided by `logit_scale` (HF `logits_scaling`).
A multiplier the file leaves out (or sets to 0) is not applied, as in llama.cpp.

Routing: softmax over the experts, the top-k weights renormalised to sum 1 (HF takes the
softmax of the top-k logits: the same numbers). GraniteMoeShared adds one always-on, ungated
shared expert (`ffn_*_shexp`, `expert_shared_feed_forward_length` wide); a file without experts
is a dense SwiGLU model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from engine.kv_cache import KVCache
from engine.layers import GatedMLP
from engine.models import llama
from engine.models.base import (COMMON_KEYS, AttnKind, ForwardStep, Model, TransformerConfig,
                                register)
from engine.moe import MoEFeedForward, RouterConfig, load_moe_ffn


@dataclass(frozen=True)
class GraniteMoeConfig(TransformerConfig):
    n_expert_used: int = 0
    n_ff_shexp: int = 0                   # GraniteMoeShared's shared expert width (0: none)
    expert_weights_scale: float = 0.0     # 0 and 1 mean unscaled
    attention_scale: float = 0.0          # 0: 1/sqrt(head_dim)
    embedding_scale: float = 0.0          # 0: unscaled
    residual_scale: float = 0.0           # 0: unscaled
    logit_scale: float = 0.0              # 0: unscaled (llama.cpp requires the key)

    KEYS: ClassVar = {
        **COMMON_KEYS,
        "n_expert_used": ("{arch}.expert_used_count", 0),
        "n_ff_shexp": ("{arch}.expert_shared_feed_forward_length", 0),
        "expert_weights_scale": ("{arch}.expert_weights_scale", 0.0),
        "attention_scale": ("{arch}.attention.scale", 0.0),
        "embedding_scale": ("{arch}.embedding_scale", 0.0),
        "residual_scale": ("{arch}.residual_scale", 0.0),
        "logit_scale": ("{arch}.logit_scale", 0.0),
    }


class Attention(llama.Attention):
    """Llama's attention with Granite's score multiplier in place of 1/sqrt(head_dim)."""

    def __init__(self, m: "GraniteMoeModel", i: int):
        super().__init__(m, i)
        if m.config.attention_scale:
            self.scale = m.config.attention_scale


class Block:
    """x += s * attn(attn_norm(x)); x += s * ffn(ffn_norm(x)), s = residual_scale."""

    def __init__(self, m: "GraniteMoeModel", i: int):
        self.layer = i
        self.attn_norm = m.load_norm(f"blk.{i}.attn_norm")
        self.attn = Attention(m, i)
        self.ffn_norm = m.load_norm(f"blk.{i}.ffn_norm")
        self.moe: MoEFeedForward | None = None
        if m.router is not None:
            self.moe = load_moe_ffn(m, i, m.router)  # + the ungated shared expert if present
        self.mlp: GatedMLP | None = m.load_gated_mlp(i) if self.moe is None else None
        self.residual_scale = m.config.residual_scale or 1.0

    def __call__(self, x: torch.Tensor, cache: KVCache, step: ForwardStep) -> torch.Tensor:
        s = self.residual_scale
        x = x + self.attn(self.attn_norm(x), cache, step) * s       # [T, n_embd]
        h = self.ffn_norm(x)
        out = self.moe(h, self.layer, step.recorder) if self.moe is not None else self.mlp(h)
        return x + out * s


@register("granitemoe")
class GraniteMoeModel(Model):
    Config = GraniteMoeConfig
    qk_norm = False  # read by llama.Attention

    def __init__(self, gf, config: GraniteMoeConfig, n_ctx: int | None = None):
        super().__init__(gf, config, n_ctx)
        if config.n_expert:
            # llama.cpp's granite graph: softmax gating, norm_w true
            self.router = RouterConfig(n_expert=config.n_expert, n_used=config.n_expert_used,
                                       norm_weights=True, scale=config.expert_weights_scale)
            self.n_shared_experts = 1 if config.n_ff_shexp else 0
        factors = self.load_vector("rope_freqs.weight", required=False)  # [n_rot/2] or None
        self.attn_kinds = {"global": AttnKind(self.make_rope(neox=False, freq_factors=factors))}
        self.embed = self.load_embedding()
        self.embed_scale = config.embedding_scale or None
        self.blocks = [Block(self, i) for i in range(config.n_layer)]
        self.output_norm = self.load_norm("output_norm")
        self.lm_head = self.load_output()
        self.logit_scale = config.logit_scale or 1.0

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        logits = super()._head(x)  # [T, n_vocab]
        return logits if self.logit_scale == 1.0 else logits.div_(self.logit_scale)
