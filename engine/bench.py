"""Throughput and memory measurement in the style of llama-bench.

One rep = load the model, process an `n_prompt`-token prompt (batched passes), then decode `n_gen`
tokens greedily one at a time (EOS ignored, so every rep does the same work), plus a separate
32-token prompt for time to first token. Model memory is peak RSS minus the RSS the process
had after its imports (engine code and compiled kernels included) and before the first load,
which is what the performance goals bound. A prompt is processed as `generate` does it
(`engine.generate.prefill`: passes of PROMPT_CHUNK tokens, logits of the last position only).
"""

from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

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


@dataclass
class RepResult:
    load_s: float
    prompt_tok_s: float
    gen_tok_s: float
    ttft_s: float


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

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "threads": self.threads, "n_prompt": self.n_prompt,
            "n_gen": self.n_gen, "reps": len(self.reps), "file_size_mb": round(self.file_size_mb, 1),
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
        return out


def _timed_prefill(model, ids: list[int], n_ctx: int) -> tuple[float, torch.Tensor, Any]:
    from engine.generate import prefill

    cache = model.new_cache(n_ctx)
    t0 = time.perf_counter()
    logits = prefill(model, ids, cache)  # the prompt passes generate() makes
    next_id = int(torch.argmax(logits[-1]))
    return time.perf_counter() - t0, torch.tensor([next_id]), cache


def run_bench(path: str | Path, n_prompt: int = 512, n_gen: int = 128, threads: int | None = None,
              reps: int = 3, progress: Callable[[str], None] | None = None) -> BenchResult:
    from engine import kernels
    from engine.generate import trim_heap
    from engine.models.base import ARCH_MODULES, EXPERT_ARCH_MODULES, load_model
    from engine.threads import default_threads

    # Code is not model memory: load the compiled kernels (like `import llama_cpp` loads its
    # library) and the architecture modules before the baseline RSS is taken.
    kernels.load()
    for module in set(ARCH_MODULES.values()) | set(EXPERT_ARCH_MODULES.values()):
        __import__(module)

    threads = threads or default_threads()
    torch.set_num_threads(threads)
    path = Path(path)
    gc.collect()
    result = BenchResult(model=str(path), threads=threads, n_prompt=n_prompt, n_gen=n_gen,
                         file_size_mb=path.stat().st_size / 2**20,
                         rss_before_load_mb=rss_mb(), peak_rss_mb=0.0)
    n_ctx = max(n_prompt, TTFT_PROMPT_TOKENS) + n_gen + 8
    for rep in range(reps):
        t0 = time.perf_counter()
        model = load_model(path, n_ctx=n_ctx, threads=threads)
        load_s = time.perf_counter() - t0
        bos = getattr(model, "bos_id", None)
        with torch.inference_mode():
            ttft_s, _, _ = _timed_prefill(model, bench_prompt_ids(TTFT_PROMPT_TOKENS, model.n_vocab, bos), n_ctx)
            prompt_s, token, cache = _timed_prefill(model, bench_prompt_ids(n_prompt, model.n_vocab, bos), n_ctx)
            t0 = time.perf_counter()
            for pos in range(n_prompt, n_prompt + n_gen):
                logits = model.forward(token, cache, pos, all_logits=False)
                token = torch.argmax(logits[-1]).reshape(1)
            gen_s = time.perf_counter() - t0
        result.reps.append(RepResult(load_s=load_s, prompt_tok_s=n_prompt / prompt_s,
                                     gen_tok_s=n_gen / gen_s, ttft_s=ttft_s))
        if progress:
            r = result.reps[-1]
            progress(f"rep {rep + 1}/{reps}: load {r.load_s:.2f} s, prompt {r.prompt_tok_s:.1f} tok/s, "
                     f"decode {r.gen_tok_s:.1f} tok/s, TTFT {r.ttft_s * 1000:.0f} ms")
        del model, cache
        gc.collect()
        trim_heap()  # the next rep's load starts from the memory the first one found
    result.peak_rss_mb = peak_rss_mb()
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
