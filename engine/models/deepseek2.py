"""DeepSeek-V2 (`deepseek2`): Multi-head Latent Attention + DeepSeekMoE.

MLA: each token is compressed to a latent `c` (kv_lora_rank values, RMS-normed) plus one
shared RoPE key `k_pe` (qk_rope dims, the same for every head). Per head, the "nope" key and
the value are linear maps of `c` (W_kb, W_vb). We never materialise them: the query's nope
part is pushed into latent space (`q_nope @ W_kb`, "absorbed"), scores are taken against the
cached latents, and the attention output is mapped through W_vb afterwards. So the cache holds
`kv_lora_rank + qk_rope` values per token per layer (576 for V2-Lite, stored as float16 like
llama.cpp) instead of `2 * n_head * head_dim` (6144) — what the MLA paper promises.

Both GGUF layouts load: the older single `attn_kv_b` [H*(nope+v), kv_lora] and the newer split
`attn_k_b` [H, kv_lora, nope] (stored transposed) / `attn_v_b` [H, v, kv_lora].

RoPE is llama.cpp's "NORM" mode (adjacent pairs rotate; HF's complex-number rope) with YaRN
scaling; the attention scale carries YaRN's mscale correction exactly as llama.cpp computes
it (see `_yarn_factors`). FFN: `leading_dense_block_count` dense SwiGLU layers, then MoE layers
with always-on shared experts plus top-k routed experts (softmax, or sigmoid + selection bias).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from engine import kernels
from engine.errors import ContextOverflowError
from engine.gguf.reader import GGUFFile, TensorInfo
from engine.kv_cache import TokenCache
from engine.layers import FusedLinear, GatedMLP, RoPE, YarnParams, fused_ops
from engine.linear import release_pages
from engine.models.base import (COMMON_KEYS, AttnKind, ForwardStep, Model, TransformerConfig,
                                register)
from engine.moe import GATING_SOFTMAX, MoEFeedForward, RouterConfig, _torch_view, load_moe_ffn

ARCH = "deepseek2"


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class DeepseekV2Config(TransformerConfig):
    q_lora_rank: int = 0                # 0: plain q projection (V2-Lite)
    kv_lora_rank: int = 512
    qk_head_mla: int | None = None      # newer converters: MLA head dims apart from MQA ones
    v_head_mla: int | None = None
    n_dense_lead: int = 0               # leading dense FFN layers
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_exp: int = 0
    expert_weights_scale: float = 1.0
    expert_weights_norm: bool = False
    expert_gating: int = GATING_SOFTMAX
    n_expert_groups: int = 0
    n_expert_groups_used: int = 0

    KEYS: ClassVar = {
        **COMMON_KEYS,
        "rms_eps": ("{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        "q_lora_rank": ("{arch}.attention.q_lora_rank", 0),
        "kv_lora_rank": ("{arch}.attention.kv_lora_rank", 512),
        "qk_head_mla": ("{arch}.attention.key_length_mla", None),
        "v_head_mla": ("{arch}.attention.value_length_mla", None),
        "n_dense_lead": ("{arch}.leading_dense_block_count", 0),
        "n_expert_used": ("{arch}.expert_used_count", 0),
        "n_expert_shared": ("{arch}.expert_shared_count", 0),
        "n_ff_exp": ("{arch}.expert_feed_forward_length", 0),
        "expert_weights_scale": ("{arch}.expert_weights_scale", 1.0),
        "expert_weights_norm": ("{arch}.expert_weights_norm", False),
        "expert_gating": ("{arch}.expert_gating_func", GATING_SOFTMAX),
        "n_expert_groups": ("{arch}.expert_group_count", 0),
        "n_expert_groups_used": ("{arch}.expert_group_used_count", 0),
    }

    # Head geometry. Newer converters describe the absorbed MQA view in key_length/value_length
    # (kv_lora + rope, kv_lora) and the per-head dims in *_mla; older ones only the per-head dims.
    @property
    def qk_head(self) -> int:
        return self.qk_head_mla or self.head_dim

    @property
    def v_head(self) -> int:
        return self.v_head_mla or self.head_dim_v

    @property
    def qk_rope(self) -> int:
        return self.n_rot

    @property
    def qk_nope(self) -> int:
        return self.qk_head - self.n_rot

    @property
    def mscale_all_dim(self) -> float:
        # [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX] the converter stores 0.1 * mscale_all_dim
        return self.yarn_log_mul / 0.1


# ----------------------------------------------------------------------------- rope (YaRN, NORM)

def yarn_factors(cfg: DeepseekV2Config) -> tuple[float, float]:
    """(rope magnitude, kq_scale) exactly as llama.cpp derives them for deepseek2.

    llama-context.cpp: yarn_attn_factor = get_mscale(f, m) / get_mscale(f, m_all) with
    m = m_all for deepseek2 (so 1), then divided by (1 + 0.1 ln f), which ggml's rope
    multiplies back into cos/sin. The graph pre-scales q.k by mscale^2 / sqrt(qk_head) with
    mscale = 1 + 0.1 m_all ln f (HF: `yarn_apply_mscale`). Without a log multiplier llama.cpp
    falls back to get_mscale(f, 1) on both.
    """
    f = 1.0 / cfg.rope_freq_scale
    if cfg.rope_scaling != "yarn" or f <= 1.0:
        a = cfg.rope_attn_factor
        return a, a * a / math.sqrt(cfg.qk_head)
    m_all = cfg.mscale_all_dim
    attn_factor = 1.0 if m_all else 0.1 * math.log(f) + 1.0
    attn_factor = attn_factor / (1.0 + 0.1 * math.log(f)) * cfg.rope_attn_factor
    magnitude = attn_factor * (1.0 + 0.1 * math.log(f))        # what ggml_rope applies
    mscale = magnitude * (1.0 + 0.1 * m_all * math.log(f))
    return magnitude, mscale * mscale / math.sqrt(cfg.qk_head)


def make_mla_rope(cfg: DeepseekV2Config) -> RoPE:
    """NORM-mode rope over the qk_rope dims with YaRN, magnitude set the deepseek2 way."""
    yarn = None
    if cfg.rope_scaling == "yarn":
        yarn = YarnParams(orig_ctx=cfg.rope_orig_ctx, beta_fast=cfg.yarn_beta_fast,
                          beta_slow=cfg.yarn_beta_slow)
    rope = RoPE(cfg.n_rot, cfg.rope_base, neox=False, freq_scale=cfg.rope_freq_scale, yarn=yarn)
    rope.mscale = yarn_factors(cfg)[0]  # RoPE's generic YaRN mscale differs for deepseek2
    return rope


# ----------------------------------------------------------------------------- cache

def mla_cache_dtype() -> torch.dtype:
    """float16, as llama.cpp keeps the latent cache; LLMLENS_MLA_CACHE=f32 keeps float32 (exact
    products, twice the memory: what the reference tests compare against transformers with,
    since float16 rounding alone moves a tiny random 27-layer model's logits by ~1e-2, and
    llama.cpp's with its f16 cache as much)."""
    value = os.environ.get("LLMLENS_MLA_CACHE", "f16").strip().lower()
    if value not in ("f16", "f32"):
        raise ValueError(f"LLMLENS_MLA_CACHE must be f16 or f32, got {value!r}")
    return torch.float32 if value == "f32" else torch.float16


class MLACache(TokenCache):
    """Per layer one buffer [n_ctx, kv_lora_rank + qk_rope]: the normed latent c, then k_pe
    (already rotated). Nothing per head is stored.

    float16 by default (`mla_cache_dtype`), as llama.cpp stores it: half the bytes per token of
    float32 (V2-Lite: 31 KB instead of 62 KB), and the latents are RMS-normed, far inside
    float16's range. Rows are read back as float32 (`update` returns a float32 copy), so
    scores and outputs are computed in float32 as before."""

    def __init__(self, n_layers: int, n_ctx: int, kv_lora_rank: int, qk_rope: int,
                 dtype: torch.dtype = torch.float16):
        super().__init__()
        self.n_ctx = n_ctx
        self.kv_lora_rank = kv_lora_rank
        # empty, not zeros: rows past n_filled are never read, and a long context's pages cost
        # no RAM until a conversation reaches them (122 MiB at 4096 tokens for V2-Lite)
        self.latents = [torch.empty(n_ctx, kv_lora_rank + qk_rope, dtype=dtype)
                        for _ in range(n_layers)]
        self.n_filled = 0
        itemsize = torch.empty(0, dtype=dtype).element_size()
        self.bytes_per_token = n_layers * (kv_lora_rank + qk_rope) * itemsize

    @property
    def nbytes(self) -> int:
        return self.bytes_per_token * self.n_ctx

    def copy_prefix(self, source: "MLACache", n: int) -> int:
        for dst, src in zip(self.latents, source.latents):
            dst[:n] = src[:n]
        self.ids = list(source.ids[:n])
        self.n_filled = n
        self.high_water = max(self.high_water, n)
        return n

    def update(self, layer: int, start_pos: int, kv: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """Store kv [T, kv_lora + rope] at [start_pos, start_pos + T); return all rows so far,
        [start_pos + T, kv_lora + rope], as float32 (`raw`: the view in the cache's dtype)."""
        end = start_pos + kv.shape[0]
        if end > self.n_ctx:
            raise ContextOverflowError(f"position {end - 1} is past the end of the context "
                                       f"({self.n_ctx} tokens)")
        self._forget_from(start_pos)
        buf = self.latents[layer]
        buf[start_pos:end] = kv
        if layer == len(self.latents) - 1:
            self.n_filled = end
        return buf[:end] if raw else buf[:end].float()  # .float(): a copy when float16


# ----------------------------------------------------------------------------- blocks

def load_heads_packed(m: Model, name: str, n_head: int) -> tuple[torch.Tensor, int] | None:
    """A per-head weight `[H * rows, n]` (attn_k_b, attn_v_b) as its file bytes
    `[H, rows, row_bytes]` for the fused kernels' grouped product (`moe_gemm`, one head per
    segment), with its ggml type; None without kernels, in exact mode or for a type they lack.
    A decode step then reads these in their file encoding (V2-Lite: Q5_0/Q4_K, ~6x fewer bytes
    than float32) instead of two float32 bmm operands of 4 MB per layer."""
    from engine.linear import exact_mode  # noqa: PLC0415

    info = m.tensor_info(name)
    k = fused_ops()
    if exact_mode() or k is None or info.ggml_type not in k.supported_types():
        return None
    raw = np.array(m.gguf.raw(info), copy=True)  # owned: no page faults through the map later
    return torch.from_numpy(raw).view(n_head, info.n_elements // info.shape[-1] // n_head, -1), \
        int(info.ggml_type)


def load_f32(m: Model, name: str) -> torch.Tensor:
    """A (small) weight as float32 in its PyTorch shape, decoded by the fused kernels when they
    are available (bit-identical to the numpy dequantizers, ~10x faster: V2-Lite has 54 of
    these), then dropped from this process's mapping of the file."""
    info = m.tensor_info(name)
    k = kernels.load()
    if k is None or info.ggml_type not in k.supported_types():
        w = m.load_vector(name)
    else:
        n = info.shape[-1]
        rows = info.n_elements // n
        packed = _torch_view(m.gguf.raw(info)).view(rows, -1)               # [rows, row_bytes]
        w = k.dequant_rows(packed, info.ggml_type, n, 0, rows, torch.get_num_threads())
        w = w.view(info.shape)
    release_pages(m.gguf, info)
    return w


class MLAttention:
    """Absorbed MLA: scores and outputs are computed in latent space, heads never expanded."""

    def __init__(self, m: "DeepseekV2Model", i: int):
        c = m.config
        self.c, self.layer = c, i
        self.kq_scale = m.kq_scale
        p = f"blk.{i}."
        # q (or q_a with q LoRA) and kv_a both read x: one matmul when they can be stacked
        q_name = "attn_q_a" if c.q_lora_rank else "attn_q"           # [q_lora | H*qk_head, D]
        self.wq_kv = FusedLinear(m.load_linears([p + q_name, p + "attn_kv_a_mqa"]))  # kv_a [L+rope, D]
        wq, self.wkv_a = self.wq_kv.parts
        if c.q_lora_rank:
            self.wq_a = wq
            self.q_a_norm = m.load_norm(p + "attn_q_a_norm")
            self.wq_b = m.load_linear(p + "attn_q_b")              # [H*qk_head, q_lora]
        else:
            self.wq = wq
        self.kv_a_norm = m.load_norm(p + "attn_kv_a_norm")
        H, L = c.n_head, c.kv_lora_rank
        # Small per-head maps kept as float32 (V2-Lite: 2 x 16 x 128 x 512 per layer, 8 MB, 2% of
        # the Q4_K_M file in all): one bmm each per layer; per-head packed products cost more
        # in call overhead than they save in bandwidth, and bf16/f16 bmm is no faster on CPU.
        self.kb_packed = self.vb_packed = None  # decode-step operands in the file's encoding
        if m.gguf.has_tensor(p + "attn_k_b.weight"):
            self.kb_packed = load_heads_packed(m, p + "attn_k_b.weight", H)  # [H, L, bytes of nope]
            self.vb_packed = load_heads_packed(m, p + "attn_v_b.weight", H)  # [H, v, bytes of L]
            self.heads = torch.arange(H)
            self.one_each = torch.ones(H, dtype=torch.long)
            k_b = load_f32(m, p + "attn_k_b.weight")               # [H, L, nope] (stored transposed)
            self.w_kb = k_b.reshape(H, L, c.qk_nope).transpose(1, 2).contiguous()  # [H, nope, L]
            self.w_vb = load_f32(m, p + "attn_v_b.weight").reshape(H, c.v_head, L)  # [H, v, L]
        else:
            kv_b = load_f32(m, p + "attn_kv_b.weight").view(H, c.qk_nope + c.v_head, L)
            self.w_kb = kv_b[:, :c.qk_nope].contiguous()           # [H, nope, L]
            self.w_vb = kv_b[:, c.qk_nope:].contiguous()           # [H, v, L]
        self.wo = m.load_linear(p + "attn_output")                 # [D, H*v]

    def __call__(self, x: torch.Tensor, cache: "MLACache", step: ForwardStep) -> torch.Tensor:
        c, a = self.c, step.attn["mla"]
        T, H, L = x.shape[0], c.n_head, c.kv_lora_rank
        q, kv = self.wq_kv(x)                          # [T, q_lora | H*qk_head], [T, L + rope]
        if c.q_lora_rank:
            q = self.wq_b(self.q_a_norm(q))                            # [T, H*qk_head]
        q = q.view(T, H, c.qk_head).transpose(0, 1)                    # [H, T, nope+rope]
        q_nope = q[..., :c.qk_nope]                                    # [H, T, nope]
        q_pe = a.rope.rotate(q[..., c.qk_nope:], a.cos, a.sin)         # [H, T, rope]
        latent = self.kv_a_norm(kv[:, :L])                             # [T, L]
        k_pe = a.rope.rotate(kv[None, :, L:], a.cos, a.sin)[0]         # [T, rope], one shared head
        ckv = torch.cat((latent, k_pe), dim=-1)                        # [T, L + rope]
        if T == 1 and a.mask is None and (ops := fused_ops()) is not None:
            # A decode step: one fused pass over the cached latents in their stored dtype
            # (float16: no float32 copy of the whole cache per layer). Keys are [c, k_pe],
            # values c, the first L columns of the same rows. A recorder gets the kernel's
            # own probabilities, so inspecting changes no output.
            rows = cache.update(self.layer, step.start_pos, ckv, raw=True)[None]  # [1, S, L + rope]
            nt = torch.get_num_threads()
            if self.kb_packed is not None:  # each head's W_kb through its own segment
                q_lat = ops.moe_gemm(self.kb_packed[0], self.kb_packed[1], self.heads,
                                     self.one_each, q_nope[:, 0], nt)          # [H, L]
            else:
                q_lat = torch.bmm(q_nope, self.w_kb)[:, 0]                     # [H, L]
            q_cat = torch.cat((q_lat, q_pe[:, 0]), dim=-1)                     # [H, L + rope]
            recording = step.recorder is not None and step.recorder.wants("attn_probs")
            probs = q_cat.new_empty(H, rows.shape[1]) if recording else None      # [H, S]
            o_lat = ops.attn_decode(q_cat, rows, rows[..., :L], self.kq_scale, nt, probs)  # [H, L]
            if recording:
                step.recorder.record("attn_probs", self.layer, probs[:, None])
            if self.vb_packed is not None:
                o = ops.moe_gemm(self.vb_packed[0], self.vb_packed[1], self.heads,
                                 self.one_each, o_lat, nt)                     # [H, v]
            else:
                o = torch.bmm(o_lat[:, None], self.w_vb.transpose(1, 2))[:, 0]  # [H, v]
            return self.wo(o.reshape(T, H * c.v_head))                         # [T, D]
        ckv = cache.update(self.layer, step.start_pos, ckv)            # [S, L + rope]
        c_all, pe_all = ckv[:, :L], ckv[:, L:]                         # [S, L], [S, rope]

        q_lat = torch.bmm(q_nope, self.w_kb)                           # [H, T, L]  q . W_kb absorbed
        scores = (q_lat @ c_all.T).add_(q_pe @ pe_all.T).mul_(self.kq_scale)  # [H, T, S]
        if a.mask is not None:                                         # causal, key_start 0
            scores.masked_fill_(~a.mask, float("-inf"))                # mask [T, S]
        probs = torch.softmax(scores, dim=-1)                          # [H, T, S]
        if step.recorder is not None:
            step.recorder.record("attn_probs", self.layer, probs)
        o_lat = probs @ c_all                                          # [H, T, L]
        o = torch.bmm(o_lat, self.w_vb.transpose(1, 2))                # [H, T, v]  W_vb after attn
        return self.wo(o.transpose(0, 1).reshape(T, H * c.v_head))     # [T, D]


class Block:
    def __init__(self, m: "DeepseekV2Model", i: int):
        p = f"blk.{i}."
        self.layer = i
        self.attn_norm = m.load_norm(p + "attn_norm")
        self.attn = MLAttention(m, i)
        self.ffn_norm = m.load_norm(p + "ffn_norm")
        # the first `leading_dense_block_count` layers (and all without a router) are dense
        self.moe: MoEFeedForward | None = None
        if m.router is not None and i >= m.config.n_dense_lead:
            self.moe = load_moe_ffn(m, i, m.router)
        self.mlp: GatedMLP | None = m.load_gated_mlp(i) if self.moe is None else None

    def __call__(self, x: torch.Tensor, cache: "MLACache", step: ForwardStep) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache, step)
        h = self.ffn_norm(x)
        if self.moe is not None:
            return x + self.moe(h, self.layer, step.recorder)
        return x + self.mlp(h)


# ----------------------------------------------------------------------------- model

@register(ARCH)
class DeepseekV2Model(Model):
    Config = DeepseekV2Config

    def __init__(self, gf, config: DeepseekV2Config, n_ctx: int | None = None):
        super().__init__(gf, config, n_ctx)
        self.attn_kinds = {"mla": AttnKind(make_mla_rope(config))}
        self.kq_scale = yarn_factors(config)[1]
        if config.n_expert:
            self.router = RouterConfig(
                n_expert=config.n_expert, n_used=config.n_expert_used,
                gating=config.expert_gating, norm_weights=config.expert_weights_norm,
                scale=config.expert_weights_scale, n_groups=config.n_expert_groups,
                n_groups_used=config.n_expert_groups_used)
            self.n_shared_experts = config.n_expert_shared
        self.embed = self.load_embedding()
        self.blocks = [Block(self, i) for i in range(config.n_layer)]
        self.output_norm = self.load_norm("output_norm")
        self.lm_head = self.load_output()

    def layer_kind(self, layer: int) -> str:
        return "mla"

    @property
    def kv_head_of(self) -> list[int]:
        """Every query head reads the one latent "kv head" (the absorbed view is multi-query:
        per-head keys and values are never formed), so all map to 0."""
        return [0] * self.config.n_head

    @classmethod
    def kv_bytes_per_token(cls, config: DeepseekV2Config) -> int:
        c = config
        itemsize = torch.empty(0, dtype=mla_cache_dtype()).element_size()
        return c.n_layer * (c.kv_lora_rank + c.qk_rope) * itemsize  # latents + rope keys

    def new_cache(self, n_ctx: int | None = None, dtype: torch.dtype | None = None) -> MLACache:
        """Latents in `dtype`, by default `mla_cache_dtype()` (float16, like llama.cpp)."""
        c = self.config
        return MLACache(c.n_layer, n_ctx or self.n_ctx, c.kv_lora_rank, c.qk_rope,
                        dtype or mla_cache_dtype())

    @classmethod
    def resident_bytes(cls, gf: GGUFFile, info: TensorInfo, packed: bool) -> int:
        if any(k in info.name for k in (".attn_k_b.", ".attn_v_b.", ".attn_kv_b.")):
            # decoded to float32 at load (see MLAttention); with the kernels the split layout's
            # matrices also keep their file bytes for decode steps (`load_heads_packed`)
            also_packed = packed and ".attn_kv_b." not in info.name
            return 4 * info.n_elements + (info.n_bytes if also_packed else 0)
        return super().resident_bytes(gf, info, packed)
