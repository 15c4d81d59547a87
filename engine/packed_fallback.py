"""Packed weights without the fused kernels: GGUF blocks re-laid for PyTorch's int4 matmul.

Where `engine/kernels` cannot run (LLMLENS_NO_KERNELS=1, no compiler, a CPU without AVX2 such
as ARM64), a quantized weight would otherwise become float32 (4-8x the file). Here it stays
compact and is multiplied by `torch.ops.aten._weight_int4pack_mm_for_cpu`, PyTorch's own
4-bit-weight matmul (vectorised code for AVX2, AVX-512 and, through at::vec, ARM NEON).

Representation (`Int4Linear`). Every supported type is affine per group of 32 inputs (16
for Q6_K): w = s_g * c + m_g with an integer code c of `bits` bits (Q4_0: s = d, m = -8d, c the
nibble; Q8_0: c = q + 128, m = -128d; Q4_K: s = d*sc, m = -dmin*mn per sub-block; Q6_K: s =
d*sc, c = q + 32; MXFP4: c = 2*E2M1 + 12, s = 2^(e-128)). Codes of 4 bits are one int4 plane.
5- to 8-bit codes are split into two 4-bit digits c = 16*c1 + c0 stored side by side per group,
[c0 of the group, c1' of the group], with x fed as [x_g, 16 x_g], so one op group of 2g values
with one (scale, zero) gives

    w = s*(c0 - 8) + 16s*(c1' - 8) + 17z,   c1' = c1 + 8 - H/2 (H = 2^(bits-4)),
    17z = m + s(136 - 16(8 - H/2))

which is exactly the op's groupwise `(code - 8) * scale + zero`. Its scales and zeros are
bf16, so the product is not the exact float32 one (see "Accuracy"). Exact float32 values
(`rows` for a token embedding tied to the head, `dequantize_rows`, `dequantize`, and prompts
longer than INT4_MAX_T tokens, whose product decodes row chunks and uses GEMM) are decoded from
the file bytes themselves, read through the memory map and released again.

Memory per weight (held; the map adds nothing once released): 0.5 byte a plane + 4 bytes of
bf16 scale/zero per op group: Q4_0/Q4_K 0.625 B (file 0.5625), Q8_0 1.125 (1.0625), Q5_0/Q5_K
1.125 (0.69), Q6_K 1.25 (0.82), MXFP4 1.125 (0.53). Gemma 3 270M Q4_K_M: 280 MiB for a 241 MiB
file. Other types (Q2_K, Q3_K: 16-value groups of 2-3 bits the op cannot express; IQ*, TQ*,
F16, BF16) load as float32 as before.

Accuracy: activations are rounded to bf16 (relative u = 2^-8 each), scales and zeros to bf16,
accumulation is float32 and the output is rounded to bf16. Measured on random weights: relative
L2 error of an output vector 0.3-0.5%, about the 8-bit activation rounding of the fused
kernels; tests/test_packed_fallback.py bounds it per output.

Layout: the op's packed weight is [N, K/2] uint8 in blocks of 64 (AVX-512) or fewer rows
(AVX2, NEON, scalar) whose nibble order depends on the CPU build; it is only ever written by
the op's own packing function. Rows are padded to a multiple of 64 and packed 64-row chunks at
a time, which `_layout()` checks once on this build (else no int4 layout is used).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType

from engine.gguf.dequant import (_SH_0_2_4_6, _SH_BITS, _bits32, _nibbles_k, split_nibbles,
                                 _scale_min_k4, block_layout, dequantize_raw)
from engine.gguf.dequant import _nibbles as _nibbles_legacy
from engine.generate import trim_heap
from engine.gguf.reader import ggml_type_name

__all__ = ["Int4Linear", "int4_supported", "int4_bytes", "make_fallback_linear", "ROW_BLOCK",
           "INT4_MAX_T", "FAULT_AROUND"]

ROW_BLOCK = 64    # rows padded to, and packed in, multiples of this (the op's widest N block)
# Values converted per build step: bounds the float32/int32 temporaries of a load (~1 MB each,
# small enough for the allocator to reuse rather than to grow the heap).
_BUILD_VALUES = 1 << 18
# Above this many tokens (twice that for one-plane types) a product decodes row chunks of W
# exactly from the file and multiplies them with GEMM: the op's cost grows with every row of
# x, a decoded chunk serves all of them.
INT4_MAX_T = 128
# float32 values decoded per chunk of that path (2 MiB: stays in cache)
CHUNK_VALUES = 1 << 19
# Bytes a page fault may map around the faulting byte: fault-around maps 64 KB, and a file
# page cached in a large folio (Linux 6.x readahead, up to 2 MiB) is mapped whole: measured
# here, reading 2 embedding rows mapped 1 MiB, so a 512-token prompt left 9 MiB of the table in
# RSS with a 64 KB margin.
FAULT_AROUND = 2 << 20


Params = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Codes = Callable[[torch.Tensor], torch.Tensor]

# ----------------------------------------------------------------------------- per-type params

def _f16(h: torch.Tensor, at: int) -> torch.Tensor:
    """The f16 at byte `at` of each header [n, hdr] as float32 [n, 1]."""
    return h[:, at:at + 2].contiguous().view(torch.float16).float()


def _legacy(offset: int, with_min: bool) -> Params:
    def params(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = _f16(h, 0)                                       # [n, 1]
        m = _f16(h, 2) if with_min else d * -float(offset)
        return d, m
    return params


_E8M0_SUBNORMAL = 0x00200000


def _mxfp4_params(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # E8M0 exponent -> 2^(e - 128) (ggml_e8m0_to_fp32_half): the unit of the doubled E2M1 codes
    e = h[:, :1].to(torch.int32)                             # [n, 1]
    bits = torch.where(e < 2, torch.tensor(_E8M0_SUBNORMAL, dtype=torch.int32) << e,
                       (e - 1) << 23)
    s = bits.view(torch.float32)
    return s, s * -12.0


def _kquant_params(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # d, dmin f16 | 12 bytes of eight 6-bit scales and mins: sub-block j has s = d*sc_j,
    # m = -dmin*mn_j, the float32 values engine.gguf.dequant computes (bit for bit)
    d, dmin = _f16(h, 0), _f16(h, 2)                         # [n, 1] each
    sc, mn = _scale_min_k4(h[:, 4:16])                       # [n, 8] each
    return d * sc.float(), -(dmin * mn.float())


def _q6_k_params(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # 16 int8 scales | d f16 (bytes 192..210 of the block): s = d*sc_j per 16 values, q - 32
    s = _f16(h, 16) * h[:, :16].view(torch.int8).float()    # [n, 16]
    return s, s * -32.0


# -- codes: blocks uint8 [n, type_size] -> c uint8 [n, block_size] in value order, the integer
# each value is s * c + m of (the bit fields engine.gguf.dequant decodes, before any offset)

def _legacy_codes(qs_at: int, qh_at: int | None = None) -> Codes:
    def codes(b: torch.Tensor) -> torch.Tensor:
        n = b.shape[0]
        c = _nibbles_legacy(b[:, qs_at:]).reshape(n, 32)
        return c if qh_at is None else c | (_bits32(b[:, qh_at:qh_at + 4]) << 4)
    return codes


def _q8_0_codes(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:] ^ 0x80                                   # int8 q -> q + 128


def _q4_k_codes(b: torch.Tensor) -> torch.Tensor:
    return _nibbles_k(b[:, 16:144], b.shape[0]).reshape(b.shape[0], 256)


def _q5_k_codes(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    qh = (b[:, 16:48].reshape(n, 1, 1, 32) >> _SH_BITS.view(1, 1, 8, 1)).reshape(n, 8, 32) & 1
    return (_nibbles_k(b[:, 48:176], n) | (qh << 4)).reshape(n, 256)


def _q6_k_codes(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql = split_nibbles(b[:, :128].reshape(n, 2, 64), 2).reshape(n, 8, 32)
    qh = ((b[:, 128:192].reshape(n, 2, 1, 32) >> _SH_0_2_4_6.view(1, 1, 4, 1)) & 3).reshape(n, 8, 32)
    return (ql | (qh << 4)).reshape(n, 256)                  # q + 32


# E2M1 code -> doubled value + 12 (0..24): 0, .5, 1, 1.5, 2, 3, 4, 6 and their negatives
_MXFP4_CODE = torch.tensor([12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0],
                           dtype=torch.uint8)


def _mxfp4_codes(b: torch.Tensor) -> torch.Tensor:
    return _MXFP4_CODE[_nibbles_legacy(b[:, 1:]).reshape(b.shape[0], 32).long()]


@dataclass(frozen=True)
class _Spec:
    header: tuple[int, int]   # byte range of a block holding its scales (kept for exact rows)
    bits: int                 # code bits: 4 -> one int4 plane, 5..8 -> two
    group: int                # values sharing one (s, m)
    params: Params            # headers [n, hdr] -> float32 (s, m) [n, block/group] each
    codes: Codes              # blocks -> c, with w = s * c + m


_T = GGMLQuantizationType
_SPECS: dict[int, _Spec] = {int(k): v for k, v in {
    _T.Q4_0: _Spec((0, 2), 4, 32, _legacy(8, False), _legacy_codes(2)),       # d | nibbles
    _T.Q4_1: _Spec((0, 4), 4, 32, _legacy(0, True), _legacy_codes(4)),        # d, m | nibbles
    _T.Q5_0: _Spec((0, 2), 5, 32, _legacy(16, False), _legacy_codes(6, 2)),   # d | qh | nibbles
    _T.Q5_1: _Spec((0, 4), 5, 32, _legacy(0, True), _legacy_codes(8, 4)),     # d, m | qh | ..
    _T.Q8_0: _Spec((0, 2), 8, 32, _legacy(128, False), _q8_0_codes),          # d | 32 x int8
    _T.Q4_K: _Spec((0, 16), 4, 32, _kquant_params, _q4_k_codes),   # d, dmin, scales | qs
    _T.Q5_K: _Spec((0, 16), 5, 32, _kquant_params, _q5_k_codes),   # as Q4_K | qh | qs
    _T.Q6_K: _Spec((192, 210), 6, 16, _q6_k_params, _q6_k_codes),  # ql | qh | scales | d
    _T.MXFP4: _Spec((0, 1), 5, 32, _mxfp4_params, _mxfp4_codes),   # E8M0 e | E2M1 pairs
}.items()}


def int4_bytes(ggml_type: int, out_features: int, in_features: int) -> int:
    """Bytes an `Int4Linear` of this type and shape holds (its planes and bf16 scale/zero
    pairs; rows padded to ROW_BLOCK), for `estimate_memory`."""
    spec = _SPECS[int(ggml_type)]
    n_pad = -(-int(out_features) // ROW_BLOCK) * ROW_BLOCK
    n_planes = 1 if spec.bits <= 4 else 2
    return n_pad * n_planes * in_features // 2 + (in_features // spec.group) * n_pad * 2 * 2


def int4_supported(ggml_type: int) -> bool:
    """Whether `Int4Linear` can hold this type (else the caller keeps float32 or file bytes)."""
    return int(ggml_type) in _SPECS and _layout() is not None


# ----------------------------------------------------------------------------- op layout

def _pack(codes: torch.Tensor) -> torch.Tensor:
    """int32 codes [N, K] in [0, 16) -> the op's packed uint8 [N, K/2]."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)


@functools.lru_cache(maxsize=1)
def _layout() -> bool | None:
    """True when the op exists and packs each ROW_BLOCK rows on their own (so a weight can be
    packed a chunk of rows at a time), checked on random codes; None otherwise."""
    try:
        g = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 16, (2 * ROW_BLOCK, 64), dtype=torch.int32, generator=g)
        whole = _pack(codes)
        parts = torch.cat((_pack(codes[:ROW_BLOCK]), _pack(codes[ROW_BLOCK:])))
        return True if torch.equal(whole, parts) else None
    except (RuntimeError, AttributeError):
        return None


# ----------------------------------------------------------------------------- the linear

class Int4Linear:
    """y = x W^T (+ b) with W as int4 planes for `_weight_int4pack_mm_for_cpu`; x [T, in] f32
    -> [T, out] f32. Same interface as `QuantLinear` (`rows`, `dequantize_rows`, `nbytes`)."""

    uses_kernels = False

    def __init__(self, packed: torch.Tensor | np.ndarray, ggml_type: int, in_features: int,
                 bias: torch.Tensor | None = None, name: str = "",
                 release: Callable[[int, int], None] | None = None):
        """packed: the file's bytes [out, row_bytes] uint8, normally a view of the memory map.
        It is kept (not copied) as the source of exact rows, and read a chunk at a time;
        release(start, n_bytes), if given, drops this process's mapping of bytes once read
        (engine.linear.release_pages), so the map adds nothing to RSS; its range may reach
        FAULT_AROUND past either end of these bytes (start < 0), to be clipped to the map."""
        t = int(ggml_type)
        label = name or "weight"
        if t not in _SPECS or _layout() is None:
            raise ValueError(f"{label}: {ggml_type_name(t)} has no int4 layout here")
        spec = _SPECS[t]
        block_size, type_size = block_layout(t)
        row_bytes = in_features // block_size * type_size
        if in_features % block_size or len(packed.shape) != 2 or packed.shape[1] != row_bytes:
            raise ValueError(f"{label}: expected {ggml_type_name(t)} bytes [out, {row_bytes}] "
                             f"for {in_features} inputs, got {list(packed.shape)}")
        if isinstance(packed, torch.Tensor):
            packed = packed.numpy()
        self.ggml_type, self.type_name, self.name = t, ggml_type_name(t), name
        self._spec, self._type_size, self._row_bytes = spec, type_size, row_bytes
        self._source, self._release = packed, release          # [out, row_bytes] file bytes
        self._in, self._out = in_features, int(packed.shape[0])
        self.bias = bias  # [out] f32 or None
        self.n_planes = 1 if spec.bits <= 4 else 2
        if self.n_planes * spec.group not in (32, 64):
            raise ValueError(f"{label}: {self.type_name} groups of {spec.group} do not fit the op")
        # plane-1 digits are stored as c1 + off1 so that (code - 8) is centred on 0
        self._off1 = 8 - (1 << (spec.bits - 4)) // 2 if self.n_planes == 2 else 0
        n_pad = -(-self._out // ROW_BLOCK) * ROW_BLOCK
        self.planes = torch.zeros(n_pad, self.n_planes * in_features // 2, dtype=torch.uint8)
        self.scale_zero = torch.zeros(in_features // spec.group, n_pad, 2, dtype=torch.bfloat16)
        step = max(ROW_BLOCK, _BUILD_VALUES // in_features // ROW_BLOCK * ROW_BLOCK)
        for r0 in range(0, self._out, step):
            r1 = min(self._out, r0 + step)
            raw = np.array(packed[r0:r1])                     # [n, row_bytes], owned
            if release is not None:
                # from the previous chunk on: the kernel maps pages around a fault (64 KB
                # fault-around), so reading this chunk re-mapped the tail of the last one
                a = max(0, r0 - step)
                release(a * row_bytes, (r1 - a) * row_bytes)
            self._build(raw, r0, r1)
        if release is not None:
            release(-FAULT_AROUND, self._out * row_bytes + 2 * FAULT_AROUND)

    def _build(self, raw: np.ndarray, r0: int, r1: int) -> None:
        n, K, g = r1 - r0, self._in, self._spec.group
        blocks = torch.from_numpy(raw).view(-1, self._type_size)  # [n * blocks, type_size]
        c = self._spec.codes(blocks).view(n, K // g, g)       # uint8 codes
        s, m = self._params_of(blocks, n)                     # [n, K/g] each
        n_pad = -(-n // ROW_BLOCK) * ROW_BLOCK
        codes = torch.empty(n_pad, K // g, self.n_planes, g, dtype=torch.int32)
        codes[n:] = 0
        codes[:n, :, 0] = c & 15
        if self.n_planes == 2:
            codes[:n, :, 1] = (c >> 4) + self._off1
            # plane 1 sees 16x, so the op's zero z is applied 17 times: 17 z = m + s(136 - 16 off1)
            z = (m + s * (136.0 - 16.0 * self._off1)) / 17.0
        else:
            z = m + 8.0 * s
        n_rows = min(n_pad, self.planes.shape[0] - r0)
        self.planes[r0:r0 + n_rows] = _pack(codes.view(n_pad, -1))[:n_rows]
        self.scale_zero[:, r0:r1, 0] = s.t()
        self.scale_zero[:, r0:r1, 1] = z.t()

    def _params_of(self, blocks: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact float32 (s, m) of n rows of file blocks [n * blocks, type_size]: [n, in/g]."""
        h0, h1 = self._spec.header
        s, m = self._spec.params(blocks[:, h0:h1])            # [n * blocks, block/group]
        return s.reshape(n, -1), m.reshape(n, -1)

    def _params(self, r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact float32 (s, m) of rows [r0, r1), read from the file bytes: [n, in/g] each."""
        raw = torch.from_numpy(self._read(r0, r1)).view(-1, self._type_size)
        return self._params_of(raw, r1 - r0)

    def _read(self, r0: int, r1: int) -> np.ndarray:
        """An owned copy of the file bytes of rows [r0, r1), their mapped pages dropped."""
        raw = np.array(self._source[r0:r1])
        self._drop(r0, r1)
        return raw

    def _drop(self, r0: int, r1: int) -> None:
        self._drop_rows(np.array([r0]), r1 - r0)

    def _drop_rows(self, starts: np.ndarray, n: int = 1) -> None:
        # a fault maps the folio or 64 KB around the byte read (see FAULT_AROUND), which can
        # reach past this tensor: drop that neighbourhood of every run of n rows read, merged
        # into few ranges, or pages read around each chunk or row would add up in RSS
        if self._release is None or not len(starts):
            return
        rb = self._row_bytes
        lo = np.sort(starts).astype(np.int64) * rb - FAULT_AROUND   # [k] byte ranges
        hi = lo + n * rb + 2 * FAULT_AROUND
        new = np.flatnonzero(lo[1:] > hi[:-1]) + 1                   # where a gap starts
        for a, b in zip(lo[np.r_[0, new]], hi[np.r_[new - 1, len(hi) - 1]]):
            self._release(int(a), int(b - a))

    # -- interface shared with Linear / QuantLinear ------------------------------------------

    @property
    def in_features(self) -> int:
        return self._in

    @property
    def out_features(self) -> int:
        return self._out

    @property
    def nbytes(self) -> int:
        """Bytes held (the file bytes it decodes exact rows from are the map's, not counted)."""
        n = sum(t.numel() * t.element_size() for t in (self.planes, self.scale_zero))
        return n + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    def _max_t(self) -> int:
        # measured on Gemma 3 shapes (2 threads): at 128 rows (generate's prompt chunk) the op
        # still beats decode + GEMM, and it reads no file pages (no RSS)
        return INT4_MAX_T * (2 if self.n_planes == 1 else 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] float32."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self._in)                          # [T, in]
        if x2.shape[0] > self._max_t():
            y = self._chunked_matmul(x2.to(torch.float32))
        else:
            xb = x2.to(torch.bfloat16)
            if self.n_planes == 2:
                g = self._spec.group
                xg = xb.view(-1, self._in // g, 1, g)         # [T, groups, 1, g]
                xb = torch.cat((xg, xg * 16), dim=2).view(-1, 2 * self._in)  # [T, 2 in]
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                xb.contiguous(), self.planes, self.n_planes * self._spec.group,
                self.scale_zero)                              # [T, out padded] bf16
            y = y[:, :self._out].float()                      # [T, out]
        if self.bias is not None:
            y += self.bias
        return y.view(*lead, self._out)

    forward = __call__

    def _chunked_matmul(self, x: torch.Tensor) -> torch.Tensor:
        # y[:, r0:r1] = x @ W[r0:r1]^T with W decoded exactly a chunk of rows at a time: the
        # op redoes its dequantization every few rows of x, a GEMM shares one decode among all
        T = x.shape[0]
        y = torch.empty(T, self._out)
        step = max(ROW_BLOCK, CHUNK_VALUES // self._in // ROW_BLOCK * ROW_BLOCK)
        for r0 in range(0, self._out, step):
            r1 = min(self._out, r0 + step)
            torch.mm(x, self._decode(r0, r1).t(), out=y[:, r0:r1])
        return y

    def _decode(self, r0: int, r1: int) -> torch.Tensor:
        """Rows [r0, r1) as float32 [n, in], decoded from the file bytes (bit-exact)."""
        return dequantize_raw(self._read(r0, r1), self.ggml_type, (r1 - r0, self._in))

    def dequantize_rows(self, start: int, count: int) -> torch.Tensor:
        """Rows [start, start + count) of W as float32 [count, in], as the file decodes them."""
        if not (0 <= start and 0 <= count and start + count <= self._out):
            raise IndexError(f"rows {start}..{start + count} out of range for "
                             f"{self.name or 'weight'} with {self._out} rows")
        out = torch.empty(count, self._in)
        step = max(1, CHUNK_VALUES // self._in)
        for r0 in range(start, start + count, step):
            r1 = min(start + count, r0 + step)
            out[r0 - start:r1 - start] = self._decode(r0, r1)
        return out

    def dequantize(self) -> torch.Tensor:
        """The whole weight as float32 [out, in] (tests, inspection; costs 4 bytes a value)."""
        return self.dequantize_rows(0, self._out)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding lookup: ids [...] int -> [..., in] float32, decoding only those rows."""
        ids = torch.as_tensor(ids, dtype=torch.int64)
        flat = ids.reshape(-1).numpy()
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= self._out):
            raise IndexError(f"{self.name or 'weight'}: row ids must be in [0, {self._out})")
        raw = self._source[flat]                              # fancy indexing: a copy
        self._drop_rows(np.unique(flat))
        out = dequantize_raw(raw, self.ggml_type, (flat.size, self._in))
        return out.view(*ids.shape, self._in)

    def __repr__(self) -> str:
        return (f"Int4Linear({self.name!r}, {self.type_name} as {self.n_planes} int4 plane(s), "
                f"in={self._in}, out={self._out}, {self.nbytes / 2**20:.1f} MiB)")


def make_fallback_linear(packed: torch.Tensor | np.ndarray, ggml_type: int, in_features: int,
                         bias: torch.Tensor | None = None, name: str = "",
                         release: Callable[[int, int], None] | None = None):
    """The compact no-kernel linear for a weight's file bytes [out, row_bytes]: an `Int4Linear`
    when the type has an int4 layout and its values fit it, else a `QuantLinear` over a copy
    of the bytes (chunked dequantize + matmul: exact, slower)."""
    if int4_supported(ggml_type):
        try:
            lin = Int4Linear(packed, ggml_type, in_features, bias, name, release)
        except ValueError:
            pass  # values outside the affine form (NaN scales...): the exact byte path below
        else:
            # a build's temporaries (MBs of codes) are freed between the weights it allocates,
            # and glibc keeps such holes: ~15 MB of RSS on Gemma 3 270M without this
            trim_heap()
            return lin
    from engine.quant_linear import QuantLinear  # noqa: PLC0415

    owned = torch.from_numpy(np.array(packed, copy=True)) if not isinstance(
        packed, torch.Tensor) else packed
    return QuantLinear(owned, ggml_type, in_features, bias, name=name)
