"""The Llama block with a routed mixture of experts as FFN: what Mixtral, Qwen2-MoE, Qwen3-MoE
and OLMoE share (each has its own file with its flags).

The attention is the dense engine's (`engine.models.llama.Attention`: q/k/v biases load when
present, per-head q/k RMS norms when `qk_norm`); only the FFN differs, and it differs in a few
flags, as in llama.cpp's `build_moe_ffn` calls:

| arch              | rope | q/k norm   | top-k weights        | shared expert                 |
|-------------------|------|------------|----------------------|-------------------------------|
| qwen2moe          | NEOX | no         | softmax, not renorm. | yes, scaled by sigmoid(x . g) |
| qwen3moe          | NEOX | per head   | softmax, renormalised| no                            |
| llama (Mixtral)   | NORM | no         | softmax, renormalised| no                            |
| olmoe             | NEOX | whole q, k | softmax, not renorm. | no                            |

A layer without a router tensor (`ffn_gate_inp`) is a dense SwiGLU layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from engine.models.base import COMMON_KEYS, TransformerConfig
from engine.models.llama import LlamaModel
from engine.moe import RouterConfig, load_moe_ffn


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


class MoELlamaModel(LlamaModel):
    """Pre-norm decoder: x += attn(rms(x)); x += moe(rms(x)). Subclasses set the flags."""

    Config = MoEConfig
    has_experts = True
    rope_neox: ClassVar[bool] = True
    norm_topk: ClassVar[bool] = False     # renormalise the k selected weights
    shared_gated: ClassVar[bool] = False  # sigmoid gate on the shared expert

    def __init__(self, gf, config: MoEConfig, n_ctx: int | None = None):
        self.router = RouterConfig(n_expert=config.n_expert, n_used=config.n_expert_used,
                                   norm_weights=self.norm_topk, scale=config.expert_weights_scale)
        super().__init__(gf, config, n_ctx)

    def load_ffn(self, i: int) -> tuple[Any, Any]:
        moe = load_moe_ffn(self, i, self.router, self.shared_gated)
        if moe is None:
            return self.load_gated_mlp(i), None
        if moe.shared is not None:
            self.n_shared_experts = 1  # qwen2moe: one shared expert (ffn_*_shexp)
        return None, moe
