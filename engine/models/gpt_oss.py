"""gpt-oss (`gpt-oss`, OpenAI's gpt-oss-20b / 120b): a mixture-of-experts decoder with
attention sinks, following llama.cpp's src/models/openai-moe.cpp and transformers' GptOss.

What differs from the MoE Llama block (llama_moe.py):
- attention sinks: one learned logit per head joins every softmax as an extra "key" with no
  value, so a query may attend to nothing; q/k/v/o projections carry biases; NEOX rope with
  YaRN scaling (engine.layers.RoPE);
- alternating layers: even layers see a sliding window (`attention.sliding_window`), odd
  layers every earlier token (llama.cpp `load_swa_pattern(ml, 2)`, HF `layer_types`);
- x += attn(attn_norm(x)); x += moe(post_attention_norm(x)): the FFN norm is named
  `post_attention_norm` in GGUF, and every layer is MoE;
- the router has a bias; top-k on its logits, the k weights a softmax over the k chosen
  logits (llama.cpp SOFTMAX_WEIGHT gating); experts carry biases too;
- the clamped SwiGLU of the experts: g = min(gate, limit), u = clamp(up, -limit, limit),
  h = g * sigmoid(alpha * g) * (u + 1) with alpha 1.702, limit 7 (llama.cpp hard-codes both;
  the file has no key for them).
Experts are MXFP4 in released files: they stay packed in the memory map (engine.moe's
StackedExperts); a routed expert multiplies through the fused MXFP4 kernel (engine/kernels), or
without it is decoded alone (exact mode, no compiler).

YaRN follows the file, as llama.cpp reads it: the correction range is rounded to whole dims.
transformers' gpt-oss config says `truncate: False` (the original model does not round), which
no GGUF key records; on gpt-oss-20b that moves the frequencies of rotary dims 9-17 of 32 by up
to 76%, so the engine agrees with llama.cpp on real files, not with transformers.

Recording points: "attn_probs" [H, T, S] are the probabilities of the positions (a row sums to
1 minus the sink's share, as transformers reports them); "attn_sink" [H, T] is that share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from engine.kv_cache import KVCache
from engine.layers import EXPLICIT_ATTN_MAX_SCORES
from engine.models import llama
from engine.models.base import (COMMON_KEYS, AttnKind, ForwardStep, Model, TransformerConfig,
                                register)
from engine.moe import MoEFeedForward, RouterConfig, StackedExperts, load_experts
from engine.trace import Recorder


@dataclass(frozen=True)
class ModelArgs(TransformerConfig):
    n_expert_used: int = 0
    n_ff_exp: int = 0                        # informational: expert shapes come from tensors
    sliding_window: int = 0                  # 0: every layer sees every earlier token
    swa_pattern: int | tuple[bool, ...] = 2  # n: layer il slides when il % n < n - 1
    rope_base_local: float | None = None     # rope.freq_base_swa; None: the global base
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0

    KEYS: ClassVar = {
        **COMMON_KEYS,
        "n_ff": ("{arch}.feed_forward_length", 0),
        "n_expert_used": ("{arch}.expert_used_count", 0),
        "n_ff_exp": ("{arch}.expert_feed_forward_length", 0),
        "sliding_window": ("{arch}.attention.sliding_window", 0),
        "swa_pattern": ("{arch}.attention.sliding_window_pattern", None),
        "rope_base_local": ("{arch}.rope.freq_base_swa", None),
    }

    def is_local(self, layer: int) -> bool:
        if not self.sliding_window:
            return False
        if isinstance(self.swa_pattern, tuple):
            return bool(self.swa_pattern[layer])
        n = self.swa_pattern
        return n == 0 or layer % n < n - 1

    @classmethod
    def from_gguf(cls, gf, **overrides):
        # llama.cpp accepts the pattern as a number or as one flag per layer
        pattern = gf.metadata.get(f"{gf.architecture}.attention.sliding_window_pattern")
        if isinstance(pattern, (np.ndarray, list)):
            overrides["swa_pattern"] = tuple(bool(p) for p in pattern)
        return super().from_gguf(gf, **overrides)


# ----------------------------------------------------------------------------- attention

def sink_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   scale: float, sinks: torch.Tensor, recorder: Recorder | None = None,
                   layer: int = 0) -> torch.Tensor:
    """Grouped-query attention whose softmax also counts one sink logit per head.

    q [Hq, T, D], k [Hkv, S, D], v [Hkv, S, Dv], mask [T, S] (True = visible) or None,
    sinks [Hq] -> [Hq, T, Dv]. Query head h reads kv head h // (Hq / Hkv). Probabilities are
    always explicit (SDPA has no sink); long prompts go in query chunks so the score matrix
    stays under EXPLICIT_ATTN_MAX_SCORES elements, unless a recorder wants them whole.
    """
    n_head, n_tok, d = q.shape
    n_kv, n_key = k.shape[0], k.shape[1]
    group = n_head // n_kv
    want_probs = recorder is not None and recorder.wants("attn_probs")
    want_sink = recorder is not None and recorder.wants("attn_sink")
    chunk = n_tok if want_probs or want_sink else max(1, EXPLICIT_ATTN_MAX_SCORES // (n_head * n_key))
    kt = k.transpose(1, 2)                                             # [Hkv, D, S]
    outs, probs_all, sink_all = [], [], []
    for t0 in range(0, n_tok, chunk):
        qc = q[:, t0:t0 + chunk]                                       # [Hq, t, D]
        t = qc.shape[1]
        qg = qc.reshape(n_kv, group * t, d)                            # [Hkv, G*t, D]
        scores = (qg @ kt).mul_(scale).view(n_head, t, n_key)          # [Hq, t, S]
        if mask is not None:
            scores.masked_fill_(~mask[t0:t0 + t], float("-inf"))
        sink = sinks.view(n_head, 1, 1).expand(n_head, t, 1)           # [Hq, t, 1]
        p = torch.cat((scores, sink), dim=-1).softmax(dim=-1)          # [Hq, t, S + 1]
        probs = p[..., :n_key]                                         # [Hq, t, S]
        if want_probs:
            probs_all.append(probs)
        if want_sink:
            sink_all.append(p[..., n_key])                             # [Hq, t]
        out = probs.reshape(n_kv, group * t, n_key) @ v                # [Hkv, G*t, Dv]
        outs.append(out.view(n_head, t, -1))                           # [Hq, t, Dv]
    if want_probs:
        recorder.record("attn_probs", layer, torch.cat(probs_all, dim=1))  # [Hq, T, S]
    if want_sink:
        recorder.record("attn_sink", layer, torch.cat(sink_all, dim=1))    # [Hq, T]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)        # [Hq, T, Dv]


class Attention(llama.Attention):
    """Llama's projections (q/k/v/o biases load from the file) with the sink softmax."""

    def __init__(self, m: "GptOssModel", i: int):
        super().__init__(m, i)
        self.sinks = m.load_vector(f"blk.{i}.attn_sinks.weight")      # [n_head]

    def __call__(self, x: torch.Tensor, cache: KVCache, step: ForwardStep) -> torch.Tensor:
        a = step.attn[self.kind]
        T = x.shape[0]
        q, k, v = self.project(x)                                      # [T, H, D]
        q = a.rope.rotate(q.transpose(0, 1), a.cos, a.sin)             # [Hq, T, D]
        k = a.rope.rotate(k.transpose(0, 1), a.cos, a.sin)             # [Hkv, T, D]
        keys, values = cache.update(self.layer, step.start_pos, k, v.transpose(0, 1))  # [Hkv, S, D]
        out = sink_attention(q, keys[:, a.key_start:], values[:, a.key_start:], a.mask,
                             self.scale, self.sinks, step.recorder, self.layer)  # [Hq, T, Dv]
        return self.wo(out.transpose(0, 1).reshape(T, -1))             # [T, n_embd]


# ----------------------------------------------------------------------------- experts

class GptOssMoE(MoEFeedForward):
    """Router with bias, softmax over the k chosen logits, biased experts, clamped SwiGLU."""

    def __init__(self, cfg: RouterConfig, gate_inp, gate: StackedExperts, up: StackedExperts,
                 down: StackedExperts, gate_b: torch.Tensor, up_b: torch.Tensor,
                 down_b: torch.Tensor, alpha: float, limit: float):
        super().__init__(cfg, gate_inp, gate, up, down)
        self.gate_b, self.up_b, self.down_b = gate_b, up_b, down_b     # [E, F], [E, F], [E, D]
        self.alpha, self.limit = alpha, limit

    def __call__(self, x: torch.Tensor, layer: int = -1, recorder: Recorder | None = None
                 ) -> torch.Tensor:
        # x: [T, D]
        logits = self.gate_inp(x).float()                              # [T, E], bias included
        idx = logits.topk(self.cfg.n_used, dim=-1).indices             # [T, k], best first
        w = logits.gather(1, idx).softmax(dim=-1)                      # [T, k]
        if recorder is not None:
            recorder.record("moe_topk_ids", layer, idx)
            recorder.record("moe_topk_weights", layer, w)
            # the panel's view of the router: a softmax over every expert (k of them win)
            recorder.record("moe_probs", layer, logits.softmax(dim=-1))  # [T, E]
        return self.experts(x, idx, w)                                 # [T, D]

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        # x: [n, D] -> [n, D]
        g = (self.gate.matmul(e, x) + self.gate_b[e]).clamp_(max=self.limit)           # [n, F]
        u = (self.up.matmul(e, x) + self.up_b[e]).clamp_(-self.limit, self.limit)      # [n, F]
        h = g * torch.sigmoid(g * self.alpha) * (u + 1.0)                             # [n, F]
        return self.down.matmul(e, h) + self.down_b[e]                                 # [n, D]


# ----------------------------------------------------------------------------- model

class Block:
    def __init__(self, m: "GptOssModel", i: int):
        self.layer = i
        p = f"blk.{i}."
        self.attn_norm = m.load_norm(p + "attn_norm")
        self.attn = Attention(m, i)
        self.post_attn_norm = m.load_norm(p + "post_attention_norm")
        c = m.config
        self.moe = GptOssMoE(
            m.router,
            gate_inp=m.load_linear(p + "ffn_gate_inp"),                     # [E, D] + [E]
            gate=load_experts(m, p + "ffn_gate_exps.weight"),              # [E, F, D]
            up=load_experts(m, p + "ffn_up_exps.weight"),                  # [E, F, D]
            down=load_experts(m, p + "ffn_down_exps.weight"),              # [E, D, F]
            gate_b=m.load_vector(p + "ffn_gate_exps.bias"),                # [E, F]
            up_b=m.load_vector(p + "ffn_up_exps.bias"),                    # [E, F]
            down_b=m.load_vector(p + "ffn_down_exps.bias"),                # [E, D]
            alpha=c.swiglu_alpha, limit=c.swiglu_limit)

    def __call__(self, x: torch.Tensor, cache: KVCache, step: ForwardStep) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache, step)
        return x + self.moe(self.post_attn_norm(x), self.layer, step.recorder)


@register("gpt-oss")
class GptOssModel(Model):
    Config = ModelArgs
    qk_norm = False  # read by llama.Attention

    def __init__(self, gf, config: ModelArgs, n_ctx: int | None = None):
        super().__init__(gf, config, n_ctx)
        self.router = RouterConfig(n_expert=config.n_expert, n_used=config.n_expert_used,
                                   norm_weights=True)
        glob = self.make_rope(neox=True)
        local = glob if config.rope_base_local in (None, config.rope_base) else \
            self.make_rope(neox=True, base=config.rope_base_local)
        kinds = {"global": AttnKind(glob), "sliding": AttnKind(local, config.sliding_window)}
        self.attn_kinds = {k: kinds[k] for k in sorted(set(self.layer_kinds))}
        self.embed = self.load_embedding()
        self.blocks = [Block(self, i) for i in range(config.n_layer)]
        self.output_norm = self.load_norm("output_norm")
        self.lm_head = self.load_output()

    def layer_kind(self, layer: int) -> str:
        return "sliding" if self.config.is_local(layer) else "global"

