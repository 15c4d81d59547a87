"""Building blocks shared by the model files: RMSNorm, RoPE, attention, gated MLPs.

Activations are 2-D `[T, C]` (T tokens of one sequence, no batch dimension); attention works
per head on `[H, T, D]`. Everything runs in float32; the KV cache may hold float16, which
the fused decode attention reads as it is and the other paths convert.

With the compiled kernels (`engine.kernels`), RMS norms and one-token attention are single
fused calls (`rms_norm`, `attn_decode`): in a decode step each is otherwise several PyTorch ops
on a few hundred values, where dispatch costs more than the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.trace import Recorder


def fused_ops():
    """The compiled kernel module if it has the fused layer ops, else None (plain torch).
    Asked on every call (`kernels.load()` is a cached lookup), so a process that switches the
    kernels off, as tests do, is followed at once."""
    from engine import kernels  # noqa: PLC0415

    k = kernels.load()
    return k if k is not None and hasattr(k, "attn_decode") else None


class RMSNorm:
    """y = x / rms(x) * w over the last dimension (Gemma's 1 + w is already folded into GGUF)."""

    def __init__(self, weight: torch.Tensor, eps: float):
        self.weight = weight  # [C]
        self.eps = eps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # One fused op instead of pow/mean/add/rsqrt/mul/mul: each op is a thread sync in a
        # prompt pass, and a few microseconds of dispatch in a decode step (the kernel's
        # call: ~1 us; F.rms_norm on CPU: ~10 us, it is composite).
        k = fused_ops()
        if k is not None and x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return k.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


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

    def _tables(self, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-width cos and signed sin [>= end, n_rot] float32 for positions 0.., computed once
        and grown in 1.5x steps (decode steps only slice them); rebuilt if `mscale` is changed
        after init. out = x * c + partner(x) * s, partner(x) being the other element of x's
        rotation pair: NEOX c = [cos, cos], s = [-sin, sin]; NORM the same, interleaved."""
        cached = getattr(self, "_cache", None)
        if cached is None or cached[0] < end or cached[1] != self.mscale:
            n = max(end, cached[0] * 3 // 2 if cached is not None else 0)
            n = -(-n // 256) * 256
            ang = torch.arange(n, dtype=torch.float64)[:, None] * self.theta[None, :]  # [n, r/2]
            cos = (ang.cos() * self.mscale).to(torch.float32)
            sin = (ang.sin() * self.mscale).to(torch.float32)
            if self.neox:
                c, s = torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)  # [n, r]
            else:
                c = torch.stack((cos, cos), -1).flatten(-2)  # [n, r]
                s = torch.stack((-sin, sin), -1).flatten(-2)
            self._cache = cached = (n, self.mscale, c, s)
        return cached[2], cached[3]

    def cos_sin(self, start_pos: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [n, n_rot/2] float32 for positions start_pos .. start_pos + n - 1."""
        c, s = self._tables(start_pos + n)
        half = self.n_rot // 2
        c, s = c[start_pos:start_pos + n], s[start_pos:start_pos + n]
        if self.neox:
            return c[:, :half], s[:, half:]  # views of [cos, cos], [-sin, sin]
        return c[:, 0::2], s[:, 1::2]

    def tables(self, start_pos: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-width cos, signed sin [n, n_rot] for `rotate` (slices of a cached table)."""
        c, s = self._tables(start_pos + n)
        return c[start_pos:start_pos + n], s[start_pos:start_pos + n]

    def rotate(self, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x [H, T, D] -> rotated [H, T, D] with `tables` output; same values as __call__
        (x1*cos - x2*sin == x1*cos + x2*(-sin)) in 3 ops instead of ~8."""
        r = self.n_rot
        if x.dim() == 3 and x.dtype == torch.float32 and (k := fused_ops()) is not None:
            return k.rope(x, c, s, self.neox)  # one call; the same products and sums
        xr = x if r == x.shape[-1] else x[..., :r]
        if self.neox:
            partner = torch.roll(xr, r // 2, dims=-1) if r == x.shape[-1] else \
                torch.cat((xr[..., r // 2:], xr[..., : r // 2]), -1)  # [x2, x1]
        else:
            partner = xr.unflatten(-1, (r // 2, 2)).flip(-1).flatten(-2)  # (x2i+1, x2i) pairs
        out = torch.addcmul(xr * c, partner, s)
        return out if r == x.shape[-1] else torch.cat((out, x[..., r:]), dim=-1)

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

# attention() multiplies explicitly (scores, softmax, @ v) while the score matrix [Hq, T, S] has
# at most this many elements (16 MB), else it calls SDPA, which never materialises it.
EXPLICIT_ATTN_MAX_SCORES = 4 << 20

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
    recording = recorder is not None and recorder.wants("attn_probs")
    if (n_tok == 1 and mask is None and k.stride(-1) == 1 and v.stride(-1) == 1
            and (ops := fused_ops()) is not None):
        # A decode step: one pass over the cached keys in their stored dtype. A recorder gets
        # the kernel's own probabilities, so an open inspection panel changes no output.
        probs = q.new_empty(n_head, k.shape[1]) if recording else None
        out = ops.attn_decode(q[:, 0], k, v, scale, torch.get_num_threads(), probs)
        if recording:
            recorder.record("attn_probs", layer, probs.unsqueeze(1))
        return out.unsqueeze(1)
    if k.dtype != q.dtype:  # a float16 cache
        k, v = k.to(q.dtype), v.to(q.dtype)
    # Small problems (decode steps, prompt chunks of small models): three ops beat SDPA's CPU
    # flash kernel, whose setup alone costs ~0.3 ms a call (measured on a 1-token Gemma 3 step).
    if recording or n_head * n_tok * k.shape[1] <= EXPLICIT_ATTN_MAX_SCORES:
        qg = q.reshape(n_kv, group * n_tok, q.shape[-1])  # [Hkv, G*T, D]
        scores = (qg @ k.transpose(1, 2)).mul_(scale).view(n_head, n_tok, -1)  # [Hq, T, S]
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
        probs = scores.softmax(dim=-1)  # [Hq, T, S]
        if recording:
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
    """down(act(gate(x)) * up(x)): SwiGLU with silu, GeGLU with gelu_tanh. x [T, C] -> [T, C].

    gate and up run as one matmul when they can be stacked (see `FusedLinear`)."""

    def __init__(self, gate, up, down, activation: str = "silu"):
        self.gate_up = FusedLinear([gate, up])
        self.gate, self.up = self.gate_up.parts  # views into the stacked weight
        self.down = down
        self.act = ACTIVATIONS[activation]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_up(x)  # [T, F] each
        h = self.act(g).mul_(u)  # [T, F]
        del g, u  # frees the [T, 2F] projection before `down` allocates (prompt-pass peak)
        return self.down(h)


# -- fused projections --------------------------------------------------------------------------

def _fuse_key(lin) -> tuple | None:
    """Linears with equal keys can be stacked row-wise into one (same storage and input)."""
    from engine.linear import Linear  # noqa: PLC0415
    from engine.quant_linear import QuantLinear  # noqa: PLC0415

    if type(lin) is QuantLinear:
        return ("packed", lin.ggml_type, lin.in_features, lin.uses_kernels)
    if type(lin) is Linear:
        return ("f32", lin.in_features)
    return None


def _stack(parts: list) -> tuple[object, list]:
    """One linear stacking `parts`' rows, and the parts rebuilt as views into its storage
    (so keeping them, e.g. for inspection, costs no memory)."""
    from engine.linear import Linear  # noqa: PLC0415
    from engine.quant_linear import QuantLinear  # noqa: PLC0415

    bounds = [0]
    for p in parts:
        bounds.append(bounds[-1] + p.out_features)
    if isinstance(parts[0], QuantLinear):
        first = parts[0].packed
        adjacent = all(p.packed.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
                       and p.packed.data_ptr() == first.data_ptr() + a * first.stride(0)
                       for p, a in zip(parts, bounds))
        if adjacent:  # consecutive views of one buffer (engine.linear.load_stacked): no copy
            packed = first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(),
                                             (bounds[-1], first.shape[1]), first.stride())
            has_bias = any(p.bias is not None for p in parts)
            bias = torch.cat([p.bias if p.bias is not None else torch.zeros(p.out_features)
                              for p in parts]) if has_bias else None
            fused = QuantLinear(packed, parts[0].ggml_type, parts[0].in_features, bias,
                                name="+".join(p.name for p in parts), threads=parts[0].threads)
        else:
            fused = QuantLinear.cat(parts)
        views = [QuantLinear(fused.packed[a:b], p.ggml_type, p.in_features,
                             None if fused.bias is None else fused.bias[a:b], p.name, p.threads)
                 for p, a, b in zip(parts, bounds, bounds[1:])]
    else:
        has_bias = any(p.bias is not None for p in parts)
        bias = torch.cat([p.bias if p.bias is not None else torch.zeros(p.out_features)
                          for p in parts]) if has_bias else None
        fused = Linear(torch.cat([p.weight for p in parts]), bias)
        views = [Linear(fused.weight[a:b], None if bias is None else bias[a:b])
                 for a, b in zip(bounds, bounds[1:])]
    return fused, views


class FusedLinear:
    """Several projections of the same input (q/k/v, gate/up) as few matmuls: consecutive parts
    of one storage type are stacked into one weight, so a decode step makes one kernel call
    (one thread fork/join) instead of several. `__call__` returns the outputs in part order."""

    def __init__(self, parts: list):
        self.groups: list[tuple[object, list[int]]] = []  # (linear, output sizes)
        self.parts: list = []
        i = 0
        while i < len(parts):
            j = i + 1
            key = _fuse_key(parts[i])
            while key is not None and j < len(parts) and _fuse_key(parts[j]) == key:
                j += 1
            if j - i > 1:
                fused, views = _stack(parts[i:j])
            else:
                fused, views = parts[i], [parts[i]]
            self.groups.append((fused, [p.out_features for p in views]))
            self.parts.extend(views)
            i = j

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [T, in] -> [y_0 [T, out_0], y_1 [T, out_1], ...]"""
        outs: list[torch.Tensor] = []
        for lin, sizes in self.groups:
            y = lin(x)
            outs.extend(y.split(sizes, dim=-1) if len(sizes) > 1 else (y,))
        return outs
