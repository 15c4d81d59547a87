"""Gemma 3 (text): interleaved sliding-window and global attention.

Differences from Llama, all following llama.cpp's src/models/gemma3.cpp:
- five sliding-window layers, then one global layer (il % 6 == 5), unless the file lists
  a pattern; local layers use rope base 10000 (`rope.freq_base_swa`) and no rope scaling;
- RMS norms on q and k per head, plus norms after attention and after the MLP;
- GeGLU MLP (gelu, tanh approximation); embeddings scaled by sqrt(n_embd); output tied to
  the token embedding unless `output.weight` exists; optional final logit soft-capping;
- queries scaled by 1/sqrt(head_dim) (27B: 1/sqrt(n_embd / n_head)).
Gemma's norms compute x * (1 + w); llama.cpp's converter already stores 1 + w, so the plain
RMSNorm applies here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.kv_cache import KVCache
from engine.models import llama
from engine.models.base import (COMMON_KEYS, AttnKind, ForwardStep, Model, TransformerConfig,
                                register)


@dataclass(frozen=True)
class ModelArgs(TransformerConfig):
    sliding_window: int = 0  # 0: every layer is global
    swa_pattern: int | tuple[bool, ...] = 6  # n: layer il is local when il % n < n - 1
    rope_base_local: float = 10000.0
    final_logit_softcap: float = 0.0

    KEYS = {
        **COMMON_KEYS,
        "sliding_window": ("{arch}.attention.sliding_window", 0),
        "swa_pattern": ("{arch}.attention.sliding_window_pattern", None),
        "rope_base_local": ("{arch}.rope.freq_base_swa", 10000.0),
        "final_logit_softcap": ("{arch}.final_logit_softcapping", 0.0),
    }

    def is_local(self, layer: int) -> bool:
        if not self.sliding_window:
            return False
        if isinstance(self.swa_pattern, tuple):
            return bool(self.swa_pattern[layer])
        n = self.swa_pattern
        return n == 0 or layer % n < n - 1

    @property
    def attn_scale(self) -> float:
        if self.n_layer == 62:  # Gemma 3 27B, as gemma_pytorch's config and llama.cpp do
            return (self.n_embd / self.n_head) ** -0.5
        return self.head_dim ** -0.5


class _Config(ModelArgs):
    """Accepts the pattern either as a number or as a per-layer array of flags."""

    @classmethod
    def from_gguf(cls, gf, **overrides):
        key = f"{gf.architecture}.attention.sliding_window_pattern"
        pattern = gf.metadata.get(key)
        if isinstance(pattern, (np.ndarray, list)):
            overrides["swa_pattern"] = tuple(bool(p) for p in pattern)
        return super().from_gguf(gf, **overrides)


class Attention(llama.Attention):
    """Llama's attention with q/k norms always on and Gemma's own score scale. Its layer kind
    ("sliding" or "global") picks the rope, window and mask from the step."""

    def __init__(self, m: "Gemma3Model", i: int):
        super().__init__(m, i)
        self.scale = m.config.attn_scale


class Block:
    def __init__(self, m: "Gemma3Model", i: int):
        self.layer = i
        self.attn_norm = m.load_norm(f"blk.{i}.attn_norm")
        self.attn = Attention(m, i)
        self.post_attn_norm = m.load_norm(f"blk.{i}.post_attention_norm")
        self.ffn_norm = m.load_norm(f"blk.{i}.ffn_norm")
        self.mlp = m.load_gated_mlp(i, activation="gelu_tanh")
        self.post_ffn_norm = m.load_norm(f"blk.{i}.post_ffw_norm")

    def __call__(self, x: torch.Tensor, cache: KVCache, step: ForwardStep) -> torch.Tensor:
        h = self.attn(self.attn_norm(x), cache, step)
        x = x + self.post_attn_norm(h)
        return x + self.post_ffn_norm(self.mlp(self.ffn_norm(x)))


@register("gemma3")
class Gemma3Model(Model):
    Config = _Config
    qk_norm = True  # read by llama.Attention: blk.N.attn_q_norm / attn_k_norm, [head_dim]

    def __init__(self, gf, config: ModelArgs, n_ctx: int | None = None):
        super().__init__(gf, config, n_ctx)
        # One rope table and mask per layer kind, shared by all layers of that kind.
        kinds = {"global": AttnKind(self.make_rope(neox=True)),
                 "sliding": AttnKind(self.make_rope(neox=True, base=config.rope_base_local,
                                                    scaled=False), config.sliding_window)}
        self.attn_kinds = {k: kinds[k] for k in sorted(set(self.layer_kinds))}
        self.embed = self.load_embedding()
        self.embed_scale = float(config.n_embd) ** 0.5
        self.blocks = [Block(self, i) for i in range(config.n_layer)]
        self.output_norm = self.load_norm("output_norm")
        self.lm_head = self.load_output()
        self.logit_softcap = config.final_logit_softcap

    def layer_kind(self, layer: int) -> str:
        return "sliding" if self.config.is_local(layer) else "global"
