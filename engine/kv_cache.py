"""A static KV cache: per-layer key/value buffers preallocated for the whole context.

gpt-fast style: `update(layer, start_pos, k, v)` writes the new positions in place and returns
views of everything cached so far, so a decode step allocates nothing here.
"""

from __future__ import annotations

import torch

from engine.errors import ContextOverflowError


class KVCache:
    """keys[layer]: [n_kv_heads, n_ctx, head_dim_k]; values[layer]: [n_kv_heads, n_ctx, head_dim_v]."""

    def __init__(self, n_layers: int, n_kv_heads: int, n_ctx: int, head_dim_k: int,
                 head_dim_v: int | None = None, dtype: torch.dtype = torch.float32):
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

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [n_kv_heads, T, d] at positions [start_pos, start_pos + T).

        Returns views [n_kv_heads, start_pos + T, d] of all keys/values up to the new ones.
        """
        end = start_pos + k.shape[1]
        if end > self.n_ctx:
            raise ContextOverflowError(f"position {end - 1} is past the end of the context "
                                       f"({self.n_ctx} tokens)")
        kbuf, vbuf = self.keys[layer], self.values[layer]
        kbuf[:, start_pos:end] = k
        vbuf[:, start_pos:end] = v
        if layer == len(self.keys) - 1:
            self.n_filled = end
        return kbuf[:, :end], vbuf[:, :end]

    def reset(self) -> None:
        self.n_filled = 0  # stale entries beyond n_filled are never read
