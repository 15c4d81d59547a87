"""Llama family (Llama 1/2/3, Mistral, and anything the converter writes as `llama`).

Pre-norm decoder: x += attn(rms(x)); x += swiglu(rms(x)). RoPE is llama.cpp's NORM mode
(adjacent pairs): the GGUF converter permutes q/k weights into that layout. Llama 3 ships
its rope scaling as per-frequency divisors in `rope_freqs.weight`.
Qwen2 (q/k/v biases) and Qwen3 (q/k RMS norms) differ only in rope mode and those tensors;
their files subclass `LlamaModel`.
"""

from __future__ import annotations

import torch

from engine.errors import UnsupportedArchitectureError
from engine.kv_cache import KVCache
from engine.layers import FusedLinear, GatedMLP, RoPE, attention, attention_mask
from engine.models.base import Model, TransformerConfig, _as_ids, register
from engine.trace import Recorder


class Attention:
    def __init__(self, m: "LlamaModel", i: int):
        c = m.config
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

    def __call__(self, x: torch.Tensor, cache: KVCache, layer: int, start_pos: int, rope: RoPE,
                 cos: torch.Tensor, sin: torch.Tensor, key_start: int, mask: torch.Tensor | None,
                 recorder: Recorder | None) -> torch.Tensor:
        T = x.shape[0]
        q, k, v = self.project(x)
        q = rope.rotate(q.transpose(0, 1), cos, sin)  # [Hq, T, D]
        k = rope.rotate(k.transpose(0, 1), cos, sin)  # [Hkv, T, D]
        keys, values = cache.update(layer, start_pos, k, v.transpose(0, 1))  # [Hkv, S, D]
        out = attention(q, keys[:, key_start:], values[:, key_start:], mask, self.scale,
                        recorder, layer)  # [Hq, T, Dv]
        return self.wo(out.transpose(0, 1).reshape(T, -1))  # [T, n_embd]


class Block:
    def __init__(self, m: "LlamaModel", i: int):
        self.attn_norm = m.load_norm(f"blk.{i}.attn_norm")
        self.attn = Attention(m, i)
        self.ffn_norm = m.load_norm(f"blk.{i}.ffn_norm")
        self.mlp = GatedMLP(*m.load_linears([f"blk.{i}.ffn_gate", f"blk.{i}.ffn_up"]),
                            m.load_linear(f"blk.{i}.ffn_down"), "silu")

    def __call__(self, x: torch.Tensor, cache: KVCache, layer: int, start_pos: int, rope: RoPE,
                 cos: torch.Tensor, sin: torch.Tensor, key_start: int, mask: torch.Tensor | None,
                 recorder: Recorder | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache, layer, start_pos, rope, cos, sin, key_start,
                          mask, recorder)
        return x + self.mlp(self.ffn_norm(x))


@register("llama")
class LlamaModel(Model):
    Config = TransformerConfig
    rope_neox = False  # llama.cpp LLAMA_ROPE_TYPE_NORM
    qk_norm = False

    @classmethod
    def from_gguf(cls, gf, n_ctx: int | None = None) -> Model:
        if cls is LlamaModel and gf.metadata.get(f"{gf.architecture}.expert_count", 0):
            # Mixtral files declare `llama` with an expert count.
            from engine.models.qwen2moe import MixtralModel

            return MixtralModel.from_gguf(gf, n_ctx)
        return super().from_gguf(gf, n_ctx)

    def __init__(self, gf, config: TransformerConfig, n_ctx: int | None = None):
        super().__init__(gf, config, n_ctx)
        if config.n_expert:
            raise UnsupportedArchitectureError(
                f"{gf.path.name}: {config.arch} with {config.n_expert} experts needs the "
                f"mixture-of-experts model class")
        factors = self.load_vector("rope_freqs.weight", required=False)  # llama3: [n_rot/2]
        self.rope = self.make_rope(self.rope_neox, freq_factors=factors)
        self.embed = self.load_embedding()
        self.blocks = [Block(self, i) for i in range(config.n_layer)]
        self.output_norm = self.load_norm("output_norm")
        self.lm_head = self.load_output()

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: KVCache, start_pos: int,
                recorder: Recorder | None = None, *, all_logits: bool = True) -> torch.Tensor:
        ids = _as_ids(ids)
        T = ids.shape[0]
        if recorder is not None:
            recorder.begin_step(start_pos, T)
        full = recorder is not None and recorder.wants("attn_probs")
        key_start, mask = attention_mask(start_pos, T, None, full)
        cos, sin = self.rope.tables(start_pos, T)  # [T, n_rot]
        x = self.embed(ids)  # [T, n_embd]
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, start_pos, self.rope, cos, sin, key_start, mask, recorder)
        if not all_logits:
            x = x[-1:]
        return self.lm_head(self.output_norm(x))  # [T, n_vocab]
