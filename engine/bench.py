"""Throughput and memory measurement in the style of llama-bench.

One rep = load the model, process an `n_prompt`-token prompt (batched passes), then decode `n_gen`
tokens greedily one at a time (EOS ignored, so every rep does the same work), plus a separate
32-token prompt for time to first token. Model memory is peak RSS minus the RSS the process
had after its imports (engine code and compiled kernels included) and before the first load,
which is what the performance goals bound. A prompt is processed as `generate` does it
(`engine.generate.prefill`: passes of PROMPT_CHUNK tokens, logits of the last position only).

`depth=N` (llama-bench's `-d N`): each rep first fills the cache with N tokens (one prefill,
timed apart), then times the prompt and the decode steps at positions after them.

The machine, for honest figures: `cpu_model_name()`, `cpu_isas()` (the SIMD extensions the CPU
has), `kernel_isa()` (those our kernels run), and `measure_read_bandwidth()`: a streaming read,
with the bench's thread count, of a buffer much larger than the last-level cache. A decode step
must read every weight it multiplies (the routed experts only, for MoE) plus the KV entries its
attention sees, so bytes read per token / bandwidth bounds decode speed from above;
`BenchResult.summary()` reports decode as a share of that bound.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

from engine.weight_memory import weight_pages

TTFT_PROMPT_TOKENS = 32


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def bench_prompt_ids(n: int, n_vocab: int, bos_id: int | None) -> list[int]:
    """Deterministic pseudo-random ids, like llama-bench: content does not change the cost."""
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(100, max(101, n_vocab - 1), (n,), generator=gen).tolist()
    if bos_id is not None and n:
        ids[0] = bos_id
    return ids


# ----------------------------------------------------------------------------- the machine

# The SIMD extensions that matter to matrix kernels, as /proc/cpuinfo spells them.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512bw",
              "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
              "amx_bf16", "asimd", "asimddp", "asimdhp", "sve", "i8mm")


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_model_name() -> str:
    """The CPU's marketing name ("Intel(R) Xeon(R) Processor", "AMD EPYC 7B13 ...")."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_isas() -> list[str]:
    """The SIMD extensions of SIMD_FLAGS this CPU reports, in that order (empty off Linux)."""
    from engine.kernels.build_flags import cpu_features

    flags = cpu_features() or frozenset()  # x86 "flags" or ARM "Features"
    return [f for f in SIMD_FLAGS if f in flags]


def kernel_isa() -> str:
    """The instruction sets the fused kernels run with here ("avx512-vnni", "avx2", ...), or
    "none" when the stock-op fallback runs. Call after `kernels.load()`."""
    from engine import kernels

    if kernels.status().path in ("fallback", "not-loaded"):
        return "none"
    isa = getattr(kernels, "isa", None)  # dispatch by CPU (LLMLENS_KERNEL_ISA can force one)
    name = isa() if callable(isa) else None
    return str(name) if name else "avx2+fma+f16c"


def l3_cache_bytes() -> int | None:
    """Size of the largest cache (one instance) as sysfs reports it, or None."""
    best = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        n = int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size or 0)
        best = max(best or 0, n)
    return best


def bandwidth_probe_bytes() -> int:
    """A buffer no cache holds: 1 GiB or four times the last-level cache, whichever is larger
    (a streaming read of twice an LRU cache's size already hits nothing; caches that keep part
    of a set get no help from the rest), within half the free memory."""
    want = max(2**30, 4 * (l3_cache_bytes() or 0))
    return int(min(want, psutil.virtual_memory().available // 2))


def measure_read_bandwidth(threads: int, nbytes: int | None = None, reps: int = 5) -> float:
    """Memory read bandwidth in GB/s (1e9 bytes/s): the best of `reps` `sum()` passes over a
    float32 buffer of `nbytes` (default `bandwidth_probe_bytes()`) on `threads` threads. A sum
    does one add per 4 bytes read, far below what a core can add, so its speed is the memory's."""
    nbytes = nbytes or bandwidth_probe_bytes()
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        buf = torch.ones(max(1, nbytes // 4), dtype=torch.float32)  # touches every page once
        buf.sum()  # first pass: page tables and thread pool warm
        best = 0.0
        for _ in range(max(1, reps)):
            t0 = time.perf_counter()
            buf.sum()
            best = max(best, buf.numel() * 4 / (time.perf_counter() - t0) / 1e9)
        del buf
    finally:
        torch.set_num_threads(previous)
    return best


def decode_read_bytes(model, context: float) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes) one decode step reads at `context` cached positions.

    Weights count at their file encoding, the least any engine reads: every tensor but the
    token embedding (one row per step; read in full only as a tied output head), routed expert
    stacks (`*_exps.*`) at n_used / n_expert of their size. KV: this engine's cache entries
    per attention layer, for every position a global layer sees and the window a sliding one
    sees; convolution layers (LFM2) read no cache."""
    gf = model.gguf
    router = getattr(model, "router", None)
    share = router.n_used / router.n_expert if router is not None else 1.0
    weights = 0.0
    for info in gf.tensors:
        if info.name == "token_embd.weight" and gf.has_tensor("output.weight"):
            continue
        weights += info.n_bytes * (share if "_exps." in info.name else 1.0)
    kinds, windows = model.layer_kinds, model.layer_windows
    attn = [w for k, w in zip(kinds, windows) if k != "conv"]
    per_layer = model.cache_bytes_per_token / max(1, len(attn))
    kv = sum(per_layer * (context if w is None else min(context, w)) for w in attn)
    return int(weights), int(kv)


@dataclass
class RepResult:
    load_s: float
    prompt_tok_s: float
    gen_tok_s: float
    ttft_s: float
    depth_fill_tok_s: float | None = None  # the prefill of the `depth` tokens, when depth > 0


@dataclass
class BenchResult:
    model: str
    threads: int
    n_prompt: int
    n_gen: int
    file_size_mb: float
    rss_before_load_mb: float
    peak_rss_mb: float
    reps: list[RepResult] = field(default_factory=list)
    depth: int = 0
    kv_cache_bytes_per_token: int = 0
    decode_weight_bytes: int = 0   # per decode token (decode_read_bytes)
    decode_kv_bytes: int = 0       # per decode token, at the mean position of the timed decode
    mem_bandwidth_gbs: float | None = None   # measure_read_bandwidth, when asked for
    bandwidth_probe_mb: float | None = None
    cpu: str = field(default_factory=cpu_model_name)
    cpu_isas: list[str] = field(default_factory=cpu_isas)
    kernel_isa: str = ""
    kernel_path: str = ""
    kernel_reason: str = ""
    weight_pages: str = ""

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "threads": self.threads, "n_prompt": self.n_prompt,
            "n_gen": self.n_gen, "depth": self.depth, "reps": len(self.reps),
            "file_size_mb": round(self.file_size_mb, 1),
            "rss_before_load_mb": round(self.rss_before_load_mb, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "model_memory_mb": round(self.peak_rss_mb - self.rss_before_load_mb, 1),
        }
        out["model_memory_ratio"] = round(out["model_memory_mb"] / self.file_size_mb, 3)
        for key in ("prompt_tok_s", "gen_tok_s", "ttft_s", "load_s"):
            values = [getattr(r, key) for r in self.reps]
            out[key] = round(statistics.median(values), 4)
            out[f"{key}_min"] = round(min(values), 4)
            out[f"{key}_max"] = round(max(values), 4)
        fills = [r.depth_fill_tok_s for r in self.reps if r.depth_fill_tok_s is not None]
        out["depth_fill_tok_s"] = round(statistics.median(fills), 4) if fills else None
        out.update({
            "cpu": self.cpu, "cpu_isas": list(self.cpu_isas), "kernel_isa": self.kernel_isa,
            "kernel_path": self.kernel_path, "kernel_reason": self.kernel_reason,
            "weight_pages": self.weight_pages,
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token,
            "decode_weight_bytes_per_token": self.decode_weight_bytes,
            "decode_kv_bytes_per_token": self.decode_kv_bytes,
            "mem_bandwidth_gbs": None, "bandwidth_probe_mb": self.bandwidth_probe_mb,
            "decode_bound_tok_s": None, "decode_share_of_bound": None,
        })
        if self.mem_bandwidth_gbs:
            per_token = self.decode_weight_bytes + self.decode_kv_bytes
            bound = self.mem_bandwidth_gbs * 1e9 / per_token if per_token else None
            out["mem_bandwidth_gbs"] = round(self.mem_bandwidth_gbs, 3)
            out["decode_bound_tok_s"] = round(bound, 3) if bound else None
            out["decode_share_of_bound"] = round(out["gen_tok_s"] / bound, 4) if bound else None
        return out


def _timed_prefill(model, ids: list[int], n_ctx: int, cache=None, start_pos: int = 0
                   ) -> tuple[float, torch.Tensor, Any]:
    """Seconds to process `ids` at `start_pos` (in a new cache unless one is given), the greedy
    next token [1], and the cache."""
    from engine.generate import prefill

    cache = model.new_cache(n_ctx) if cache is None else cache
    t0 = time.perf_counter()
    logits = prefill(model, ids, cache, start_pos)  # the prompt passes generate() makes
    next_id = int(torch.argmax(logits[-1]))
    return time.perf_counter() - t0, torch.tensor([next_id]), cache


def run_bench(path: str | Path, n_prompt: int = 512, n_gen: int = 128, threads: int | None = None,
              reps: int = 3, progress: Callable[[str], None] | None = None, depth: int = 0,
              bandwidth: bool = False) -> BenchResult:
    """`reps` loads of the model at `path`, each timing a prompt and a decode (see the module
    docstring); `depth` tokens are cached before both. `bandwidth`: also measure the memory
    read bandwidth (after the peak RSS is taken: the probe's buffer is not model memory)."""
    from engine import kernels
    from engine.errors import LLMLensError
    from engine.generate import trim_heap
    from engine.models.base import ARCH_MODULES, EXPERT_ARCH_MODULES, load_model
    from engine.threads import default_threads

    if n_prompt < 1 or n_gen < 1 or depth < 0:
        raise LLMLensError(f"bench needs -p >= 1, -n >= 1 and --depth >= 0 "
                           f"(got -p {n_prompt} -n {n_gen} --depth {depth})")
    # Code is not model memory: load the compiled kernels (like `import llama_cpp` loads its
    # library) and the architecture modules before the baseline RSS is taken.
    kernels.load()
    for module in set(ARCH_MODULES.values()) | set(EXPERT_ARCH_MODULES.values()):
        __import__(module)

    threads = threads or default_threads()
    torch.set_num_threads(threads)
    path = Path(path)
    try:
        file_size = path.stat().st_size
    except OSError as exc:  # the loader's wording, one line, not a traceback
        raise LLMLensError(f"{path}: cannot open ({exc.strerror or exc})") from None
    gc.collect()
    status = kernels.status()
    result = BenchResult(model=str(path), threads=threads, n_prompt=n_prompt, n_gen=n_gen,
                         file_size_mb=file_size / 2**20,
                         rss_before_load_mb=rss_mb(), peak_rss_mb=0.0, depth=depth,
                         kernel_isa=kernel_isa(), kernel_path=status.path,
                         kernel_reason=status.reason)
    n_ctx = max(depth + n_prompt + n_gen, TTFT_PROMPT_TOKENS) + 8
    for rep in range(reps):
        t0 = time.perf_counter()
        model = load_model(path, n_ctx=n_ctx, threads=threads)
        load_s = time.perf_counter() - t0
        bos = getattr(model, "bos_id", None)
        if rep == 0:
            result.weight_pages = weight_pages(getattr(model, "gguf", None))
            result.kv_cache_bytes_per_token = int(model.cache_bytes_per_token)
            result.decode_weight_bytes, result.decode_kv_bytes = decode_read_bytes(
                model, depth + n_prompt + n_gen / 2)  # the mean context of the timed steps
        with torch.inference_mode():
            ttft_s, _, _ = _timed_prefill(model, bench_prompt_ids(TTFT_PROMPT_TOKENS, model.n_vocab, bos), n_ctx)
            ids = bench_prompt_ids(depth + n_prompt, model.n_vocab, bos)
            cache, fill_tok_s = None, None
            if depth:
                fill_s, _, cache = _timed_prefill(model, ids[:depth], n_ctx)
                fill_tok_s = depth / fill_s
            prompt_s, token, cache = _timed_prefill(model, ids[depth:], n_ctx, cache, depth)
            start = depth + n_prompt
            t0 = time.perf_counter()
            for pos in range(start, start + n_gen):
                logits = model.forward(token, cache, pos, all_logits=False)
                token = torch.argmax(logits[-1]).reshape(1)
            gen_s = time.perf_counter() - t0
        result.reps.append(RepResult(load_s=load_s, prompt_tok_s=n_prompt / prompt_s,
                                     gen_tok_s=n_gen / gen_s, ttft_s=ttft_s,
                                     depth_fill_tok_s=fill_tok_s))
        if progress:
            r = result.reps[-1]
            fill = f"{depth}-token fill {fill_tok_s:.1f} tok/s, " if depth else ""
            progress(f"rep {rep + 1}/{reps}: load {r.load_s:.2f} s, {fill}prompt "
                     f"{r.prompt_tok_s:.1f} tok/s, decode {r.gen_tok_s:.1f} tok/s, "
                     f"TTFT {r.ttft_s * 1000:.0f} ms")
        del model, cache
        gc.collect()
        trim_heap()  # the next rep's load starts from the memory the first one found
    result.peak_rss_mb = peak_rss_mb()
    if bandwidth:
        nbytes = bandwidth_probe_bytes()
        if progress:
            progress(f"memory bandwidth: {threads}-thread streaming read of {nbytes / 2**20:.0f} MiB")
        result.mem_bandwidth_gbs = measure_read_bandwidth(threads, nbytes)
        result.bandwidth_probe_mb = round(nbytes / 2**20, 1)
    return result


# ----------------------------------------------------------------------------- --inspect

@dataclass
class InspectBenchResult:
    """Decode speed with a `LiveTrace` recording (attention + routing) against without."""

    model: str
    threads: int
    n_prompt: int
    n_gen: int
    plain_tok_s: list[float] = field(default_factory=list)
    live_tok_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        plain, live = statistics.median(self.plain_tok_s), statistics.median(self.live_tok_s)
        return {"model": self.model, "threads": self.threads, "n_prompt": self.n_prompt,
                "n_gen": self.n_gen, "reps": len(self.plain_tok_s),
                "plain_gen_tok_s": round(plain, 4), "live_gen_tok_s": round(live, 4),
                "plain_gen_tok_s_all": [round(v, 4) for v in self.plain_tok_s],
                "live_gen_tok_s_all": [round(v, 4) for v in self.live_tok_s],
                # the median of per-pair ratios: each pair ran back to back, so slow phases of
                # a shared machine hit both sides of a pair alike
                "live_ratio": round(statistics.median(
                    lv / pl for lv, pl in zip(self.live_tok_s, self.plain_tok_s)), 4)}


def run_inspect_bench(path: str | Path, n_prompt: int = 512, n_gen: int = 128,
                      threads: int | None = None, reps: int = 3,
                      progress: Callable[[str], None] | None = None) -> InspectBenchResult:
    """One load and one prompt; then `reps` pairs of `n_gen`-token greedy decodes from the
    same position, one plain and one feeding a LiveTrace (which pair member runs first
    alternates), as generate() would with `trace=live.recorder`."""
    from engine import kernels
    from engine.generate import prefill
    from engine.models.base import load_model
    from engine.threads import default_threads
    from engine.trace import LiveTrace

    if n_prompt < 1 or n_gen < 1:
        from engine.errors import LLMLensError

        raise LLMLensError(f"--inspect needs at least 1 prompt and 1 generated token "
                           f"(got -p {n_prompt} -n {n_gen})")
    kernels.load()
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    path = Path(path)
    n_ctx = n_prompt + n_gen + 8
    model = load_model(path, n_ctx=n_ctx, threads=threads)
    live = LiveTrace(model.config.n_layer)
    result = InspectBenchResult(model=str(path), threads=threads, n_prompt=n_prompt, n_gen=n_gen)
    cache = model.new_cache(n_ctx)
    ids = bench_prompt_ids(n_prompt, model.n_vocab, getattr(model, "bos_id", None))
    with torch.inference_mode():
        first = torch.argmax(prefill(model, ids, cache, trace=live.recorder)[-1]).reshape(1)

        def decode(trace, n: int) -> float:
            token = first
            t0 = time.perf_counter()
            for pos in range(n_prompt, n_prompt + n):
                logits = model.forward(token, cache, pos, trace, all_logits=False)
                token = torch.argmax(logits[-1]).reshape(1)
            return n / (time.perf_counter() - t0)

        decode(None, min(8, n_gen))  # warm-up: first-call allocations, kernel dispatch caches
        decode(live.recorder, min(8, n_gen))
        for rep in range(reps):
            order = (None, live.recorder) if rep % 2 == 0 else (live.recorder, None)
            speeds = {id(trace): decode(trace, n_gen) for trace in order}
            result.plain_tok_s.append(speeds[id(None)])
            result.live_tok_s.append(speeds[id(live.recorder)])
            if progress:
                progress(f"rep {rep + 1}/{reps}: decode plain {result.plain_tok_s[-1]:.1f} tok/s, "
                         f"live trace {result.live_tok_s[-1]:.1f} tok/s")
    return result
