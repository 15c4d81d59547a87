"""The static KV cache, and what every cache knows about the tokens it holds.

gpt-fast style: `update(layer, start_pos, k, v)` writes the new positions in place and returns
views of everything cached so far, so a decode step allocates nothing here.

`TokenCache` (the base of every cache: `KVCache`, deepseek2's `MLACache`, LFM2's
`HybridCache`) remembers the token ids whose entries it holds, so that generate() can keep a
conversation's cache across turns and process only what follows the longest common prefix, as
llama.cpp's server does. Any write at a position below the end of `ids` forgets the ids from
that position on, so a forward pass by someone else (an inspection pass, a benchmark) never
leaves ids that no longer describe the cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

from engine.errors import ContextOverflowError


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class TokenCache:
    """What every cache shares: the ids of the positions [0, len(ids)) it holds.

    generate() appends the ids it forwards (`extend`) and asks `reusable(prompt)` how much of a
    new prompt can be kept; `truncate(n)` then drops everything from position n on. A cache
    whose state is a summary of all earlier tokens (a convolution or recurrent state) can only
    restart where that state is known: it overrides `reusable`, `truncate` and `checkpoint`.
    """

    # Whether `truncate` can go back to any position; when False generate() checkpoints the
    # state before a prompt's last token, so regenerating the same prompt can restart there.
    any_position = True

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.high_water = 0  # the most positions ever held: what of the buffers is resident

    def reusable(self, prompt: Sequence[int], limit: int | None = None) -> int:
        """How many leading positions of `prompt` this cache can keep (at most `limit`, and
        never the whole prompt: the last token must be processed to get logits)."""
        n = min(common_prefix(self.ids, prompt), len(prompt) - 1)
        return max(0, n if limit is None else min(n, limit))

    def truncate(self, n: int) -> None:
        """Keep positions [0, n) only (n <= len(ids))."""
        del self.ids[n:]
        self.n_filled = n

    def extend(self, ids: Sequence[int]) -> None:
        """Record that `ids` now occupy the positions right after the known ones."""
        self.ids.extend(int(i) for i in ids)
        self.high_water = max(self.high_water, len(self.ids))

    def checkpoint(self) -> None:
        """Remember the state at the current end, to be able to restart there (no-op here)."""

    def copy_prefix(self, source: "TokenCache", n: int) -> int:
        """Hold `source`'s first n positions (a copy, far cheaper than recomputing them);
        returns how many were copied (fewer where source's state is not known at n)."""
        raise NotImplementedError

    def _forget_from(self, start_pos: int) -> None:
        """A write at `start_pos` makes every known id from there on stale."""
        if start_pos < len(self.ids):
            del self.ids[start_pos:]

    def reset(self) -> None:
        self.ids.clear()
        self.n_filled = 0  # stale entries beyond n_filled are never read


def kv_cache_dtype() -> torch.dtype:
    """The element type of new KV caches: float16 where the fused decode attention reads it
    (`engine.kernels`: half the bytes a decode step reads per cached token, as llama.cpp keeps
    its cache), float32 without the kernels (plain ops would convert every key each step).
    LLMLENS_KV_CACHE=f32 or f16 overrides (the reference tests compare against transformers
    with f32: f16 rounding of keys and values moves logits by ~1e-3)."""
    value = os.environ.get("LLMLENS_KV_CACHE", "auto").strip().lower()
    if value not in ("auto", "f16", "f32"):
        raise ValueError(f"LLMLENS_KV_CACHE must be auto, f16 or f32, got {value!r}")
    if value == "auto":
        from engine.layers import fused_ops  # noqa: PLC0415

        value = "f16" if fused_ops() is not None else "f32"
    return torch.float16 if value == "f16" else torch.float32


class KVCache(TokenCache):
    """keys[layer]: [n_kv_heads, n_ctx, head_dim_k]; values[layer]: [n_kv_heads, n_ctx, head_dim_v]."""

    def __init__(self, n_layers: int, n_kv_heads: int, n_ctx: int, head_dim_k: int,
                 head_dim_v: int | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        head_dim_v = head_dim_k if head_dim_v is None else head_dim_v
        self.n_ctx = n_ctx
        # torch.empty, not zeros: positions past n_filled are never read, and untouched pages of
        # a large buffer cost no RAM until a long conversation actually reaches them.
        self.keys = [torch.empty(n_kv_heads, n_ctx, head_dim_k, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.empty(n_kv_heads, n_ctx, head_dim_v, dtype=dtype) for _ in range(n_layers)]
        self.n_filled = 0  # positions [0, n_filled) hold valid entries
        itemsize = torch.empty(0, dtype=dtype).element_size()
        self.bytes_per_token = n_layers * n_kv_heads * (head_dim_k + head_dim_v) * itemsize

    @property
    def nbytes(self) -> int:
        return self.bytes_per_token * self.n_ctx

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor,
               raw: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [n_kv_heads, T, d] at positions [start_pos, start_pos + T).

        Returns all keys/values up to the new ones, [n_kv_heads, start_pos + T, d]: views in
        the cache's dtype with `raw` (for `engine.layers.attention`, which reads float16 as
        it is), else float32 (a copy when the cache is float16).
        """
        end = start_pos + k.shape[1]
        if end > self.n_ctx:
            raise ContextOverflowError(f"position {end - 1} is past the end of the context "
                                       f"({self.n_ctx} tokens)")
        self._forget_from(start_pos)
        kbuf, vbuf = self.keys[layer], self.values[layer]
        kbuf[:, start_pos:end] = k
        vbuf[:, start_pos:end] = v
        if layer == len(self.keys) - 1:
            self.n_filled = end
        keys, values = kbuf[:, :end], vbuf[:, :end]
        if raw or kbuf.dtype == torch.float32:
            return keys, values
        return keys.float(), values.float()

    def copy_prefix(self, source: "KVCache", n: int) -> int:
        for dst, src in zip(self.keys + self.values, source.keys + source.values):
            dst[:, :n] = src[:, :n]
        self.ids = list(source.ids[:n])
        self.n_filled = n
        self.high_water = max(self.high_water, n)
        return n


class CachePool:
    """The caches of the last few conversations, so that going back to one does not re-read it.

    `take(prompt)` gives the cache holding the longest prefix of `prompt` when the prompt goes
    on with most of what that cache holds (the same conversation: a new turn, a regenerated
    or edited reply); otherwise (another conversation) a cache of its own, new while there are
    fewer than `max_caches`, else the least recently used one. `trim()` then drops the least
    recently used caches while the memory they hold (positions ever written times bytes per
    position: untouched pages of the preallocated buffers cost nothing) exceeds
    `budget_bytes`; the cache in use is always kept.
    """

    def __init__(self, new_cache: Callable[[], TokenCache], max_caches: int = 3,
                 budget_bytes: int = 256 << 20):
        self.new_cache = new_cache
        self.max_caches = max_caches
        self.budget_bytes = budget_bytes
        self.caches: list[TokenCache] = []  # most recently used first

    @staticmethod
    def resident_bytes(cache: TokenCache) -> int:
        return cache.high_water * cache.bytes_per_token

    def take(self, prompt: Sequence[int]) -> TokenCache:
        prompt = [int(i) for i in prompt]
        best = max(self.caches, key=lambda c: c.reusable(prompt), default=None)
        empty = next((c for c in self.caches if not c.ids), None)
        shared = best.reusable(prompt) if best is not None else 0
        if best is not None and best.ids and 2 * shared >= len(best.ids):
            chosen = best  # llama.cpp's server picks a slot at >= 50% similarity the same way
        else:
            # another conversation (or the same one changed early, e.g. its system prompt):
            # keep `best` for going back to it, and copy what the prompt shares with it
            if empty is not None:
                chosen = empty
            elif len(self.caches) < self.max_caches:
                chosen = self.new_cache()
            else:
                chosen = self.caches[-1]
            if best is not None and chosen is not best and shared > chosen.reusable(prompt):
                chosen.reset()
                chosen.copy_prefix(best, shared)
        self.caches = [chosen] + [c for c in self.caches if c is not chosen]
        return chosen

    def trim(self) -> None:
        while (len(self.caches) > 1
               and sum(self.resident_bytes(c) for c in self.caches) > self.budget_bytes):
            self.caches.pop()

    def reset(self) -> None:
        """Forget what every cache holds (their buffers are kept)."""
        for c in self.caches:
            c.reset()
