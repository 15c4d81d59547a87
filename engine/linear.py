"""Weights behind a call: `Linear` (y = x W^T + b) and `Embedding` (row lookup).

Model code only ever does `lin(x)` and `emb(ids)`, so the storage behind them can change
without touching any model file. `Linear.from_gguf` picks the storage:

* quantized / F16 / BF16 weights, compiled kernels available: a `QuantLinear` that keeps the
  packed GGUF blocks (about the file's size in RAM) and multiplies them with fused kernels;
* F32 weights, no kernels (LLMLENS_NO_KERNELS=1, no compiler, non-AVX2 CPU), or exact mode
  (LLMLENS_EXACT_WEIGHTS=1, `load_model(..., exact=True)`, `exact_weights()`): a dense
  float32 `Linear` dequantized once at load time, whose products are exact float32 ones.

Copying a tensor out of the memory-mapped file faults its pages into this process, and a
touched file page counts in RSS as much as an owned one; `_release` drops the mapping of the
bytes just copied, so the weights are held once, not twice.

`Embedding` never dequantizes the whole table: each lookup decodes just the rows it needs,
from the file or from the packed output head it is tied to (a 262k x 640 vocabulary is
670 MB as float32, 178 MB as Q8_0).
"""

from __future__ import annotations

import contextlib
import contextvars
import mmap
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from engine.gguf.dequant import dequantize, dequantize_row_ids
from engine.gguf.reader import GGUFFile, TensorInfo

__all__ = ["Linear", "Embedding", "exact_weights", "exact_mode", "release_pages"]

_F32 = 0  # ggml type id of float32
_exact: contextvars.ContextVar[bool | None] = contextvars.ContextVar("llmlens_exact", default=None)


def exact_mode() -> bool:
    """Whether weights load as exact float32 (`exact_weights()` context, else the env switch)."""
    forced = _exact.get()
    if forced is not None:
        return forced
    return os.environ.get("LLMLENS_EXACT_WEIGHTS", "") not in ("", "0")


@contextlib.contextmanager
def exact_weights(on: bool = True) -> Iterator[None]:
    """Within this block, `Linear.from_gguf` dequantizes to float32 (on=True) or packs (False)."""
    token = _exact.set(on)
    try:
        yield
    finally:
        _exact.reset(token)


def release_pages(gf: GGUFFile, info: TensorInfo) -> None:
    """Drop this process's mapping of a tensor's file pages once its bytes have been copied.

    The page cache keeps them (a later read refaults from memory, not disk); only RSS shrinks.
    Best effort: skipped where madvise or the reader's map is unavailable.
    """
    mm = getattr(gf, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = info.offset - info.offset % mmap.PAGESIZE
    length = min(info.offset + info.n_bytes, len(mm)) - start
    try:
        mm.madvise(mmap.MADV_DONTNEED, start, length)
    except (OSError, ValueError):
        pass


def _packable(info: TensorInfo) -> bool:
    if info.ggml_type == _F32 or exact_mode():
        return False
    from engine import kernels  # noqa: PLC0415  (compiles on first use; cached afterwards)

    return kernels.available()


class Linear:
    """A dense float32 linear map; x [T, in] -> [T, out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight.contiguous()  # [out, in]
        self.bias = bias  # [out] or None

    @classmethod
    def from_gguf(cls, gf: GGUFFile, info: TensorInfo, bias: TensorInfo | None = None):
        """Load `info` (a [out, in] matrix) and an optional [out] bias from an open GGUF file.

        Returns a packed `QuantLinear` for quantized/F16/BF16 weights when the kernels are
        available and exact mode is off, else a float32 `Linear` (same interface).
        """
        if len(info.shape) != 2:
            raise ValueError(f"{info.name}: expected a 2-D weight, got shape {info.shape}")
        if _packable(info):
            from engine.quant_linear import QuantLinear  # noqa: PLC0415

            lin = QuantLinear.from_gguf(gf, info, bias)
        else:
            lin = cls(dequantize(gf, info), dequantize(gf, bias) if bias is not None else None)
        release_pages(gf, info)
        return lin

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def nbytes(self) -> int:
        n = self.weight.numel() * self.weight.element_size()
        return n + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding lookup: ids [...] -> [..., in] float32."""
        return self.weight[torch.as_tensor(ids, dtype=torch.int64)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Embedding:
    """Token embedding table [n_vocab, dim], looked up row by row.

    Rows come from `table.rows(ids)` when the table is already loaded as the (tied) output
    head, else straight from the memory-mapped file.
    """

    def __init__(self, gf: GGUFFile, info: TensorInfo, table=None):
        if len(info.shape) != 2:
            raise ValueError(f"{info.name}: expected a 2-D table, got shape {info.shape}")
        self.gf = gf
        self.info = info
        self.table = table  # Linear / QuantLinear over the same tensor, or None

    @property
    def n_vocab(self) -> int:
        return self.info.shape[0]

    @property
    def dim(self) -> int:
        return self.info.shape[1]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] int64 -> [T, dim] float32 (decodes only those rows)."""
        if self.table is not None:
            return self.table.rows(ids)
        return dequantize_row_ids(self.gf, self.info, ids)
