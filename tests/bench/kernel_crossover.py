"""Where the integer kernel stops beating dequantize + MKL GEMM, per type and instruction set.

    python tests/bench/kernel_crossover.py [MODEL]

Multiplies one matrix of each type of MODEL (default: the embedded Gemma 3 270M) by 8 to 96
tokens with 1 thread, both ways, and prints (dequantize + GEMM time) / (integer kernel time) for
every instruction set the CPU has: above 1 the kernel wins. Times are CPU time (minimum of 5),
not wall time, so a busy machine disturbs them less. The crossovers feed
`engine.quant_linear.KERNEL_MAX_T`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine import kernels  # noqa: E402
from engine.default_model import default_model_path  # noqa: E402
from engine.gguf.reader import GGUFFile  # noqa: E402
from engine.quant_linear import QuantLinear  # noqa: E402

TOKENS = (8, 16, 24, 32, 48, 64, 96)


def cpu_time(f: Callable[[], object], reps: int = 5) -> float:
    f()
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        f()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    torch.set_num_threads(1)
    k = kernels.load()
    if k is None:
        sys.exit(f"no fused kernels: {kernels.status()}")
    print(kernels.status())
    gf = GGUFFile(sys.argv[1] if len(sys.argv) > 1 else str(default_model_path()))
    one_per_type = {}
    for t in gf.tensors:
        if len(t.shape) == 2 and t.name.startswith("blk.") and t.type_name not in one_per_type:
            one_per_type[t.type_name] = t
    isas = kernels.isa_options()
    print(f"(dequantize + GEMM) / (integer kernel), per instruction set {'/'.join(isas)}:")
    for info in one_per_type.values():
        ql = QuantLinear.from_gguf(gf, info)
        if not ql.uses_kernels:
            continue
        cells = []
        for T in TOKENS:
            x = torch.randn(T, ql.in_features)
            gemm = cpu_time(lambda: ql._chunked_matmul(x))
            ratios = []
            for isa in isas:
                k.use_isa(isa)
                ratios.append(gemm / cpu_time(lambda: k.gemv(ql.packed, ql.ggml_type, x, 1)))
            cells.append(f"T{T} " + "/".join(f"{r:.2f}" for r in ratios))
        print(f"{info.name:28s} {ql.type_name:6s} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
