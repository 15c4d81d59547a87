"""Benchmark the fused GGUF GEMV kernels: µs per call and GB/s of packed weight bytes read.

    .venv/bin/python -m tests.bench.bench_gemv [--model PATH] [--repeat N] [--no-model] [--stream]

Part 1 times each kernel at the shapes of Gemma 3 270M (640x2048, 2048x640, the 262144x640
Q8_0 output head ...) with 1 and 2 threads, against torch's f32 `mv` on the dequantized
weight; these mostly fit in the caches, so they measure the kernels' compute rate. With
--stream, part 1b reads up to 0.5 GB of the model file's own weights once per pass, as a
decode step does, from the file mmap the loader uses and from an anonymous copy (the page
cache maps a file in 4 KiB pages, numpy backs a large copy with huge pages). On 2026-11-29's
Xeon VM this pass read 10.6 vs 16.7 GB/s on 2 threads, yet a DeepSeek-V2-Lite-shaped decode
step with its experts copied into memory was no faster in an interleaved A/B. Part 2 runs every 2-D weight of a real model
(default: the embedded Gemma 3 270M Q4_K_M) once through QuantLinear for one token, as a
decode step does, and reports the GEMV time per token and the tok/s ceiling it implies
(attention and norms not included).
Times are the minimum over repeats (the machine may be shared).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from engine import kernels
from engine.gguf.dequant import dequantize_raw

F16_FIELDS = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
              Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}

SHAPES = [  # (type, out, in)
    (Q.Q4_K, 640, 2048), (Q.Q6_K, 640, 2048), (Q.Q5_0, 2048, 640), (Q.Q8_0, 2048, 640),
    (Q.Q4_0, 2048, 640), (Q.Q4_K, 640, 1024), (Q.Q5_K, 640, 2048), (Q.Q3_K, 640, 2048),
    (Q.Q2_K, 640, 2048), (Q.Q8_0, 262144, 640),
]


def random_packed(t: Q, rows: int, n: int, rng: np.random.Generator) -> torch.Tensor:
    bs, ts = GGML_QUANT_SIZES[t]
    b = rng.integers(0, 256, size=(rows, n // bs, ts), dtype=np.uint8)
    for off in F16_FIELDS[t]:
        d = rng.uniform(1e-3, 1e-2, size=(rows, n // bs)).astype(np.float16)
        b[..., off:off + 2] = d[..., None].view(np.uint8)
    return torch.from_numpy(b.reshape(rows, -1))


def best_time(fn, repeat: int, min_seconds: float = 0.2) -> float:
    fn()  # warm-up
    best = float("inf")
    t_end = time.perf_counter() + min_seconds
    i = 0
    while i < repeat or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        i += 1
    return best


def bench_shapes(k, repeat: int) -> None:
    rng = np.random.default_rng(0)
    print(f"{'type':6} {'out x in':>13} {'MB':>6} | {'thr':>3} {'µs':>8} {'GB/s':>6} | "
          f"{'f32 mv µs':>9} {'GB/s(f32)':>9}")
    for t, out_f, in_f in SHAPES:
        w = random_packed(t, out_f, in_f, rng)
        x = torch.randn(1, in_f)
        mb = w.numel() / 1e6
        wf = dequantize_raw(w.numpy(), t, (out_f, in_f))
        xf = x[0]
        for thr in (1, 2):
            torch.set_num_threads(thr)
            s = best_time(lambda: k.gemv(w, int(t), x, thr), repeat)
            sf = best_time(lambda: torch.mv(wf, xf), max(3, repeat // 4))
            print(f"{t.name:6} {out_f:>6}x{in_f:<6} {mb:6.1f} | {thr:3d} {s * 1e6:8.1f} "
                  f"{mb / 1e3 / s:6.1f} | {sf * 1e6:9.1f} {wf.numel() * 4 / 1e9 / sf:9.1f}")
        del wf


def bench_stream(k, path: str, max_gb: float = 0.5) -> None:
    """GEMV over a model file's own weights (up to `max_gb` of them), each read once per pass
    as a decode step reads them: from the file mmap the model loader uses and from an anonymous
    copy of the same bytes."""
    import warnings

    from gguf import GGUFReader

    warnings.filterwarnings("ignore", "The given NumPy array is not writable")
    supported = set(k.supported_types())
    mapped, total = [], 0
    for t in GGUFReader(path).tensors:
        if int(t.tensor_type) not in supported or len(t.shape) < 2 or t.tensor_type.name in ("F32", "F16", "BF16"):
            continue
        n, rows = int(t.shape[0]), int(t.shape[1])
        experts = int(np.prod(t.shape[2:])) if len(t.shape) > 2 else 1
        w = np.asarray(t.data).reshape(experts, rows, -1)  # a view of the file mmap
        if total + w.nbytes > max_gb * 1e9:
            continue
        mapped.append((int(t.tensor_type), n, torch.from_numpy(w)))
        total += w.nbytes
    # numpy asks the kernel for huge pages for large arrays (torch's allocator does not by default)
    anon = [(t, n, torch.from_numpy(w.numpy().copy())) for t, n, w in mapped]
    xs = {n: torch.randn(1, n) for _, n, _ in mapped}
    print(f"\n{path}: {len(mapped)} quantized matrices, {total / 1e9:.2f} GB, each read once per pass")
    for thr in (1, 2):
        torch.set_num_threads(thr)
        line = f"  {thr} thread(s):"
        for label, ws in (("file mmap", mapped), ("anonymous copy", anon)):

            def one_pass() -> None:
                for t, n, w in ws:
                    for e in range(w.shape[0]):
                        k.gemv(w[e], t, xs[n], thr)

            line += f"  {label} {total / 1e9 / best_time(one_pass, 3, 0.0):5.1f} GB/s"
        print(line)


def bench_model(path: str, repeat: int) -> None:
    from engine.gguf.reader import open_gguf
    from engine.quant_linear import QuantLinear

    gf = open_gguf(path)
    lins = [QuantLinear.from_gguf(gf, info) for info in gf.tensors
            if len(info.shape) == 2 and info.type_name not in ("F32",)]
    total = sum(q.nbytes for q in lins)
    print(f"\n{path}: {len(lins)} matrices, {total / 1e6:.1f} MB packed "
          f"(file {gf.file_size / 1e6:.1f} MB)")
    xs = [torch.randn(1, q.in_features) for q in lins]

    def step() -> None:
        for q, x in zip(lins, xs):
            q(x)

    for thr in (1, 2):
        torch.set_num_threads(thr)
        s = best_time(step, max(3, repeat // 10))
        print(f"  {thr} thread(s): all GEMVs of one token {s * 1e3:.2f} ms = {total / 1e9 / s:.1f} GB/s "
              f"-> ceiling {1 / s:.0f} tok/s")
    by_type: dict[str, float] = {}
    torch.set_num_threads(2)
    for q, x in zip(lins, xs):
        by_type[q.type_name] = by_type.get(q.type_name, 0.0) + best_time(lambda: q(x), 5, 0.0)
    print("  per type, 2 threads: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in by_type.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF file (default: the embedded Gemma 3 270M)")
    ap.add_argument("--no-model", action="store_true", help="skip the whole-model pass")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--stream", action="store_true",
                    help="also stream the model's weights from its file mmap and from an anonymous copy")
    args = ap.parse_args()
    k = kernels.load()
    if k is None:
        raise SystemExit(f"kernels unavailable: {kernels.disabled_reason()}")
    threads = torch.get_num_threads()
    try:
        bench_shapes(k, args.repeat)
        path = args.model
        if path is None and (args.stream or not args.no_model):
            from engine.default_model import default_model_path
            path = str(default_model_path())
        if args.stream:
            bench_stream(k, path)
        if not args.no_model:
            bench_model(path, args.repeat)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
