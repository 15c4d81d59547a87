"""LFM2-MoE (`lfm2moe`, Liquid AI's LFM2-8B-A1B): short-convolution blocks between attention
blocks, a sigmoid-routed mixture of experts after the leading dense layers.

Following llama.cpp's lfm2 graph (src/models/lfm2.cpp, shared by lfm2moe) and HF `Lfm2Moe`:
- a layer is a convolution layer when its `attention.head_count_kv` entry is 0 (the converter
  writes the kv head counts per layer), else an attention layer; both are pre-norm:
  x += op(attn_norm(x)); x += ffn(ffn_norm(x)). `layer_kinds` says "conv" for the former, and
  they record no attention probabilities;
- attention: grouped-query, per-head q/k RMS norms, NEOX rope, 1/sqrt(head_dim) scale;
- convolution: see lfm2_conv.py; its state lives in the `HybridCache` that `new_cache` makes;
- FFN: SwiGLU for the first `leading_dense_block_count` layers, then routed experts: sigmoid
  scores, the expert bias (`exp_probs_b`) added for the choice only, the k weights
  renormalised (llama.cpp hard-codes norm_w true, as HF's default norm_topk_prob);
- the final norm is `token_embd_norm` (HF `embedding_norm`); the head is tied to the token
  embedding unless the file has `output.weight`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from engine.errors import GGUFError, UnsupportedArchitectureError
from engine.layers import GatedMLP
from engine.models import llama
from engine.models.base import (COMMON_KEYS, AttnKind, ForwardStep, Model, TransformerConfig,
                                register)
from engine.models.lfm2_conv import CONV, HybridCache, ShortConv
from engine.moe import GATING_SIGMOID, MoEFeedForward, RouterConfig, load_moe_ffn


@dataclass(frozen=True)
class Lfm2MoeConfig(TransformerConfig):
    kv_heads: tuple[int, ...] = ()        # per layer; 0 marks a convolution layer
    conv_kernel: int = 3                  # shortconv.l_cache: L, the tokens a conv sees
    n_dense_lead: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0                     # informational: expert shapes come from the tensors
    expert_gating: int = GATING_SIGMOID
    expert_weights_scale: float = 0.0     # 0 and 1 mean unscaled

    # head_count_kv is per layer: read by from_gguf, not through the table
    KEYS: ClassVar = {
        **{k: v for k, v in COMMON_KEYS.items() if k != "n_head_kv"},
        "conv_kernel": ("{arch}.shortconv.l_cache", 3),
        "n_dense_lead": ("{arch}.leading_dense_block_count", 0),
        "n_expert_used": ("{arch}.expert_used_count", 0),
        "n_ff_exp": ("{arch}.expert_feed_forward_length", 0),
        "expert_gating": ("{arch}.expert_gating_func", GATING_SIGMOID),
        "expert_weights_scale": ("{arch}.expert_weights_scale", 0.0),
    }

    @classmethod
    def from_gguf(cls, gf, **overrides):
        key = f"{gf.architecture}.attention.head_count_kv"
        n_layer = int(gf.metadata.get(f"{gf.architecture}.block_count", 0))
        raw = gf.metadata.get(key)
        if raw is None:
            raise GGUFError(f"{gf.path.name}: metadata key {key!r} is missing (it marks the "
                            f"convolution layers)")
        kv = [int(v) for v in np.atleast_1d(np.asarray(raw)).tolist()]
        if len(kv) == 1:
            kv = kv * n_layer
        if len(kv) != n_layer:
            raise GGUFError(f"{gf.path.name}: {key} has {len(kv)} entries, expected one per "
                            f"block ({n_layer})")
        counts = sorted({v for v in kv if v})
        if len(counts) > 1:
            raise UnsupportedArchitectureError(
                f"{gf.path.name}: attention layers with different kv head counts ({counts}) "
                f"are not supported")
        overrides.setdefault("kv_heads", tuple(kv))
        if counts:
            overrides.setdefault("n_head_kv", counts[0])
        return super().from_gguf(gf, **overrides)


class Block:
    """x += op(attn_norm(x)), op = attention or short convolution; x += ffn(ffn_norm(x))."""

    def __init__(self, m: "Lfm2MoeModel", i: int):
        self.layer, self.kind = i, m.layer_kind(i)
        self.attn_norm = m.load_norm(f"blk.{i}.attn_norm")  # HF operator_norm
        self.attn = llama.Attention(m, i) if self.kind != CONV else None
        self.conv = ShortConv(m, i) if self.kind == CONV else None
        self.ffn_norm = m.load_norm(f"blk.{i}.ffn_norm")
        self.moe: MoEFeedForward | None = None
        if m.router is not None and i >= m.config.n_dense_lead:
            self.moe = load_moe_ffn(m, i, m.router)  # with exp_probs_b, the selection bias
        self.mlp: GatedMLP | None = m.load_gated_mlp(i) if self.moe is None else None

    def __call__(self, x: torch.Tensor, cache: HybridCache, step: ForwardStep) -> torch.Tensor:
        h = self.attn_norm(x)                                           # [T, n_embd]
        if self.conv is not None:
            x = x + self.conv(h, cache, step.start_pos)
        else:
            x = x + self.attn(h, cache, step)
        h = self.ffn_norm(x)
        if self.moe is not None:
            return x + self.moe(h, self.layer, step.recorder)
        return x + self.mlp(h)


@register("lfm2moe")
class Lfm2MoeModel(Model):
    Config = Lfm2MoeConfig
    qk_norm = True  # read by llama.Attention: blk.N.attn_q_norm / attn_k_norm, [head_dim]

    def __init__(self, gf, config: Lfm2MoeConfig, n_ctx: int | None = None):
        super().__init__(gf, config, n_ctx)
        if config.conv_kernel < 2:
            raise GGUFError(f"{gf.path.name}: {config.arch}.shortconv.l_cache = "
                            f"{config.conv_kernel}, expected at least 2")
        if config.n_expert:
            self.router = RouterConfig(n_expert=config.n_expert, n_used=config.n_expert_used,
                                       gating=config.expert_gating, norm_weights=True,
                                       scale=config.expert_weights_scale)
        if any(k != CONV for k in self.layer_kinds):
            self.attn_kinds = {"global": AttnKind(self.make_rope(neox=True))}
        self.embed = self.load_embedding()
        self.blocks = [Block(self, i) for i in range(config.n_layer)]
        self.output_norm = self.load_norm("token_embd_norm")
        self.lm_head = self.load_output()

    def layer_kind(self, layer: int) -> str:
        """"conv" for a short-convolution layer (no attention), else "global"."""
        return CONV if self.config.kv_heads[layer] == 0 else "global"

    @property
    def layer_windows(self) -> list[int | None]:
        return [None] * self.config.n_layer

    @property
    def n_attn_layers(self) -> int:
        return sum(k != CONV for k in self.layer_kinds)

    @classmethod
    def kv_bytes_per_token(cls, config: Lfm2MoeConfig) -> int:
        """float32 keys and values of the attention layers only (the convolution states are
        a fixed 4 * (L - 1) * n_embd bytes per conv layer, whatever the context)."""
        c = config
        n_attn = sum(1 for v in c.kv_heads if v)
        return n_attn * c.n_head_kv * (c.head_dim + c.head_dim_v) * 4

    def new_cache(self, n_ctx: int | None = None) -> HybridCache:
        c = self.config
        return HybridCache(self.layer_kinds, c.n_head_kv, n_ctx or self.n_ctx, c.head_dim,
                           c.head_dim_v, c.n_embd, c.conv_kernel - 1)
