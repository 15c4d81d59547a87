"""Llama family (Llama 1/2/3, Mistral, and anything the converter writes as `llama`).

Pre-norm decoder: x += attn(rms(x)); x += swiglu(rms(x)). RoPE is llama.cpp's NORM mode
(adjacent pairs): the GGUF converter permutes q/k weights into that layout. Llama 3 ships
its rope scaling as per-frequency divisors in `rope_freqs.weight`.
Qwen2 (q/k/v biases) and Qwen3 (q/k RMS norms) differ only in rope mode and those tensors;
their files subclass `LlamaModel`. So do the MoE decoders built on this block (Mixtral,
Qwen2/3-MoE, OLMoE, see llama_moe.py): they override `load_ffn`. This file imports no MoE
module.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from engine.errors import UnsupportedArchitectureError
from engine.kv_cache import KVCache
from engine.layers import FusedLinear, attention
from engine.models.base import AttnKind, ForwardStep, Model, TransformerConfig, register


class Attention:
    """Grouped-query attention with rope; q/k/v biases load when the file has them, per-head
    q/k RMS norms when the model sets `qk_norm`."""

    def __init__(self, m: "LlamaModel", i: int):
        c = m.config
        self.layer, self.kind = i, m.layer_kind(i)
        self.n_head, self.n_kv, self.head_dim = c.n_head, c.n_head_kv, c.head_dim
        # q [n_head * head_dim, n_embd], k [n_kv * head_dim, n_embd], v [n_kv * head_dim_v, n_embd],
        # stacked where their types allow (one kernel call instead of three)
        self.wqkv = FusedLinear(m.load_linears([f"blk.{i}.attn_{w}" for w in "qkv"]))
        self.wq, self.wk, self.wv = self.wqkv.parts
        self.wo = m.load_linear(f"blk.{i}.attn_output")  # [n_embd, n_head * head_dim_v]
        self.q_norm = m.load_norm(f"blk.{i}.attn_q_norm") if m.qk_norm else None  # [head_dim]
        self.k_norm = m.load_norm(f"blk.{i}.attn_k_norm") if m.qk_norm else None
        self.scale = c.head_dim ** -0.5

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, n_embd] -> q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv], normed where the arch says."""
        T = x.shape[0]
        q, k, v = self.wqkv(x)  # [T, Hq*D], [T, Hkv*D], [T, Hkv*Dv]
        q = q.view(T, self.n_head, -1)  # [T, Hq, D]
        k = k.view(T, self.n_kv, -1)  # [T, Hkv, D]
        v = v.view(T, self.n_kv, -1)  # [T, Hkv, Dv]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def __call__(self, x: torch.Tensor, cache: KVCache, step: ForwardStep) -> torch.Tensor:
        a = step.attn[self.kind]
        T = x.shape[0]
        q, k, v = self.project(x)
        q = a.rope.rotate(q.transpose(0, 1), a.cos, a.sin)  # [Hq, T, D]
        k = a.rope.rotate(k.transpose(0, 1), a.cos, a.sin)  # [Hkv, T, D]
        # raw: float16 keys stay float16 for attention()'s fused decode kernel
        keys, values = cache.update(self.layer, step.start_pos, k, v.transpose(0, 1), raw=True)  # [Hkv, S, D]
        out = attention(q, keys[:, a.key_start:], values[:, a.key_start:], a.mask, self.scale,
                        step.recorder, self.layer)  # [Hq, T, Dv]
        return self.wo(out.transpose(0, 1).reshape(T, -1))  # [T, n_embd]


class Block:
    """x += attn(attn_norm(x)); x += ffn(ffn_norm(x)), the FFN being the model's `load_ffn`:
    a dense gated MLP (`mlp`) or a routed mixture of experts (`moe`)."""

    def __init__(self, m: "LlamaModel", i: int):
        self.layer = i
        self.attn_norm = m.load_norm(f"blk.{i}.attn_norm")
        self.attn = m.attention_class(m, i)
        self.ffn_norm = m.load_norm(f"blk.{i}.ffn_norm")
        self.mlp, self.moe = m.load_ffn(i)

    def __call__(self, x: torch.Tensor, cache: KVCache, step: ForwardStep) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache, step)
        h = self.ffn_norm(x)
        if self.moe is not None:
            return x + self.moe(h, self.layer, step.recorder)
        return x + self.mlp(h)


@register("llama")
class LlamaModel(Model):
    Config = TransformerConfig
    attention_class: ClassVar[Any] = Attention
    rope_neox: ClassVar[bool] = False  # llama.cpp LLAMA_ROPE_TYPE_NORM
    qk_norm: ClassVar[bool] = False    # per-head RMS norms on q and k (Qwen3)
    has_experts: ClassVar[bool] = False

    def __init__(self, gf, config: TransformerConfig, n_ctx: int | None = None):
        super().__init__(gf, config, n_ctx)
        if config.n_expert and not self.has_experts:
            raise UnsupportedArchitectureError(
                f"{gf.path.name}: {config.arch} with {config.n_expert} experts needs the "
                f"mixture-of-experts model class")
        factors = self.load_vector("rope_freqs.weight", required=False)  # llama3: [n_rot/2]
        self.attn_kinds = {"global": AttnKind(self.make_rope(self.rope_neox, freq_factors=factors))}
        self.embed = self.load_embedding()
        self.blocks = [Block(self, i) for i in range(config.n_layer)]
        self.output_norm = self.load_norm("output_norm")
        self.lm_head = self.load_output()

    def load_ffn(self, i: int) -> tuple[Any, Any]:
        """(dense MLP, None) or (None, mixture of experts) for layer i."""
        return self.load_gated_mlp(i), None
