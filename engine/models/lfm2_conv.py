"""LFM2's gated short convolution block and the cache that holds its state (LFM2, LFM2-MoE).

The block (llama.cpp's `build_shortconv_block`, HF `Lfm2ShortConv`): in_proj maps x [T, D] to
three [T, D] parts B, C, h; B * h goes through a causal depthwise convolution of kernel size L
(`shortconv.l_cache`, 3 in released models) along the tokens; the result, gated by C, goes
through out_proj. A token sees itself and the L - 1 tokens before it, so the cache needs only
the last L - 1 rows of B * h per convolution layer: a fixed size, whatever the context length.

`HybridCache` holds both kinds of state: keys and values of the attention layers (a `KVCache`
over those layers only) and the convolution states. The convolution state is a summary of the
tokens already seen, not a per-position record: a forward call must start at position 0 or
exactly where the previous call ended (rolling back to an earlier position is refused), unless
`truncate` restored a checkpointed state first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from engine.errors import ContextOverflowError, LLMLensError
from engine.kv_cache import KVCache, TokenCache

CONV = "conv"  # the layer kind of a short-convolution layer (see Model.layer_kinds)


class HybridCache(TokenCache):
    """Per attention layer keys/values for n_ctx positions; per convolution layer the last
    d_conv = L - 1 convolution inputs [d_conv, n_embd].

    The convolution states describe one position only (where the last call ended), so a kept
    conversation can restart there, at position 0, or at a position `checkpoint` saved (up to
    MAX_CHECKPOINTS, a few KB to a few hundred KB each): generate() saves one before each
    prompt's last token, so a regenerated reply or the next turn after an edit restarts from
    the last prompt that is still a prefix instead of from scratch.
    """

    any_position = False
    MAX_CHECKPOINTS = 8

    def __init__(self, layer_kinds: Sequence[str], n_kv_heads: int, n_ctx: int, head_dim: int,
                 head_dim_v: int, n_embd: int, d_conv: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        attn_layers = [i for i, k in enumerate(layer_kinds) if k != CONV]
        self.n_ctx = n_ctx
        self.slot = {layer: j for j, layer in enumerate(attn_layers)}  # layer -> KVCache index
        self.kv = KVCache(len(attn_layers), n_kv_heads, n_ctx, head_dim, head_dim_v, dtype)
        self.d_conv = d_conv
        self.conv_state = {i: torch.zeros(d_conv, n_embd, dtype=dtype)
                           for i, k in enumerate(layer_kinds) if k == CONV}
        self.conv_end = dict.fromkeys(self.conv_state, 0)  # position each state is valid for
        self.checkpoints: dict[int, dict[int, torch.Tensor]] = {}  # position -> layer -> state
        self.n_filled = 0
        self.bytes_per_token = self.kv.bytes_per_token  # the conv states do not grow
        itemsize = torch.empty(0, dtype=dtype).element_size()
        self.conv_bytes = len(self.conv_state) * d_conv * n_embd * itemsize

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes + self.conv_bytes

    def _state_end(self) -> int | None:
        """The position every convolution state is at (None if they disagree: a failed call)."""
        ends = set(self.conv_end.values())
        return ends.pop() if len(ends) == 1 else (len(self.ids) if not ends else None)

    def _restorable(self) -> set[int]:
        """Positions a following call may start at with every state known."""
        known = {0} | {p for p in self.checkpoints if p <= len(self.ids)}
        end = self._state_end()
        if end is not None and end == len(self.ids):
            known.add(end)
        return known

    def reusable(self, prompt: Sequence[int], limit: int | None = None) -> int:
        """The longest kept prefix of `prompt` that ends where a convolution state is known."""
        n = super().reusable(prompt, limit)
        return max(p for p in self._restorable() if p <= n)

    def truncate(self, n: int) -> None:
        """Keep positions [0, n): n must be 0, the current end or a checkpoint (`reusable`)."""
        if n not in self._restorable():
            raise LLMLensError(f"the convolution state at position {n} is not known "
                               f"(a short-convolution cache cannot be rolled back there)")
        if n == 0:
            self.reset()
            return
        if n != self._state_end():
            for layer, state in self.checkpoints[n].items():
                self.conv_state[layer].copy_(state)
                self.conv_end[layer] = n
        super().truncate(n)
        self.kv.n_filled = n
        self.checkpoints = {p: s for p, s in self.checkpoints.items() if p <= n}

    def copy_prefix(self, source: "HybridCache", n: int) -> int:
        """Copies up to the last position <= n where source's convolution state is known."""
        n = max(p for p in source._restorable() if p <= n)
        if n == 0:
            self.reset()
            return 0
        states = (source.checkpoints[n] if n != source._state_end() else source.conv_state)
        for layer, state in states.items():
            self.conv_state[layer].copy_(state)
            self.conv_end[layer] = n
        self.kv.copy_prefix(source.kv, n)
        self.checkpoints = {p: {k: t.clone() for k, t in st.items()}
                            for p, st in source.checkpoints.items() if p <= n}
        self.ids = list(source.ids[:n])
        self.n_filled = n
        self.high_water = max(self.high_water, n)
        return n

    def checkpoint(self) -> None:
        end = self._state_end()
        if end is None or end != len(self.ids) or end == 0:
            return
        self.checkpoints[end] = {layer: s.clone() for layer, s in self.conv_state.items()}
        while len(self.checkpoints) > self.MAX_CHECKPOINTS:
            del self.checkpoints[min(self.checkpoints)]

    def _forget_from(self, start_pos: int) -> None:
        super()._forget_from(start_pos)
        if any(p > start_pos for p in self.checkpoints):
            self.checkpoints = {p: s for p, s in self.checkpoints.items() if p <= start_pos}

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor,
               raw: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """KVCache.update for attention layer `layer`: k, v [n_kv, T, d] -> views
        [n_kv, start_pos + T, d] of everything cached so far."""
        self._forget_from(start_pos)
        keys, values = self.kv.update(self.slot[layer], start_pos, k, v, raw)
        self.n_filled = start_pos + k.shape[1]
        return keys, values

    def conv_window(self, layer: int, start_pos: int, bx: torch.Tensor) -> torch.Tensor:
        """bx [T, D], the convolution inputs of positions [start_pos, start_pos + T) ->
        [d_conv + T, D]: the d_conv inputs before start_pos (zeros before position 0), then
        bx. Keeps the last d_conv rows as the layer's new state."""
        T = bx.shape[0]
        end = start_pos + T
        if end > self.n_ctx:
            raise ContextOverflowError(f"position {end - 1} is past the end of the context "
                                       f"({self.n_ctx} tokens)")
        state = self.conv_state[layer]                                  # [d_conv, D]
        if start_pos == 0:
            state.zero_()
        elif start_pos != self.conv_end[layer]:
            raise LLMLensError(
                f"layer {layer}'s convolution state is at position {self.conv_end[layer]}; "
                f"it cannot continue at position {start_pos} (a short-convolution cache "
                f"cannot be rolled back: start again from position 0)")
        self._forget_from(start_pos)
        window = torch.cat((state, bx.to(state.dtype)))                 # [d_conv + T, D]
        state.copy_(window[window.shape[0] - self.d_conv:])
        self.conv_end[layer] = end
        self.n_filled = end
        return window

    def reset(self) -> None:
        super().reset()
        self.kv.reset()
        self.checkpoints = {}
        for layer in self.conv_end:
            self.conv_end[layer] = 0  # the next call starts at 0, which zeroes the state


class ShortConv:
    """x [T, D] -> out_proj(C * conv(B * h)), (B, C, h) = in_proj(x) split in three."""

    def __init__(self, m: Any, i: int):
        p = f"blk.{i}.shortconv."
        self.layer = i
        self.in_proj = m.load_linear(p + "in_proj")                     # [3D, D]
        self.out_proj = m.load_linear(p + "out_proj")                   # [D, D]
        self.kernel = m.load_vector(p + "conv.weight")                  # [D, L]

    def __call__(self, x: torch.Tensor, cache: HybridCache, start_pos: int) -> torch.Tensor:
        T = x.shape[0]
        b, c, h = self.in_proj(x).chunk(3, dim=-1)                     # [T, D] each
        window = cache.conv_window(self.layer, start_pos, b * h)       # [L - 1 + T, D]
        L = self.kernel.shape[1]
        # causal depthwise conv: y[t] = sum_j kernel[:, j] * window[t + j] (window[t + L - 1] is t)
        y = window[:T] * self.kernel[:, 0]                              # [T, D]
        for j in range(1, L):
            y += window[j:j + T] * self.kernel[:, j]
        return self.out_proj(c * y)                                     # [T, D]
