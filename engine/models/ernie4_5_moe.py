"""ERNIE 4.5 MoE (`ernie4_5-moe`, e.g. ERNIE-4.5-21B-A3B): the Llama block (llama_moe.py) with
NORM rope (adjacent pairs, as ERNIE's interleaved rotary) and a routed mixture of experts.

As llama.cpp's ernie4_5-moe graph (src/models/ernie4-5-moe.cpp) and transformers'
Ernie4_5_Moe:
- routing: softmax over the experts; the selection bias `exp_probs_b` (HF's
  `moe_statics.e_score_correction_bias`) is added for the ranking only; the k weights are
  renormalised to sum 1 (and scaled by `expert_weights_scale` when the file sets one);
- shared experts (`ffn_*_shexp`, one merged MLP, not gated) run next to the routed ones;
- the first `leading_dense_block_count` layers are dense; after them a layer is MoE when
  (i + 1) % `interleave_moe_layer_step` == 0 (every layer in the released models);
- no q/k norms; q/k/v biases load when the file has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from engine.models.base import register
from engine.models.llama_moe import MoEConfig, MoELlamaModel

ARCH = "ernie4_5-moe"


@dataclass(frozen=True)
class Ernie45MoeConfig(MoEConfig):
    n_expert_shared: int = 0
    n_dense_lead: int = 0
    moe_step: int = 1                  # every moe_step-th layer (past the dense ones) is MoE

    KEYS: ClassVar = {
        **MoEConfig.KEYS,
        "n_expert_shared": ("{arch}.expert_shared_count", 0),
        "n_dense_lead": ("{arch}.leading_dense_block_count", 0),
        "moe_step": ("{arch}.interleave_moe_layer_step", 1),
    }


@register(ARCH)
class Ernie45MoeModel(MoELlamaModel):
    Config = Ernie45MoeConfig
    rope_neox = False   # llama.cpp LLAMA_ROPE_TYPE_NORM
    norm_topk = True    # llama.cpp ernie4_5-moe: norm_w true

    def is_moe_layer(self, i: int) -> bool:
        c = self.config
        return i >= c.n_dense_lead and (i + 1) % max(1, c.moe_step) == 0

    def load_ffn(self, i: int) -> tuple[Any, Any]:
        if not self.is_moe_layer(i):
            return self.load_gated_mlp(i), None
        mlp, moe = super().load_ffn(i)
        if moe is not None and moe.shared is not None:
            # one merged MLP, expert_shared_count experts wide
            self.n_shared_experts = self.config.n_expert_shared or 1
        return mlp, moe
