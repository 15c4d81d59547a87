"""Building blocks shared by the model files: RMSNorm, RoPE, attention, gated MLPs.

Activations are 2-D `[T, C]` (T tokens of one sequence, no batch dimension); attention works
per head on `[H, T, D]`. Everything runs in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.trace import Recorder


class RMSNorm:
    """y = x / rms(x) * w over the last dimension (Gemma's 1 + w is already folded into GGUF)."""

    def __init__(self, weight: torch.Tensor, eps: float):
        self.weight = weight  # [C]
        self.eps = eps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


# -- rotary position embedding ------------------------------------------------------------------

@dataclass(frozen=True)
class YarnParams:
    """YaRN context extension, as ggml's rope_yarn computes it (ext_factor 1)."""

    orig_ctx: int  # the context the model was trained with before extension
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float = 1.0  # {arch}.rope.scaling.attn_factor
    log_mul: float = 0.0  # {arch}.rope.scaling.yarn_log_multiplier (DeepSeek style mscale)


class RoPE:
    """Rotary embedding over the first `n_rot` dims of each head.

    neox=False: llama.cpp's NORM mode, rotating adjacent pairs (x[2i], x[2i+1]); the GGUF
    converter permutes llama q/k weights into this layout. neox=True: NEOX mode, rotating
    (x[i], x[i + n_rot/2]) as Hugging Face's rotate_half does (qwen2/3, gemma3).
    freq_factors (llama3 `rope_freqs.weight`) divide each frequency; freq_scale = 1/factor
    multiplies them (linear scaling); `yarn` blends scaled and unscaled frequencies per dim.
    """

    def __init__(self, n_rot: int, base: float, neox: bool, freq_scale: float = 1.0,
                 freq_factors: torch.Tensor | None = None, yarn: YarnParams | None = None):
        self.n_rot = n_rot
        self.neox = neox
        # Angles in float64 so positions in the tens of thousands keep their precision.
        i = torch.arange(0, n_rot // 2, dtype=torch.float64)
        theta = base ** (-2.0 * i / n_rot)  # [n_rot/2] radians per position
        if freq_factors is not None:
            theta = theta / freq_factors.to(torch.float64)
        self.mscale = 1.0
        if yarn is not None and freq_scale != 1.0:
            low, high = _yarn_corr_dims(n_rot, yarn.orig_ctx, base, yarn.beta_fast, yarn.beta_slow)
            ramp = 1.0 - ((i - low) / max(0.001, high - low)).clamp(0.0, 1.0)  # 1 = keep unscaled
            theta = freq_scale * theta * (1.0 - ramp) + theta * ramp
            factor = 1.0 / freq_scale
            mscale = lambda m: 1.0 if factor <= 1.0 else 0.1 * m * math.log(factor) + 1.0  # noqa: E731
            self.mscale = yarn.attn_factor * (mscale(1.0) / mscale(yarn.log_mul) if yarn.log_mul
                                              else mscale(1.0))
        else:
            theta = theta * freq_scale
        self.theta = theta  # [n_rot/2] float64

    def cos_sin(self, start_pos: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [n, n_rot/2] float32 for positions start_pos .. start_pos + n - 1."""
        pos = torch.arange(start_pos, start_pos + n, dtype=torch.float64)
        ang = pos[:, None] * self.theta[None, :]  # [n, n_rot/2]
        return ((ang.cos() * self.mscale).to(torch.float32),
                (ang.sin() * self.mscale).to(torch.float32))

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [H, T, D] -> rotated [H, T, D]; dims past n_rot pass through."""
        r = self.n_rot
        xr, rest = (x, None) if r == x.shape[-1] else (x[..., :r], x[..., r:])
        if self.neox:
            x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:
            pairs = xr.unflatten(-1, (r // 2, 2))  # [H, T, r/2, 2]
            x1, x2 = pairs[..., 0], pairs[..., 1]
            out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
        return out if rest is None else torch.cat((out, rest), dim=-1)


def _yarn_corr_dims(n_dims: int, orig_ctx: int, base: float, beta_fast: float,
                    beta_slow: float) -> tuple[float, float]:
    """ggml_rope_yarn_corr_dims: the dims where interpolation starts and ends."""
    def corr_dim(n_rot: float) -> float:
        return n_dims * math.log(orig_ctx / (n_rot * 2 * math.pi)) / (2 * math.log(base))
    low = max(0.0, math.floor(corr_dim(beta_fast)))
    high = min(n_dims - 1.0, math.ceil(corr_dim(beta_slow)))
    return low, high


# -- attention ----------------------------------------------------------------------------------

def attention_mask(start_pos: int, n: int, window: int | None = None, full: bool = False
                   ) -> tuple[int, torch.Tensor | None]:
    """Which cached keys the n queries at start_pos.. may see (causal, optional sliding window).

    Returns (key_start, mask): attend over keys [key_start, start_pos + n) with mask [n, S]
    (True = visible), or mask None when every one of those keys is visible. With a window,
    keys before the earliest visible one are cut off by key_start (free for decode steps)
    unless full=True, which keeps all keys so recorded probabilities span [0, start_pos + n).
    """
    end = start_pos + n
    key_start = 0 if (full or not window) else max(0, start_pos - window + 1)
    if n == 1 and (not window or start_pos - key_start < window):
        return key_start, None
    q_pos = torch.arange(start_pos, end)[:, None]  # [n, 1]
    k_pos = torch.arange(key_start, end)[None, :]  # [1, S]
    mask = k_pos <= q_pos
    if window:
        mask &= q_pos - k_pos < window  # llama.cpp: masked when p1 - p0 >= n_swa
    return key_start, mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              scale: float, recorder: Recorder | None = None, layer: int = 0) -> torch.Tensor:
    """Grouped-query attention. q [Hq, T, D], k [Hkv, S, D], v [Hkv, S, Dv] -> [Hq, T, Dv].

    Query head h reads kv head h // (Hq / Hkv). SDPA never materialises probabilities, so
    they are computed explicitly only when a recorder asks for "attn_probs".
    """
    n_head, n_tok, _ = q.shape
    n_kv = k.shape[0]
    group = n_head // n_kv
    if recorder is not None and recorder.wants("attn_probs"):
        qg = q.reshape(n_kv, group * n_tok, q.shape[-1])  # [Hkv, G*T, D]
        scores = (qg @ k.transpose(1, 2)).mul_(scale).view(n_head, n_tok, -1)  # [Hq, T, S]
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
        probs = scores.softmax(dim=-1)  # [Hq, T, S]
        recorder.record("attn_probs", layer, probs)
        out = probs.view(n_kv, group * n_tok, -1) @ v  # [Hkv, G*T, Dv]
        return out.view(n_head, n_tok, -1)
    out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=scale,
                                         enable_gqa=group > 1)  # [1, Hq, T, Dv]
    return out[0]


# -- feed-forward -------------------------------------------------------------------------------

def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"silu": F.silu, "gelu_tanh": gelu_tanh}


class GatedMLP:
    """down(act(gate(x)) * up(x)): SwiGLU with silu, GeGLU with gelu_tanh. x [T, C] -> [T, C]."""

    def __init__(self, gate, up, down, activation: str = "silu"):
        self.gate, self.up, self.down = gate, up, down
        self.act = ACTIVATIONS[activation]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))
