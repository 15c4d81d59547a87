"""Llama-style decoders whose FFN is a mixture of experts: Qwen2-MoE, Qwen3-MoE and Mixtral.

The attention is the dense engine's (`engine.models.llama.Attention`: q/k/v biases load when
present, per-head q/k RMS norms when `qk_norm`); only the FFN differs, and it differs in a few
flags, as in llama.cpp's `build_moe_ffn` calls:

| arch              | rope | q/k norm | top-k weights        | shared expert                 |
|-------------------|------|----------|----------------------|-------------------------------|
| qwen2moe          | NEOX | no       | softmax, not renorm. | yes, scaled by sigmoid(x . g) |
| qwen3moe          | NEOX | per head | softmax, renormalised| no                            |
| llama (Mixtral)   | NORM | no       | softmax, renormalised| no                            |

Mixtral files declare `general.architecture = llama` with `llama.expert_count > 0`; the llama
loader hands those to `MixtralModel` (see `LlamaModel.from_gguf`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from engine.kv_cache import KVCache
from engine.layers import GatedMLP, RoPE, attention_mask
from engine.models.base import COMMON_KEYS, Model, TransformerConfig, _as_ids, register
from engine.models.llama import Attention
from engine.moe import MoEFeedForward, RouterConfig
from engine.trace import Recorder


@dataclass(frozen=True)
class MoEConfig(TransformerConfig):
    n_expert_used: int = 0
    n_ff_exp: int = 0                     # informational: expert shapes come from the tensors
    n_ff_shexp: int = 0
    expert_weights_scale: float = 0.0     # 0 and 1 mean unscaled

    KEYS: ClassVar = {
        **COMMON_KEYS,
        "n_ff": ("{arch}.feed_forward_length", 0),  # qwen2moe/qwen3moe may leave it out
        "n_expert_used": ("{arch}.expert_used_count", 0),
        "n_ff_exp": ("{arch}.expert_feed_forward_length", 0),
        "n_ff_shexp": ("{arch}.expert_shared_feed_forward_length", 0),
        "expert_weights_scale": ("{arch}.expert_weights_scale", 0.0),
    }


def load_moe_ffn(m: Model, i: int, norm_weights: bool, shared_gated: bool = False
                 ) -> MoEFeedForward | None:
    """`blk.{i}`'s routed-expert FFN (None when the layer has no router, i.e. is dense).

    Stacked experts stay in their GGUF encoding; the shared expert (`ffn_*_shexp`), when the
    file has one, always runs, scaled by sigmoid(x . ffn_gate_inp_shexp) if `shared_gated`.
    """
    p = f"blk.{i}."
    if not m.gguf.has_tensor(p + "ffn_gate_inp.weight"):
        return None
    c = m.config
    router = RouterConfig(n_expert=c.n_expert, n_used=c.n_expert_used, norm_weights=norm_weights,
                          scale=getattr(c, "expert_weights_scale", 0.0))
    shared = shared_gate = None
    if m.gguf.has_tensor(p + "ffn_gate_shexp.weight"):
        shared = GatedMLP(*m.load_linears([p + "ffn_gate_shexp", p + "ffn_up_shexp"]),
                          m.load_linear(p + "ffn_down_shexp"), "silu")
        if shared_gated:
            g = m.load_vector(p + "ffn_gate_inp_shexp.weight").reshape(-1, 1)  # [D, 1]
            shared_gate = lambda x: x @ g  # noqa: E731  [T, D] -> [T, 1]
    return MoEFeedForward(
        router,
        gate_inp=m.load_linear(p + "ffn_gate_inp"),                           # [E, D]
        gate=m.load_experts(p + "ffn_gate_exps.weight"),     # [E, F, D]
        up=m.load_experts(p + "ffn_up_exps.weight"),         # [E, F, D]
        down=m.load_experts(p + "ffn_down_exps.weight"),     # [E, D, F]
        shared=shared, shared_gate=shared_gate,
    )


class MoEBlock:
    def __init__(self, m: "MoETransformer", i: int):
        p = f"blk.{i}."
        self.il = i
        self.attn_norm = m.load_norm(p + "attn_norm")
        self.attn = m.attention_class(m, i)
        self.ffn_norm = m.load_norm(p + "ffn_norm")
        self.moe = load_moe_ffn(m, i, m.norm_topk, m.shared_gated)
        self.mlp = None if self.moe is not None else GatedMLP(
            *m.load_linears([p + "ffn_gate", p + "ffn_up"]), m.load_linear(p + "ffn_down"))

    def __call__(self, x: torch.Tensor, cache: KVCache, start_pos: int, rope: RoPE,
                 cos: torch.Tensor, sin: torch.Tensor, key_start: int, mask: torch.Tensor | None,
                 recorder: Recorder | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache, self.il, start_pos, rope, cos, sin, key_start,
                          mask, recorder)
        h = self.ffn_norm(x)
        return x + (self.moe(h, self.il, recorder) if self.moe is not None else self.mlp(h))


class MoETransformer(Model):
    """Pre-norm decoder: x += attn(rms(x)); x += moe(rms(x)). Subclasses set the flags."""

    Config = MoEConfig
    attention_class: ClassVar[Any] = Attention
    rope_neox: ClassVar[bool] = True
    qk_norm: ClassVar[bool] = False       # read by llama.Attention
    norm_topk: ClassVar[bool] = False     # renormalise the k selected weights
    shared_gated: ClassVar[bool] = False  # sigmoid gate on the shared expert

    def __init__(self, gf, config: MoEConfig, n_ctx: int | None = None):
        super().__init__(gf, config, n_ctx)
        self.rope = self.make_rope(self.rope_neox)
        self.embed = self.load_embedding()
        self.blocks = [MoEBlock(self, i) for i in range(config.n_layer)]
        self.output_norm = self.load_norm("output_norm")
        self.lm_head = self.load_output()
        self.moe_layers = [b.il for b in self.blocks if b.moe is not None]

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: KVCache, start_pos: int,
                recorder: Recorder | None = None, *, all_logits: bool = True) -> torch.Tensor:
        """ids [T] -> logits [T, n_vocab] float32 (only the last row when all_logits=False)."""
        ids = _as_ids(ids)
        T = ids.shape[0]
        if recorder is not None:
            recorder.begin_step(start_pos, T)
        full = recorder is not None and recorder.wants("attn_probs")
        key_start, mask = attention_mask(start_pos, T, None, full)
        cos, sin = self.rope.tables(start_pos, T)                  # [T, n_rot] (rope.rotate)
        x = self.embed(ids)                                        # [T, D]
        for block in self.blocks:
            x = block(x, cache, start_pos, self.rope, cos, sin, key_start, mask, recorder)
        if not all_logits:
            x = x[-1:]
        return self.lm_head(self.output_norm(x))                   # [T, n_vocab]


@register("qwen2moe")
class Qwen2MoeModel(MoETransformer):
    shared_gated = True  # llama.cpp qwen2moe: norm_w false, shared expert behind sigmoid gate


@register("qwen3moe")
class Qwen3MoeModel(MoETransformer):
    qk_norm = True
    norm_topk = True     # llama.cpp qwen3moe: norm_w true


class MixtralModel(MoETransformer):
    """`llama` files with stacked experts (Mixtral); not registered: LlamaModel delegates."""

    rope_neox = False    # llama.cpp LLAMA_ROPE_TYPE_NORM (the converter permutes q/k)
    norm_topk = True     # llama.cpp llama: norm_w true
