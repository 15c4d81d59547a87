"""Mixtral: `llama` files with stacked experts (`llama.expert_count` > 0).

The Llama block (NORM rope: the converter permutes q/k) with a routed mixture of experts:
softmax over the experts, top-k weights renormalised to sum 1 (llama.cpp's llama graph,
norm_w true), no shared expert. `load_model` picks this class for a `llama` file with an
expert count (see `EXPERT_ARCH_MODULES` in base.py).
"""

from __future__ import annotations

from engine.models.base import register
from engine.models.llama_moe import MoELlamaModel


@register("llama", experts=True)
class MixtralModel(MoELlamaModel):
    rope_neox = False    # llama.cpp LLAMA_ROPE_TYPE_NORM
    norm_topk = True     # llama.cpp llama: norm_w true
