"""Reference data for the standalone kernel test (tests/kernels/neon_selftest.cpp).

For every ggml type the kernels support: random weight blocks, activations, and what the
x86 kernels (engine.kernels.load(): dequant_rows, quantize_activations, gemv) compute from
them: the dequantized rows, the activations after the kernels' 8-bit rounding and the
products y = x_q @ W^T. Each is first checked against gguf-py and numpy (dequantization
bit-exact, activation rounding exact, products within 1e-5 * sum |W x_q|), so a broken x86
kernel cannot become the reference. Where the x86 kernels cannot load (an ARM machine), the
numpy values are written instead: the C++ test accepts either.

    python -m tests.kernels.make_reference OUT.bin

File layout (little-endian): b"LLNEONR1", int32 case count, then per case: int32 type, n,
rows, T, row_bytes; uint8 W [rows, row_bytes]; f32 x [T, n]; f32 x_q [T, n]; f32 deq
[rows, n]; f32 y [T, rows]; f32 scale [T, rows] = sum_i |W_ri x_q,ti| (the tolerance unit).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf.quants import dequantize as gguf_dequantize

MAGIC = b"LLNEONR1"
T = 8          # tokens: the C++ test multiplies the first 1, 2, 4 and 8 of them
ROWS = 4
RTOL = 1e-5    # as tests/test_kernels.py: |y - ref| <= RTOL * sum |W x_q|

FLOATS = [Q.F32, Q.F16, Q.BF16]
LEGACY = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.MXFP4]
KQUANTS = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
TYPES = FLOATS + LEGACY + KQUANTS
# byte offsets of the f16 scale fields (ggml-common.h); "mins" may be negative
F16_SCALES = {Q.Q4_0: [0], Q.Q4_1: [0], Q.Q5_0: [0], Q.Q5_1: [0], Q.Q8_0: [0],
              Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}
F16_MINS = {Q.Q4_1: [2], Q.Q5_1: [2]}


def row_length(t: Q) -> int:
    """Values per row: an odd float length (the vector loops' scalar tail), an odd count of
    32-blocks (the one-token kernels alternate two accumulators), three super-blocks."""
    return 523 if t in FLOATS else 352 if t in LEGACY else 768


def random_weight(t: Q, rng: np.random.Generator) -> np.ndarray:
    """GGUF bytes [ROWS, row_bytes]: random codes (every bit pattern) with sane scales."""
    n = row_length(t)
    if t == Q.F32:
        return rng.standard_normal((ROWS, n), dtype=np.float32).view(np.uint8)
    if t == Q.F16:
        return rng.standard_normal((ROWS, n)).astype(np.float16).view(np.uint8)
    if t == Q.BF16:
        f = rng.standard_normal((ROWS, n), dtype=np.float32).view(np.uint32)
        return (f >> 16).astype(np.uint16).view(np.uint8)
    bs, ts = GGML_QUANT_SIZES[t]
    b = rng.integers(0, 256, size=(ROWS, n // bs, ts), dtype=np.uint8)
    if t == Q.MXFP4:  # E8M0 exponents around 2^0, and the subnormal encodings 0 and 1
        e = rng.integers(110, 135, size=(ROWS, n // bs), dtype=np.uint8)
        e[0, :2] = [0, 1]
        b[..., 0] = e
    for off in F16_SCALES.get(t, []):
        d = rng.uniform(1e-3, 1e-2, size=(ROWS, n // bs)).astype(np.float16)
        b[..., off:off + 2] = d[..., None].view(np.uint8)
    for off in F16_MINS.get(t, []):
        m = rng.uniform(-2e-2, 2e-2, size=(ROWS, n // bs)).astype(np.float16)
        b[..., off:off + 2] = m[..., None].view(np.uint8)
    return b.reshape(ROWS, -1)


def random_x(n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((T, n), dtype=np.float32)
    x[0, :32] = 0.0       # an all-zero block: the amax == 0 branch
    x[1, 32:64] *= 1e4    # a block of large values
    return x


def round_activations(x: np.ndarray, t: Q) -> np.ndarray:
    """x as the kernels round it (blocks.h quantize_q8_0 / quantize_q8_K), in numpy f32 ops."""
    if t in FLOATS:
        return x.copy()
    block = 256 if t in KQUANTS else 32
    xb = x.reshape(T, -1, block)
    amax = np.abs(xb).max(-1, keepdims=True)
    inv = np.zeros_like(amax)
    np.divide(np.float32(127), amax, out=inv, where=amax > 0)
    q = np.clip(np.rint(xb * inv), -127, 127).astype(np.float32) + np.float32(0)  # no -0.0
    return (q * (amax / np.float32(127))).reshape(x.shape)


def make_case(t: Q, k, rng: np.random.Generator) -> dict[str, np.ndarray | int]:
    """One type's arrays; `k` is the loaded x86 kernel module, or None for numpy only."""
    n = row_length(t)
    w = random_weight(t, rng)
    x = random_x(n, rng)
    deq = gguf_dequantize(w, t).astype(np.float32).reshape(ROWS, n)  # [ROWS, n]
    xq = round_activations(x, t)                                      # [T, n]
    exact = xq.astype(np.float64) @ deq.astype(np.float64).T          # [T, ROWS]
    scale = np.abs(xq.astype(np.float64)) @ np.abs(deq.astype(np.float64)).T
    y = exact.astype(np.float32)
    if k is not None:
        import torch

        wt = torch.from_numpy(np.ascontiguousarray(w))
        kd = k.dequant_rows(wt, int(t), n, 0, ROWS, 1).numpy()
        assert np.array_equal(kd.view(np.uint32), deq.view(np.uint32)), f"{t.name}: x86 dequant != gguf-py"
        deq = kd
        if t not in FLOATS:
            kq = k.quantize_activations(torch.from_numpy(x), int(t)).numpy()
            assert np.array_equal(kq.view(np.uint32), xq.view(np.uint32)), \
                f"{t.name}: x86 activation rounding != numpy"
        y = k.gemv(wt, int(t), torch.from_numpy(x), 1).numpy()
        err = np.abs(y - exact)
        assert (err <= RTOL * scale).all(), f"{t.name}: x86 gemv off by {(err / scale).max():.2e} (relative)"
    return {"type": int(t), "n": n, "w": w, "x": x, "xq": xq, "deq": deq, "y": y,
            "scale": scale.astype(np.float32)}


def write_reference(path: Path, use_kernels: bool = True, seed: int = 0) -> str:
    """Write the reference file; returns where the references came from (for messages)."""
    k = None
    if use_kernels:
        from engine import kernels

        k = kernels.load()
    rng = np.random.default_rng(seed)
    cases = [make_case(t, k, rng) for t in TYPES]
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<i", len(cases)))
        for c in cases:
            w = c["w"]
            f.write(struct.pack("<5i", c["type"], c["n"], ROWS, T, w.shape[1]))
            for key in ("w", "x", "xq", "deq", "y", "scale"):
                f.write(np.ascontiguousarray(c[key]).tobytes())
    return "x86 kernels" if k is not None else "numpy (no x86 kernels here)"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.kernels.make_reference OUT.bin")
    print(f"references from {write_reference(Path(sys.argv[1]))}: {sys.argv[1]}")
