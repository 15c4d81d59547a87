"""Qwen2 / Qwen2.5: the Llama block with q/k/v biases and NEOX (split-half) rope.

The biases load automatically (`blk.N.attn_q.bias` ...) through `Model.load_linear`.
"""

from __future__ import annotations

from engine.models.base import register
from engine.models.llama import LlamaModel


@register("qwen2")
class Qwen2Model(LlamaModel):
    rope_neox = True  # llama.cpp LLAMA_ROPE_TYPE_NEOX
