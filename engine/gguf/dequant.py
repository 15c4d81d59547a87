"""Dequantize GGUF tensors to float32 torch tensors, bit for bit like gguf-py.

ggml stores a tensor as rows of ne[0] values; each row is a run of fixed-size blocks
(`GGML_QUANT_SIZES[type] == (values per block, bytes per block)`), so a whole tensor is
just `[n_blocks, type_size]` bytes and the i-th block decodes to values
`[i * block_size, (i + 1) * block_size)` of the flattened tensor.

The common types (float, Q4_0..Q8_0, Q2_K..Q6_K, MXFP4) are decoded here with vectorised torch ops
that mirror gguf-py's numpy code step by step, including the float32 order of operations
(`d * sc` first, then `* q`, then `- dmin * m`), so results match `gguf.quants.dequantize`
bit for bit. Every other type gguf-py knows (IQ*, TQ*, NVFP4, ...) goes through gguf-py itself.

Work is done in chunks of blocks: the bytes of one chunk are copied out of the read-only
memory map into a reusable torch buffer (no non-writable-buffer warnings, no full copy of
the tensor), decoded while the intermediates are still in cache, and written into the
output. The same chunking gives `dequantize_chunks` (progress, cancellation) and
`dequantize_rows` (only the bytes of the requested rows are touched).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from gguf import quants as gguf_quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from engine.errors import UnsupportedTypeError
from engine.gguf.reader import GGUFFile, TensorInfo, ggml_type_name

__all__ = [
    "QUANT_SIZES", "block_layout", "row_bytes", "is_supported", "has_fast_path",
    "dequantize", "dequantize_raw", "dequantize_rows", "dequantize_row_ids",
    "dequantize_chunks", "n_rows",
]

QK_K = 256
# ggml type id -> (values per block, bytes per block), from gguf-py's table.
QUANT_SIZES: dict[int, tuple[int, int]] = {int(t): bs for t, bs in GGML_QUANT_SIZES.items()}

# Values decoded per inner chunk: 512K float32 = 2 MiB of output, so the few intermediates of
# one chunk stay in cache and per-op overhead stays small.
_CHUNK_VALUES = 1 << 19
# Values per chunk handed to `dequantize_chunks` callers by default (16 MiB of float32).
_DEFAULT_CHUNK_VALUES = 1 << 22

# A kernel decodes (blocks u8 [n, type_size], out f32 [n, block_size]) in place.
Kernel = Callable[[torch.Tensor, torch.Tensor], None]


def block_layout(ggml_type: int) -> tuple[int, int]:
    """(values per block, bytes per block) for a ggml type; UnsupportedTypeError if unknown."""
    try:
        return QUANT_SIZES[int(ggml_type)]
    except KeyError:
        raise UnsupportedTypeError(
            f"unknown ggml type {ggml_type} (gguf-py knows {len(QUANT_SIZES)} types, "
            f"up to id {max(QUANT_SIZES)}); the file may need a newer llama.cpp") from None


def row_bytes(ggml_type: int, row_len: int) -> int:
    """Bytes taken by one row of `row_len` values."""
    block_size, type_size = block_layout(ggml_type)
    if row_len % block_size:
        raise ValueError(f"row length {row_len} is not a multiple of the "
                         f"{ggml_type_name(ggml_type)} block size {block_size}")
    return row_len // block_size * type_size


# -- kernels ----------------------------------------------------------------------------------
# Each kernel decodes blocks [n, type_size] (uint8, contiguous) into out [n, block_size] (f32).
# Comments give the byte layout of one block, as in ggml-common.h.

_SH_0_2_4_6 = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_SH_BITS = torch.arange(8, dtype=torch.uint8)


def _f16(b: torch.Tensor, at: int) -> torch.Tensor:
    """The f16 stored at byte `at` of each block, as float32 [n, 1]."""
    return b[:, at:at + 2].contiguous().view(torch.float16).float()


def split_nibbles(q: torch.Tensor, dim: int) -> torch.Tensor:
    """uint8 q -> its low nibbles, then its high ones, stacked at `dim`. Scalar shifts: torch
    vectorises them for uint8, not a broadcast tensor of shift counts (3-4x slower)."""
    return torch.stack((q & 0x0F, q >> 4), dim=dim)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, m] bytes -> [n, 2, m]: low nibbles of all m bytes, then high nibbles."""
    return split_nibbles(qs, 1)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """[n, 4] bytes of a little-endian uint32 -> its 32 bits [n, 32], bit 0 first."""
    return ((qh.unsqueeze(-1) >> _SH_BITS) & 1).reshape(qh.shape[0], 32)


def _plain(dtype: torch.dtype) -> Kernel:
    def kernel(b: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(b.view(dtype))  # [n, 1] -> float32 (exact for f16, bf16, small ints)
    return kernel


def _bf16(b: torch.Tensor, out: torch.Tensor) -> None:
    # Same as gguf-py: the 16 bits become the top half of a float32 (keeps NaN payloads).
    out.view(torch.int32).copy_(b.view(torch.int16).to(torch.int32) << 16)


def _q4_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | qs: 16 bytes, value j < 16 in the low nibble of qs[j], j >= 16 in the high one
    n = b.shape[0]
    d = _f16(b, 0)                                               # [n, 1]
    q = _nibbles(b[:, 2:]).reshape(n, 32).view(torch.int8) - 8   # [n, 32]
    torch.mul(d, q.float(), out=out)


def _q4_1(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | m: f16 | qs: 16 bytes (as Q4_0, unsigned)
    n = b.shape[0]
    d, m = _f16(b, 0), _f16(b, 2)                                # [n, 1] each
    q = _nibbles(b[:, 4:]).reshape(n, 32).float()                # [n, 32]
    torch.mul(d, q, out=out)
    out.add_(m)


def _q5_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | qh: uint32, bit j = 5th bit of value j | qs: 16 bytes of low nibbles (as Q4_0)
    n = b.shape[0]
    d = _f16(b, 0)                                               # [n, 1]
    ql = _nibbles(b[:, 6:]).reshape(n, 32)                       # [n, 32]
    q = (ql | (_bits32(b[:, 2:6]) << 4)).view(torch.int8) - 16
    torch.mul(d, q.float(), out=out)


def _q5_1(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | m: f16 | qh: uint32 | qs: 16 bytes (as Q5_0, unsigned)
    n = b.shape[0]
    d, m = _f16(b, 0), _f16(b, 2)                                # [n, 1] each
    ql = _nibbles(b[:, 8:]).reshape(n, 32)                       # [n, 32]
    q = (ql | (_bits32(b[:, 4:8]) << 4)).float()
    torch.mul(d, q, out=out)
    out.add_(m)


def _q8_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | qs: 32 x int8
    d = _f16(b, 0)                                               # [n, 1]
    torch.mul(b[:, 2:].view(torch.int8).float(), d, out=out)     # [n, 32]


def _q2_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # scales: 16 bytes (low nibble scale, high nibble min, one per 16 values) |
    # qs: 64 bytes of 2-bit values | d: f16 | dmin: f16
    n = b.shape[0]
    sc = b[:, :16]
    d, dmin = _f16(b, 80), _f16(b, 82)                           # [n, 1] each
    dl = (d * (sc & 0x0F).float()).view(n, 16, 1)
    ml = (dmin * (sc >> 4).float()).view(n, 16, 1)
    qs = b[:, 16:80].reshape(n, 2, 1, 32) >> _SH_0_2_4_6.view(1, 1, 4, 1)
    q = (qs & 3).reshape(n, 16, 16).float()                      # [n, 16 groups, 16]
    o = out.view(n, 16, 16)
    torch.mul(dl, q, out=o)
    o.sub_(ml)


def _q3_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # hmask: 32 bytes (3rd bit, inverted) | qs: 64 bytes of 2-bit values |
    # scales: 12 bytes of 6-bit scales | d: f16
    n = b.shape[0]
    d = _f16(b, 108)                                             # [n, 1]
    ls = _nibbles(b[:, 96:104]).reshape(n, 16)
    hs = (b[:, 104:108].reshape(n, 1, 4) >> _SH_0_2_4_6.view(1, 4, 1)).reshape(n, 16)
    scales = ((ls | ((hs & 3) << 4)).view(torch.int8) - 32).float()
    dl = (d * scales).view(n, 16, 1)
    ql = (b[:, 32:96].reshape(n, 2, 1, 32) >> _SH_0_2_4_6.view(1, 1, 4, 1)).reshape(n, 16, 16) & 3
    qh = (b[:, :32].reshape(n, 1, 1, 32) >> _SH_BITS.view(1, 1, 8, 1)).reshape(n, 16, 16) & 1
    q = ql.view(torch.int8) - ((qh ^ 1) << 2).view(torch.int8)  # [n, 16, 16]
    torch.mul(dl, q.float(), out=out.view(n, 16, 16))


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes [n, 12] -> eight 6-bit scales and eight 6-bit mins, each [n, 8] uint8."""
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def _nibbles_k(qs: torch.Tensor, n: int) -> torch.Tensor:
    """K-quant nibble order: each 32-byte run gives 32 low nibbles then 32 high ones."""
    return split_nibbles(qs.reshape(n, -1, 32), 2).reshape(n, -1, 32)


def _q4_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | dmin: f16 | scales: 12 bytes | qs: 128 bytes, 4 x (32 low nibbles, 32 high)
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)                             # [n, 1] each
    sc, mn = _scale_min_k4(b[:, 4:16])
    dl = (d * sc.float()).view(n, 8, 1)
    ml = (dmin * mn.float()).view(n, 8, 1)
    q = _nibbles_k(b[:, 16:144], n).float()                      # [n, 8 groups, 32]
    o = out.view(n, 8, 32)
    torch.mul(dl, q, out=o)
    o.sub_(ml)


def _q5_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16 | dmin: f16 | scales: 12 bytes | qh: 32 bytes (bit i -> group i) | qs: 128 bytes
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)                             # [n, 1] each
    sc, mn = _scale_min_k4(b[:, 4:16])
    dl = (d * sc.float()).view(n, 8, 1)
    ml = (dmin * mn.float()).view(n, 8, 1)
    ql = _nibbles_k(b[:, 48:176], n)                             # [n, 8, 32]
    qh = (b[:, 16:48].reshape(n, 1, 1, 32) >> _SH_BITS.view(1, 1, 8, 1)).reshape(n, 8, 32) & 1
    q = (ql | (qh << 4)).float()
    o = out.view(n, 8, 32)
    torch.mul(dl, q, out=o)
    o.sub_(ml)


def _q6_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # ql: 128 bytes (low 4 bits) | qh: 64 bytes (high 2 bits) | scales: 16 x int8 | d: f16
    n = b.shape[0]
    d = _f16(b, 208)                                             # [n, 1]
    dl = (d * b[:, 192:208].view(torch.int8).float()).view(n, 16, 1)
    ql = split_nibbles(b[:, :128].reshape(n, 2, 64), 2).reshape(n, 8, 32)
    qh = (b[:, 128:192].reshape(n, 2, 1, 32) >> _SH_0_2_4_6.view(1, 1, 4, 1)) & 3
    qh = qh.reshape(n, 8, 32)
    q = ((ql | (qh << 4)).view(torch.int8) - 32).view(n, 16, 16)
    torch.mul(dl, q.float(), out=out.view(n, 16, 16))


# MXFP4's E2M1 values, doubled (gguf-py's `kvalues`); the block scale is halved to match.
_E2M1_X2 = torch.tensor([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12],
                        dtype=torch.float32)
# byte -> (value of its low nibble, value of its high nibble): one gather per byte
_E2M1_X2_PAIRS = torch.stack((_E2M1_X2.repeat(16), _E2M1_X2.repeat_interleave(16)), dim=1)
_E8M0_SUBNORMAL = torch.tensor(0x00200000, dtype=torch.int32)


def _mxfp4(b: torch.Tensor, out: torch.Tensor) -> None:
    # e: E8M0 exponent | qs: 16 bytes of 4-bit E2M1 codes, value j < 16 low nibble of qs[j],
    # j >= 16 high nibble (as Q4_0)
    n = b.shape[0]
    e = b[:, :1].to(torch.int32)                                 # [n, 1]
    # ggml_e8m0_to_fp32_half: 2^(e - 128) as float32 bits (subnormal for e < 2)
    bits = torch.where(e < 2, _E8M0_SUBNORMAL << e, (e - 1) << 23)
    d = bits.view(torch.float32).view(n, 1, 1)
    v = _E2M1_X2_PAIRS[b[:, 1:].long()]                          # [n, 16, 2] (low, high)
    torch.mul(d, v.transpose(1, 2), out=out.view(n, 2, 16))


_T = GGMLQuantizationType
_KERNELS: dict[int, Kernel] = {
    _T.F32: _plain(torch.float32), _T.F16: _plain(torch.float16), _T.BF16: _bf16,
    _T.F64: _plain(torch.float64), _T.I8: _plain(torch.int8), _T.I16: _plain(torch.int16),
    _T.I32: _plain(torch.int32), _T.I64: _plain(torch.int64),
    _T.Q4_0: _q4_0, _T.Q4_1: _q4_1, _T.Q5_0: _q5_0, _T.Q5_1: _q5_1, _T.Q8_0: _q8_0,
    _T.Q2_K: _q2_k, _T.Q3_K: _q3_k, _T.Q4_K: _q4_k, _T.Q5_K: _q5_k, _T.Q6_K: _q6_k,
    _T.MXFP4: _mxfp4,
}


def has_fast_path(ggml_type: int) -> bool:
    """True when the type is decoded by the torch kernels here (not by gguf-py's numpy)."""
    return int(ggml_type) in _KERNELS


def is_supported(ggml_type: int) -> bool:
    """True when `dequantize` can decode the type (ours or gguf-py's)."""
    t = int(ggml_type)
    if t in _KERNELS:
        return True
    return t in QUANT_SIZES and GGMLQuantizationType(t) in gguf_quants._type_traits


def _gguf_py_kernel(qtype: GGMLQuantizationType) -> Kernel:
    def kernel(b: torch.Tensor, out: torch.Tensor) -> None:
        # Inf/NaN from odd scales come from the data, not a bug; the torch kernels are silent too.
        with np.errstate(all="ignore"):
            # gguf-py works in groups of 16 rows; rows of 16 blocks make groups of 256 blocks,
            # its sweet spot (single blocks cost 3x in per-call overhead, huge groups miss cache).
            n = b.shape[0]
            k = next(k for k in (16, 8, 4, 2, 1) if n % k == 0)
            values = gguf_quants.dequantize(b.numpy().reshape(n // k, -1), qtype)
        out.copy_(torch.from_numpy(values).view(out.shape))
    return kernel


def _kernel(ggml_type: int) -> Kernel:
    t = int(ggml_type)
    block_layout(t)  # unknown id -> UnsupportedTypeError
    if t in _KERNELS:
        return _KERNELS[t]
    qtype = GGMLQuantizationType(t)
    if qtype in gguf_quants._type_traits:
        return _gguf_py_kernel(qtype)
    raise UnsupportedTypeError(f"cannot dequantize ggml type {qtype.name}: "
                               f"neither LLM Lens nor gguf-py implements it")


# -- driver -----------------------------------------------------------------------------------

def _decode_into(raw: np.ndarray, kernel: Kernel, block_size: int, type_size: int,
                 out: torch.Tensor) -> None:
    """Decode all blocks of `raw` (1-D uint8) into `out` (flat float32), chunk by chunk."""
    n_blocks = raw.size // type_size
    out_blocks = out.view(n_blocks, block_size)
    per_chunk = max(1, _CHUNK_VALUES // block_size)
    buf = torch.empty(min(per_chunk, n_blocks) * type_size, dtype=torch.uint8)
    buf_np = buf.numpy()
    for start in range(0, n_blocks, per_chunk):
        stop = min(start + per_chunk, n_blocks)
        nb = (stop - start) * type_size
        # Copying out of the read-only map gives torch a writable, cache-hot buffer.
        np.copyto(buf_np[:nb], raw[start * type_size:stop * type_size])
        kernel(buf[:nb].view(stop - start, type_size), out_blocks[start:stop])


def _as_bytes(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raw = raw.view(np.uint8)
    return raw.reshape(-1)


def dequantize_raw(raw: np.ndarray, ggml_type: int, shape: Sequence[int]) -> torch.Tensor:
    """Decode the bytes of a tensor of `shape` (PyTorch order) to a new float32 tensor."""
    raw = _as_bytes(raw)
    shape = tuple(int(s) for s in shape)
    block_size, type_size = block_layout(ggml_type)
    kernel = _kernel(ggml_type)
    n_values = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if shape and shape[-1] % block_size:
        raise ValueError(f"row length {shape[-1]} is not a multiple of the "
                         f"{ggml_type_name(ggml_type)} block size {block_size}")
    expected = n_values // block_size * type_size
    if raw.size != expected:
        raise ValueError(f"{ggml_type_name(ggml_type)} tensor of shape {list(shape)} needs "
                         f"{expected} bytes, got {raw.size}")
    out = torch.empty(shape, dtype=torch.float32)
    if n_values:
        _decode_into(raw, kernel, block_size, type_size, out.view(-1))
    return out


def dequantize(gf: GGUFFile, info: TensorInfo) -> torch.Tensor:
    """The whole tensor as float32, shape `info.shape`."""
    return dequantize_raw(gf.raw(info), info.ggml_type, info.shape)


def _rows_layout(info: TensorInfo) -> tuple[int, int, int]:
    """(rows, values per row, bytes per row); rows run along the flattened leading dims."""
    row_len = info.shape[-1]
    return info.n_elements // row_len, row_len, row_bytes(info.ggml_type, row_len)


def dequantize_rows(gf: GGUFFile, info: TensorInfo, start_row: int, n_rows: int) -> torch.Tensor:
    """Rows [start_row, start_row + n_rows) as float32 [n_rows, row_len], reading only their bytes.

    A row is one ggml row (`info.shape[-1]` values): for a 2-D tensor the rows of dim 0, for
    3-D/4-D tensors the rows of the leading dims flattened; a 1-D tensor is a single row.
    """
    total, row_len, rb = _rows_layout(info)
    if not (0 <= start_row and 0 <= n_rows and start_row + n_rows <= total):
        raise IndexError(f"rows {start_row}..{start_row + n_rows} out of range for "
                         f"{info.name!r} with {total} rows")
    raw = gf.raw(info)[start_row * rb:(start_row + n_rows) * rb]
    return dequantize_raw(raw, info.ggml_type, (n_rows, row_len))


def dequantize_row_ids(gf: GGUFFile, info: TensorInfo,
                       ids: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Rows `ids` (e.g. token embeddings) as float32 [len(ids), row_len], reading only those."""
    total, row_len, rb = _rows_layout(info)
    if isinstance(ids, torch.Tensor):
        ids = ids.cpu().numpy()
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= total):
        raise IndexError(f"row ids must be in [0, {total}) for {info.name!r}")
    rows = gf.raw(info).reshape(total, rb)[ids]  # fancy indexing copies just these rows
    return dequantize_raw(rows, info.ggml_type, (ids.size, row_len))


def dequantize_chunks(gf: GGUFFile, info: TensorInfo, rows_per_chunk: int | None = None
                      ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield `(start_row, rows)` with rows float32 [n, row_len], covering the tensor in order.

    For progress bars and cancellation on big tensors: the caller reports `start_row + n` out
    of `n_rows(info)` after each chunk and simply stops iterating to cancel.
    """
    total, row_len, _ = _rows_layout(info)
    if rows_per_chunk is None:
        rows_per_chunk = max(1, _DEFAULT_CHUNK_VALUES // row_len)
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be positive, got {rows_per_chunk}")
    for start in range(0, total, rows_per_chunk):
        n = min(rows_per_chunk, total - start)
        yield start, dequantize_rows(gf, info, start, n)


def n_rows(info: TensorInfo) -> int:
    """Number of ggml rows (`info.shape[-1]` values each) in a tensor."""
    return info.n_elements // info.shape[-1]
