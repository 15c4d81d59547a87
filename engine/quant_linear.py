"""`QuantLinear`: a linear map whose weight stays in GGUF's packed blocks in memory.

The weight is the tensor's raw bytes, one row of `in_features` values per output feature,
in a torch uint8 tensor `[out, row_bytes]` (a Q4_K_M model takes about its file size in RAM
instead of 4-8x that as float32). Two ways to multiply, picked per call by the token count:

* decode and short prompts (T <= kernel_max_t(type), 16 to 48): the fused kernel of `engine/kernels` reads each packed
  block once and multiplies it with integer dot products. Like llama.cpp, it first rounds
  each activation row to 8 bits per block — blocks of 32 (Q8_0: d = amax/127) for the
  legacy types, of 256 (Q8_K) for the k-quants — so results differ from the exact product
  by that rounding: each activation moves by at most amax_block/254, so an output moves by
  at most |W_r| |dx| <= sqrt(B)/254 |W_r| |x| (Cauchy-Schwarz, B = 32 or 256). Measured on
  Gemma 3 270M's weights with Gaussian x: |dy_r| <= 1e-3 |W_r| |x|, and the output vector's
  relative L2 error is ~0.5%, as in llama.cpp.
  Float weights (F32/F16/BF16) are multiplied in f32 without any rounding of x.
* longer prompts: row chunks of the weight (~CHUNK_BYTES of float32 each) are
  dequantized and multiplied with MKL GEMM; the decode cost is shared by all T tokens and
  the result is the exact float32 product.

Without the compiled kernels (no compiler, non-AVX2 CPU, LLMLENS_NO_KERNELS=1) both go
through the stock-op path: row chunks decoded by `engine.gguf.dequant.dequantize_raw`, then
matmul — exact float32 results, slower.

Plug in: `QuantLinear.from_gguf(gf, info, bias)` has the signature of `Linear.from_gguf`
and instances have `__call__`, `in_features`, `out_features`, `nbytes`.
"""

from __future__ import annotations

import threading

import torch

from engine import kernels
from engine.errors import UnsupportedTypeError
from engine.gguf.dequant import block_layout, dequantize_raw
from engine.gguf.reader import GGUFFile, TensorInfo, ggml_type_name
from engine.linear import copy_out

__all__ = ["QuantLinear", "supported", "GEMV_MAX_T", "KERNEL_MAX_T", "kernel_max_t", "CHUNK_BYTES"]

# Up to this many tokens every type takes the integer kernel; above it dequantize-then-GEMM can
# be faster, at a crossover that depends on the type: the fewer bits, the cheaper the kernel's
# unpacking and the dearer the decode to float. KERNEL_MAX_T holds the measured crossovers
# (default model's matrices, 1 thread, CPU time, tests/bench/kernel_crossover.py): AVX2 and
# AVX-512 VNNI (which makes the kernel ~10-25% cheaper).
GEMV_MAX_T = 16
KERNEL_MAX_T: dict[str, tuple[int, int]] = {  # type: (avx2, avx512-vnni)
    "Q8_0": (20, 28), "Q6_K": (24, 28), "Q3_K": (24, 28), "Q2_K": (24, 28),
    "Q4_0": (32, 40), "Q4_1": (32, 40), "Q5_0": (32, 40), "Q5_1": (32, 40), "MXFP4": (32, 40),
    "Q4_K": (32, 40), "Q5_K": (32, 40),
}


def kernel_max_t(type_name: str, isa: str | None) -> int:
    """The largest token count this type's products take the integer kernel for."""
    pair = KERNEL_MAX_T.get(type_name)
    if pair is None:
        return GEMV_MAX_T
    return pair[1] if isa == "avx512-vnni" else pair[0]
# float32 bytes of weight decoded per prefill chunk: big enough for GEMM efficiency, small
# enough to stay in L2/L3 and not to cost memory (a 262k-row head is never decoded whole).
CHUNK_BYTES = 2 << 20


_local = threading.local()


def _scratch(n_values: int) -> torch.Tensor:
    """A per-thread float32 buffer reused by the prefill chunks (a fresh one page-faults)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < n_values:
        buf = _local.buf = torch.empty(n_values, dtype=torch.float32)
    return buf


class QuantLinear:
    """y = x W^T (+ b) with W kept as packed GGUF blocks; x [T, in] f32 -> [T, out] f32."""

    def __init__(self, packed: torch.Tensor, ggml_type: int, in_features: int,
                 bias: torch.Tensor | None = None, name: str = "", threads: int | None = None):
        block_size, type_size = block_layout(ggml_type)
        if in_features % block_size:
            raise ValueError(f"{name or 'weight'}: {in_features} inputs is not a multiple of the "
                             f"{ggml_type_name(ggml_type)} block size {block_size}")
        row_bytes = in_features // block_size * type_size
        if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != row_bytes:
            raise ValueError(f"{name or 'weight'}: expected uint8 [out, {row_bytes}], got "
                             f"{packed.dtype} {list(packed.shape)}")
        self.packed = packed.contiguous()  # [out, row_bytes] uint8, ggml block layout
        self.ggml_type = int(ggml_type)
        self.type_name = ggml_type_name(ggml_type)
        self._in = in_features
        self.bias = bias  # [out] f32 or None
        self.name = name
        self.threads = threads  # None: torch.get_num_threads() at each call
        k = kernels.load()
        self._k = k if k is not None and self.ggml_type in k.supported_types() else None
        self._isa = kernels.isa() if self._k is not None else None

    @classmethod
    def from_gguf(cls, gf: GGUFFile, info: TensorInfo, bias: TensorInfo | None = None,
                  threads: int | None = None) -> "QuantLinear":
        """Copy the packed bytes of `info` (a [out, in] matrix) out of the file's memory map."""
        if len(info.shape) != 2:
            raise ValueError(f"{info.name}: expected a 2-D weight, got shape {info.shape}")
        out_f, in_f = info.shape
        packed = copy_out(gf, [info]).view(out_f, -1)  # [out, row_bytes], owned, as a model's
        b = dequantize_raw(gf.raw(bias), bias.ggml_type, bias.shape) if bias is not None else None
        return cls(packed, info.ggml_type, in_f, b, name=info.name, threads=threads)

    @classmethod
    def experts_from_gguf(cls, gf: GGUFFile, info: TensorInfo,
                          threads: int | None = None) -> list["QuantLinear"]:
        """A 3-D [n_expert, out, in] tensor as one QuantLinear per expert, sharing one buffer."""
        if len(info.shape) != 3:
            raise ValueError(f"{info.name}: expected a 3-D expert tensor, got shape {info.shape}")
        n_exp, out_f, in_f = info.shape
        packed = copy_out(gf, [info]).view(n_exp, out_f, -1)
        return [cls(packed[e], info.ggml_type, in_f, name=f"{info.name}[{e}]", threads=threads)
                for e in range(n_exp)]

    @classmethod
    def cat(cls, parts: list["QuantLinear"], name: str = "") -> "QuantLinear":
        """One QuantLinear stacking the rows of `parts` (e.g. gate and up, or q/k/v of one type),
        so one kernel call replaces several; split the output with `torch.split(y, sizes, -1)`."""
        first = parts[0]
        if any(p.ggml_type != first.ggml_type or p.in_features != first.in_features for p in parts):
            raise ValueError("QuantLinear.cat needs parts of one ggml type and input size")
        biases = [p.bias if p.bias is not None else torch.zeros(p.out_features) for p in parts]
        bias = torch.cat(biases) if any(p.bias is not None for p in parts) else None
        return cls(torch.cat([p.packed for p in parts]), first.ggml_type, first.in_features, bias,
                   name=name or "+".join(p.name for p in parts), threads=first.threads)

    @property
    def in_features(self) -> int:
        return self._in

    @property
    def out_features(self) -> int:
        return self.packed.shape[0]

    @property
    def nbytes(self) -> int:
        n = self.packed.numel()
        return n + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    @property
    def kernel_max_t(self) -> int:
        """Products of up to this many tokens take the integer kernel (0 without kernels)."""
        return kernel_max_t(self.type_name, self._isa) if self._k is not None else 0

    @property
    def uses_kernels(self) -> bool:
        return self._k is not None

    def _threads(self) -> int:
        return self.threads or torch.get_num_threads()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] float32."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self._in).to(torch.float32)  # [T, in]
        if self._k is not None and x2.shape[0] <= self.kernel_max_t:
            y = self._k.gemv(self.packed, self.ggml_type, x2.contiguous(), self._threads())
        else:
            y = self._chunked_matmul(x2)
        if self.bias is not None:
            y += self.bias
        return y.view(*lead, self.out_features)

    forward = __call__

    def dequantize_rows(self, start: int, count: int) -> torch.Tensor:
        """Rows [start, start + count) of W as float32 [count, in]."""
        if self._k is not None:
            return self._k.dequant_rows(self.packed, self.ggml_type, self._in, start, count,
                                        self._threads())
        raw = self.packed[start:start + count].numpy()
        return dequantize_raw(raw, self.ggml_type, (count, self._in))

    def dequantize(self) -> torch.Tensor:
        """The whole weight as float32 [out, in] (tests, inspection; costs 4 bytes a value)."""
        return self.dequantize_rows(0, self.out_features)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding lookup (get_rows): ids [...] int -> [..., in] float32, decoding only those rows."""
        ids = torch.as_tensor(ids, dtype=torch.int64)
        flat = ids.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.out_features):
            raise IndexError(f"{self.name or 'weight'}: row ids must be in [0, {self.out_features})")
        if self._k is not None:
            out = self._k.get_rows(self.packed, self.ggml_type, self._in, flat)
        else:
            raw = self.packed.index_select(0, flat).numpy()
            out = dequantize_raw(raw, self.ggml_type, (flat.numel(), self._in))
        return out.view(*ids.shape, self._in)

    def _chunked_matmul(self, x: torch.Tensor) -> torch.Tensor:
        # y[:, r0:r1] = x @ W[r0:r1]^T, one dequantized chunk of rows at a time
        T, out_f = x.shape[0], self.out_features
        y = torch.empty(T, out_f, dtype=torch.float32)
        step = max(1, CHUNK_BYTES // (4 * self._in))
        scratch = _scratch(min(step, out_f) * self._in) if self._k is not None else None
        for r0 in range(0, out_f, step):
            r1 = min(out_f, r0 + step)
            if scratch is not None:
                w = self._k.dequant_rows(self.packed, self.ggml_type, self._in, r0, r1 - r0,
                                         self._threads(), scratch)  # [r1 - r0, in]
            else:
                w = self.dequantize_rows(r0, r1 - r0)
            y[:, r0:r1] = x @ w.t()
        return y

    def __repr__(self) -> str:
        mode = "fused kernels" if self._k is not None else "dequantize+matmul"
        return (f"QuantLinear({self.name!r}, {self.type_name}, in={self._in}, "
                f"out={self.out_features}, {self.nbytes / 2**20:.1f} MiB, {mode})")


def supported(ggml_type: int) -> bool:
    """Whether QuantLinear can hold this type (kernels or the dequantize fallback)."""
    try:
        block_layout(ggml_type)
    except UnsupportedTypeError:
        return False
    return True
