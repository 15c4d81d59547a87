"""GLM-4 MoE (`glm4moe`: GLM-4.5, GLM-4.5-Air, GLM-4.6): grouped-query attention with q/k/v
biases and optional per-head q/k RMS norms, NEOX rope over part of each head, and a
DeepSeek-V3-style mixture of experts.

As llama.cpp's glm4moe graph (src/models/glm4-moe.cpp) and transformers' Glm4Moe:
- block: x += attn(attn_norm(x)); x += ffn(post_attention_norm(x)) (no `ffn_norm` tensor);
- rope: NEOX over the first `rope.dimension_count` dims (partial_rotary_factor, 0.5), the rest
  of each head passes through; scores scaled by 1/sqrt(head_dim);
- FFN: the first `leading_dense_block_count` layers are dense SwiGLU; the others route with
  sigmoid scores, the selection bias `exp_probs_b` (it decides the ranking, not the weights),
  group-limited top-k when `expert_group_count` > 1, weights renormalised and scaled, plus the
  always-on shared experts (`ffn_*_shexp`, not gated);
- NextN / MTP layers: `block_count` counts them (`nextn_predict_layers`) and their weights may
  be in the file; they only serve speculative decoding, so they are never loaded or run (as
  llama.cpp's main graph): `config.n_layer` is the trunk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from engine.kv_cache import KVCache
from engine.layers import GatedMLP
from engine.models.base import (COMMON_KEYS, AttnKind, ForwardStep, Model, TransformerConfig,
                                register)
from engine.models.llama import Attention
from engine.moe import GATING_SIGMOID, MoEFeedForward, RouterConfig, load_moe_ffn

ARCH = "glm4moe"


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class Glm4MoeConfig(TransformerConfig):
    n_layer_nextn: int = 0              # trailing NextN (MTP) blocks counted in block_count
    n_dense_lead: int = 0               # leading dense FFN layers
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_exp: int = 0                   # informational: expert shapes come from the tensors
    expert_weights_scale: float = 0.0   # 0 and 1 mean unscaled
    expert_weights_norm: bool = False
    expert_gating: int = GATING_SIGMOID  # llama.cpp: an absent (0) gating func means sigmoid
    n_expert_groups: int = 0
    n_expert_groups_used: int = 0

    KEYS: ClassVar = {
        **COMMON_KEYS,
        "n_layer_nextn": ("{arch}.nextn_predict_layers", 0),
        "n_dense_lead": ("{arch}.leading_dense_block_count", 0),
        "n_expert_used": ("{arch}.expert_used_count", 0),
        "n_expert_shared": ("{arch}.expert_shared_count", 0),
        "n_ff_exp": ("{arch}.expert_feed_forward_length", 0),
        "expert_weights_scale": ("{arch}.expert_weights_scale", 0.0),
        "expert_weights_norm": ("{arch}.expert_weights_norm", False),
        "expert_gating": ("{arch}.expert_gating_func", GATING_SIGMOID),
        "n_expert_groups": ("{arch}.expert_group_count", 0),
        "n_expert_groups_used": ("{arch}.expert_group_used_count", 0),
    }


# ----------------------------------------------------------------------------- block

class Block:
    """x += attn(attn_norm(x)); x += ffn(post_attention_norm(x)), the FFN dense (`mlp`) in the
    leading layers, else routed experts + shared experts (`moe`)."""

    def __init__(self, m: "Glm4MoeModel", i: int):
        p = f"blk.{i}."
        self.layer = i
        self.attn_norm = m.load_norm(p + "attn_norm")
        self.attn = Attention(m, i)  # q/k/v biases load when present; q/k norms when m.qk_norm
        self.ffn_norm = m.load_norm(p + "post_attention_norm")
        self.moe: MoEFeedForward | None = None
        if i >= m.config.n_dense_lead:
            self.moe = load_moe_ffn(m, i, m.router)
        self.mlp: GatedMLP | None = m.load_gated_mlp(i) if self.moe is None else None

    def __call__(self, x: torch.Tensor, cache: KVCache, step: ForwardStep) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache, step)            # [T, n_embd]
        h = self.ffn_norm(x)                                          # [T, n_embd]
        if self.moe is not None:
            return x + self.moe(h, self.layer, step.recorder)
        return x + self.mlp(h)


# ----------------------------------------------------------------------------- model

@register(ARCH)
class Glm4MoeModel(Model):
    Config = Glm4MoeConfig

    def __init__(self, gf, config: Glm4MoeConfig, n_ctx: int | None = None):
        super().__init__(gf, config, n_ctx)
        # GLM-4.5 (355B) has per-head q/k norms, GLM-4.5-Air has none: follow the file
        self.qk_norm = gf.has_tensor("blk.0.attn_q_norm.weight")
        self.router = RouterConfig(
            n_expert=config.n_expert, n_used=config.n_expert_used,
            gating=config.expert_gating or GATING_SIGMOID,
            norm_weights=config.expert_weights_norm, scale=config.expert_weights_scale,
            n_groups=config.n_expert_groups, n_groups_used=config.n_expert_groups_used)
        self.n_shared_experts = config.n_expert_shared
        self.attn_kinds = {"global": AttnKind(self.make_rope(neox=True))}  # LLAMA_ROPE_TYPE_NEOX
        self.embed = self.load_embedding()
        self.blocks = [Block(self, i) for i in range(config.n_layer)]
        self.output_norm = self.load_norm("output_norm")
        self.lm_head = self.load_output()

    @classmethod
    def read_config(cls, gf) -> Glm4MoeConfig:
        """The trunk's hyperparameters: block_count less the NextN blocks at its end."""
        c = super().read_config(gf)
        return dataclasses.replace(c, n_layer=c.n_layer - c.n_layer_nextn)

    @classmethod
    def resident_bytes(cls, gf, info, packed: bool) -> int:
        block = info.name.split(".")[1] if info.name.startswith("blk.") else ""
        if block.isdigit() and int(block) >= cls.read_config(gf).n_layer:
            return 0  # a NextN block: never loaded
        return super().resident_bytes(gf, info, packed)
