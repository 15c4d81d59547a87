"""Qwen2-MoE (`qwen2moe`, e.g. Qwen1.5-MoE-A2.7B): the Qwen2 attention (q/k/v biases, NEOX
rope) with a routed mixture of experts plus one shared expert.

Routing as llama.cpp's qwen2moe graph: softmax over the experts, top-k weights not
renormalised; the shared expert always runs, scaled by sigmoid(x . ffn_gate_inp_shexp).
"""

from __future__ import annotations

from engine.models.base import register
from engine.models.llama_moe import MoELlamaModel


@register("qwen2moe")
class Qwen2MoeModel(MoELlamaModel):
    rope_neox = True     # llama.cpp LLAMA_ROPE_TYPE_NEOX
    shared_gated = True  # llama.cpp qwen2moe: norm_w false, shared expert behind sigmoid gate
