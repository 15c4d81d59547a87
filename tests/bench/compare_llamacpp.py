"""Ours against llama.cpp (llama-cpp-python) on the same GGUF file and thread count.

    python tests/bench/compare_llamacpp.py MODEL [-p 512] [-n 128] [-t 2] [--reps 3]

Each rep of each engine runs in a fresh subprocess (so peak RSS is per engine and load time
includes a cold process), interleaved A B A B so that drift of the machine hits both alike.
Both do the same work: a 32-token prompt (time to first token), a `-p` token prompt in one
batch, then `-n` greedy decode steps with EOS ignored. Prints one line per metric with the two
medians and the ratio ours/llama.cpp (for times, llama.cpp/ours, so > 1 always means we win).

llama.cpp configuration: llama-cpp-python 0.3.36 segfaults in llama_decode on quantized files on
CPUs with AMX/AVX-512 when it repacks weights into its "extra buffer types" (checked on this
machine with a plain `Llama(model_path, n_threads=2)` on Gemma 3 270M Q4_K_M), so it is built
with `model_params.use_extra_bufts = False` (weights used as stored, mmap'd, like ours),
unless --repack is given. The output says which configuration ran.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _one_llamacpp(model: str, n_prompt: int, n_gen: int, threads: int, repack: bool = False) -> dict:
    import llama_cpp
    import numpy as np

    from engine.bench import TTFT_PROMPT_TOKENS, bench_prompt_ids, peak_rss_mb, rss_mb
    from tests.fixtures.llama_cpp_ref import no_repack

    gc.collect()
    rss0 = rss_mb()
    n_ctx = max(n_prompt, TTFT_PROMPT_TOKENS) + n_gen + 8
    t0 = time.perf_counter()
    with no_repack(enabled=not repack):
        llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=max(512, n_prompt),
                              n_ubatch=max(512, n_prompt), n_threads=threads,
                              n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()
    bos = llm.token_bos()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def prefill(ids):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        token = int(np.argmax(last_logits()))
        return time.perf_counter() - t, token

    ttft_s, _ = prefill(bench_prompt_ids(TTFT_PROMPT_TOKENS, n_vocab, bos))
    prompt_s, token = prefill(bench_prompt_ids(n_prompt, n_vocab, bos))
    t0 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([token])
        token = int(np.argmax(last_logits()))
    gen_s = time.perf_counter() - t0
    return {"load_s": load_s, "prompt_tok_s": n_prompt / prompt_s, "gen_tok_s": n_gen / gen_s,
            "ttft_s": ttft_s, "rss_before_load_mb": rss0, "peak_rss_mb": peak_rss_mb()}


def _one_ours(model: str, n_prompt: int, n_gen: int, threads: int) -> dict:
    from engine.bench import run_bench

    result = run_bench(model, n_prompt=n_prompt, n_gen=n_gen, threads=threads, reps=1)
    s = result.summary()
    return {k: s[k] for k in ("load_s", "prompt_tok_s", "gen_tok_s", "ttft_s",
                              "rss_before_load_mb", "peak_rss_mb")}


def _spawn(engine: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, args.model, "--one", engine, "-p", str(args.n_prompt),
           "-n", str(args.n_gen), "-t", str(args.threads)] + (["--repack"] if args.repack else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{engine} run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _llamacpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:  # noqa: BLE001  (only a label)
        return "?"


METRICS = (
    # key, label, higher is better
    ("prompt_tok_s", "prompt tok/s", True),
    ("gen_tok_s", "decode tok/s", True),
    ("ttft_s", "TTFT 32-tok prompt (s)", False),
    ("load_s", "load time (s)", False),
    ("model_memory_mb", "model memory (MiB)", False),
    ("peak_rss_mb", "peak RSS (MiB)", False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print all runs as JSON")
    parser.add_argument("--repack", action="store_true",
                        help="let llama.cpp repack weights (extra buffer types; crashes on AMX CPUs)")
    parser.add_argument("--one", choices=("ours", "llamacpp"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "ours":
        print(json.dumps(_one_ours(args.model, args.n_prompt, args.n_gen, args.threads)))
        return
    if args.one == "llamacpp":
        print(json.dumps(_one_llamacpp(args.model, args.n_prompt, args.n_gen, args.threads,
                                       args.repack)))
        return

    print(f"llama.cpp: llama-cpp-python {_llamacpp_version()}, "
          f"{'weight repacking ON' if args.repack else 'use_extra_bufts=False (no weight repacking: the default crashes on this CPU)'}; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)

    runs: dict[str, list[dict]] = {"ours": [], "llamacpp": []}
    for rep in range(args.reps):
        for engine in ("ours", "llamacpp"):
            r = _spawn(engine, args)
            r["model_memory_mb"] = r["peak_rss_mb"] - r["rss_before_load_mb"]
            runs[engine].append(r)
            print(f"  rep {rep + 1} {engine:<8} prompt {r['prompt_tok_s']:7.1f} tok/s  "
                  f"decode {r['gen_tok_s']:6.1f} tok/s  ttft {r['ttft_s'] * 1000:6.0f} ms  "
                  f"load {r['load_s']:5.2f} s  mem {r['model_memory_mb']:6.0f} MiB", file=sys.stderr)

    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
    size_mb = Path(args.model).stat().st_size / 2**20
    print(f"{Path(args.model).name}: {size_mb:.0f} MiB, {args.threads} threads, "
          f"p={args.n_prompt} n={args.n_gen}, median of {args.reps}; llama.cpp "
          f"{'with weight repacking' if args.repack else 'with use_extra_bufts=False (no repacking)'}")
    print(f"{'metric':<24} {'ours':>10} {'llama.cpp':>10} {'ratio':>7}")
    for key, label, higher_better in METRICS:
        ours = statistics.median(r[key] for r in runs["ours"])
        ref = statistics.median(r[key] for r in runs["llamacpp"])
        ratio = ours / ref if higher_better else ref / ours
        print(f"{label:<24} {ours:>10.3f} {ref:>10.3f} {ratio:>6.2f}x")
    ours_mem = statistics.median(r["model_memory_mb"] for r in runs["ours"])
    print(f"{'model memory / file':<24} {ours_mem / size_mb:>10.2f}")
    if args.json:
        print(json.dumps(runs))


if __name__ == "__main__":
    main()
