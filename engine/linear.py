"""Weights behind a call: `Linear` (y = x W^T + b) and `Embedding` (row lookup).

Model code only ever does `lin(x)` and `emb(ids)`, so the storage behind them can change
without touching any model file. `Linear.from_gguf` picks the storage:

* quantized / F16 / BF16 weights, compiled kernels available: a `QuantLinear` that keeps the
  packed GGUF blocks (about the file's size in RAM) and multiplies them with fused kernels;
* no kernels (LLMLENS_NO_KERNELS=1, no compiler, non-AVX2 CPU): Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/
  Q4_K/Q5_K/Q6_K/MXFP4 weights become an `engine.packed_fallback.Int4Linear` (PyTorch's int4
  matmul, about 1.1-1.7x their file bytes), other types a dense float32 `Linear` as below;
* F32 weights, other types without kernels, or exact mode
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
from engine.weight_memory import arena_for

__all__ = ["Linear", "Embedding", "load_stacked", "copy_out", "release_all", "exact_weights", "exact_mode",
           "release_pages"]

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


def release_pages(gf: GGUFFile, info: TensorInfo, start: int = 0, n_bytes: int | None = None
                  ) -> None:
    """Drop this process's mapping of a tensor's file pages (bytes [start, start + n_bytes) of
    it, default all; the range may extend past the tensor, it is clipped to the file) once
    they have been copied.

    The page cache keeps them (a later read refaults from memory, not disk); only RSS shrinks.
    Best effort: skipped where madvise or the reader's map is unavailable.
    """
    mm = getattr(gf, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    begin = max(0, info.offset + start)  # a range may reach past the tensor (large folios)
    end = info.offset + (info.n_bytes if n_bytes is None else start + n_bytes)
    start = begin - begin % mmap.PAGESIZE
    length = min(end, len(mm)) - start
    if length <= 0:
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED, start, length)
    except (OSError, ValueError):
        pass


def release_all(gf: GGUFFile) -> None:
    """Drop every mapped page of the file once a model is built from it: the header is parsed
    into gf.metadata, weights were copied, and reads of small tensors faulted in ~64 KB of
    neighbours each (kernel fault-around). Whatever still reads the map (untied embedding
    rows, zero-copy MoE experts) refaults from the page cache."""
    mm = getattr(gf, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):
        pass


_COPY_CHUNK = 8 << 20  # bytes copied out of the map between two page releases


def copy_out(gf: GGUFFile, infos: list[TensorInfo]) -> torch.Tensor:
    """The bytes of `infos`, concatenated, in one owned uint8 tensor.

    Copied a chunk at a time, each chunk's file pages released right after: a tensor never
    sits in RSS twice (owned copy + mapped pages), so the load peak is the model plus 8 MB.
    The copy lives in huge pages where the OS has them (engine/weight_memory.py).
    """
    n_bytes = sum(i.n_bytes for i in infos)
    arena = arena_for(gf)
    out = arena.empty(n_bytes) if arena is not None else torch.empty(n_bytes, dtype=torch.uint8)
    dst = out.numpy()
    pos = 0
    for info in infos:
        src = gf.raw(info)
        for a in range(0, info.n_bytes, _COPY_CHUNK):
            b = min(info.n_bytes, a + _COPY_CHUNK)
            dst[pos + a:pos + b] = src[a:b]
            release_pages(gf, info, a, b - a)
        pos += info.n_bytes
    return out


def _packable(info: TensorInfo) -> bool:
    if info.ggml_type == _F32 or exact_mode():
        return False
    from engine import kernels  # noqa: PLC0415  (compiles on first use; cached afterwards)

    if kernels.available():
        return True
    from engine.packed_fallback import int4_supported  # noqa: PLC0415

    return int4_supported(info.ggml_type)  # no kernels: PyTorch's int4 matmul, else float32


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
        return load_stacked(gf, [info], [bias])[0]

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


def load_stacked(gf: GGUFFile, infos: list[TensorInfo], biases: list[TensorInfo | None]
                 ) -> list:
    """Linears for `infos` ([out_i, in] matrices), as `Linear.from_gguf` would build them.

    Consecutive packable tensors of one ggml type and input size (q/k/v, gate/up) are copied
    into one buffer and become consecutive views of it, so `engine.layers.FusedLinear`
    multiplies them in one call without a copy.
    """
    for info in infos:
        if len(info.shape) != 2:
            raise ValueError(f"{info.name}: expected a 2-D weight, got shape {info.shape}")

    def key(info: TensorInfo) -> tuple | None:
        return (info.ggml_type, info.shape[1]) if _packable(info) else None

    def bias_of(b: TensorInfo | None) -> torch.Tensor | None:
        return dequantize(gf, b) if b is not None else None

    out: list = []
    i = 0
    while i < len(infos):
        k = key(infos[i])
        if k is None:
            out.append(Linear(dequantize(gf, infos[i]), bias_of(biases[i])))
            release_pages(gf, infos[i])
            i += 1
            continue
        j = i + 1
        while j < len(infos) and key(infos[j]) == k:
            j += 1
        from engine import kernels  # noqa: PLC0415
        from engine.quant_linear import QuantLinear  # noqa: PLC0415

        group = infos[i:j]
        if not kernels.available():
            from engine.packed_fallback import make_fallback_linear  # noqa: PLC0415

            # re-laid for PyTorch's int4 matmul straight from the map, a chunk at a time
            for info, b in zip(group, biases[i:j]):
                raw = gf.raw(info).reshape(info.shape[0], -1)  # [rows, row_bytes] mapped
                out.append(make_fallback_linear(
                    raw, info.ggml_type, info.shape[1], bias_of(b), name=info.name,
                    release=lambda a, n, info=info: release_pages(gf, info, a, n)))
            i = j
            continue
        packed = copy_out(gf, group).view(sum(g.shape[0] for g in group), -1)  # [rows, row_bytes]
        row = 0
        for info, b in zip(group, biases[i:j]):
            n = info.shape[0]
            out.append(QuantLinear(packed[row:row + n], info.ggml_type, info.shape[1], bias_of(b),
                                   name=info.name))
            row += n
        i = j
    return out


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
