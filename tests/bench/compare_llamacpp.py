"""Ours against llama.cpp (llama-cpp-python) on the same GGUF file and thread count.

    python tests/bench/compare_llamacpp.py MODEL [-p 512] [-n 128] [-d DEPTH] [-t 2] [--reps 3]
        [--llamacpp-lib default --llamacpp-lib /work/llama_avx2] [--repack auto|on|off]
        [--ours-env KEY=VALUE]

Each rep of each engine runs in a fresh subprocess (so peak RSS is per engine and load time
includes a cold process), interleaved A B C A B C so that drift of the machine hits all alike.
All do the same work: a 32-token prompt (time to first token); with `-d N`, N tokens of context
(llama-bench's -d: one eval, timed apart); a `-p` token prompt in one batch; then `-n` greedy
decode steps with EOS ignored. Prints one line per metric with the medians and the ratio
ours/llama.cpp per llama.cpp build (for times, llama.cpp/ours, so > 1 always means we win).

Which llama.cpp: `--llamacpp-lib DIR` (repeatable) loads llama-cpp-python from another site dir
(`pip install --target DIR`, e.g. the AVX2-only build of tests/bench/build_llamacpp_avx2.sh, to
compare AVX2 against AVX2 on an AVX-512 machine); `default` is the one installed in this
Python. Each build's `llama_print_system_info()` (its instruction sets) is printed, with the
CPU and the ISAs our kernels run. `--ours-env KEY=VALUE` sets environment variables for our
runs only (e.g. a switch that forces our AVX2 kernels).

llama.cpp settings: its defaults (weight repacking into "extra buffer types" on) wherever they
work. `--repack auto` (the default) runs the defaults first and, for a build where that run
crashes, disables repacking for every rep (`model_params.use_extra_bufts = False`, weights used
as stored and mmap'd, like ours) and says so. On the AVX-512/AMX Xeon this was written on, the
PyPI llama-cpp-python 0.3.36 (built with AMX) segfaults in llama_decode for any batch of 2 or
more tokens with the defaults (checked with a plain `Llama(model_path, n_threads=2)` + `eval`
on Gemma 3 270M Q4_K_M; a 1-token eval works); the issue's Zen 3 figures used the defaults.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _use_lib(lib: str | None) -> None:
    """Import llama_cpp from site dir `lib` (None / "default": the installed one)."""
    if lib and lib != "default":
        if not (Path(lib) / "llama_cpp").is_dir():
            sys.exit(f"--llamacpp-lib {lib}: no llama_cpp package in that directory")
        sys.path.insert(0, str(Path(lib).resolve()))


def _one_llamacpp(model: str, n_prompt: int, n_gen: int, threads: int, repack: bool = False,
                  depth: int = 0) -> dict:
    import llama_cpp
    import numpy as np

    from engine.bench import TTFT_PROMPT_TOKENS, bench_prompt_ids, peak_rss_mb, rss_mb
    from tests.fixtures.llama_cpp_ref import no_repack

    gc.collect()
    rss0 = rss_mb()
    n_ctx = max(depth + n_prompt + n_gen, TTFT_PROMPT_TOKENS) + 8
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

    def timed_eval(ids, reset: bool = True):
        if reset:
            llm.reset()
        t = time.perf_counter()
        llm.eval(ids)  # in n_batch chunks, continuing at llm.n_tokens
        token = int(np.argmax(last_logits()))
        return time.perf_counter() - t, token

    ttft_s, _ = timed_eval(bench_prompt_ids(TTFT_PROMPT_TOKENS, n_vocab, bos))
    ids = bench_prompt_ids(depth + n_prompt, n_vocab, bos)
    fill_tok_s = None
    llm.reset()
    if depth:
        fill_s, _ = timed_eval(ids[:depth])
        fill_tok_s = depth / fill_s
    prompt_s, token = timed_eval(ids[depth:], reset=False)
    t0 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([token])
        token = int(np.argmax(last_logits()))
    gen_s = time.perf_counter() - t0
    return {"load_s": load_s, "prompt_tok_s": n_prompt / prompt_s, "gen_tok_s": n_gen / gen_s,
            "ttft_s": ttft_s, "depth_fill_tok_s": fill_tok_s, "rss_before_load_mb": rss0,
            "peak_rss_mb": peak_rss_mb(), "repack": repack, "lib": llama_cpp.__file__,
            "version": getattr(llama_cpp, "__version__", "?"),
            "system_info": llama_cpp.llama_print_system_info().decode().strip()}


def _one_ours(model: str, n_prompt: int, n_gen: int, threads: int, depth: int = 0) -> dict:
    from engine.bench import run_bench

    s = run_bench(model, n_prompt=n_prompt, n_gen=n_gen, threads=threads, reps=1,
                  depth=depth).summary()
    return {k: s[k] for k in ("load_s", "prompt_tok_s", "gen_tok_s", "ttft_s", "depth_fill_tok_s",
                              "rss_before_load_mb", "peak_rss_mb", "cpu", "cpu_isas",
                              "kernel_isa", "kernel_path")}


def _spawn(args: argparse.Namespace, engine: str, lib: str | None = None,
           repack: bool = False) -> tuple[dict | None, str]:
    """One child run: (its result, "") or (None, why it failed)."""
    cmd = [sys.executable, __file__, args.model, "--one", engine, "-p", str(args.n_prompt),
           "-n", str(args.n_gen), "-t", str(args.threads), "-d", str(args.depth)]
    env = dict(os.environ)
    if engine == "llamacpp":
        cmd += ["--lib", lib or "default", "--repack", "on" if repack else "off"]
    else:
        env.update(kv.split("=", 1) for kv in args.ours_env)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        if out.returncode < 0:
            try:
                how = f"killed by {signal.Signals(-out.returncode).name}"
            except ValueError:
                how = f"killed by signal {-out.returncode}"
        else:
            how = f"exit status {out.returncode}"
        tail = out.stderr.strip()[-1500:]
        return None, how + (f": {tail}" if tail else "")
    return json.loads(out.stdout.strip().splitlines()[-1]), ""


def _lib_label(lib: str) -> str:
    return "llama.cpp" if lib == "default" else f"llama.cpp[{Path(lib).name}]"


METRICS = (
    # key, label, higher is better
    ("prompt_tok_s", "prompt tok/s", True),
    ("gen_tok_s", "decode tok/s", True),
    ("depth_fill_tok_s", "depth fill tok/s", True),
    ("ttft_s", "TTFT 32-tok prompt (s)", False),
    ("load_s", "load time (s)", False),
    ("model_memory_mb", "model memory (MiB)", False),
    ("peak_rss_mb", "peak RSS (MiB)", False),
)


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-d", "--depth", type=int, default=0,
                        help="tokens of context cached before the prompt and decode (llama-bench -d)")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print all runs as JSON")
    parser.add_argument("--llamacpp-lib", action="append", default=None, metavar="DIR",
                        help="site dir holding a llama_cpp package (pip install --target DIR); "
                             "repeatable; 'default' = the installed one (the default)")
    parser.add_argument("--repack", choices=("auto", "on", "off"), default="auto",
                        help="llama.cpp weight repacking: auto = its default (on) unless that "
                             "crashes, then off (default auto)")
    parser.add_argument("--ours-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for our runs only (repeatable)")
    parser.add_argument("--one", choices=("ours", "llamacpp"), help=argparse.SUPPRESS)
    parser.add_argument("--lib", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.n_prompt < 1 or args.n_gen < 1 or args.depth < 0:
        sys.exit("need -p >= 1, -n >= 1 and -d >= 0")
    if any("=" not in kv for kv in args.ours_env):
        sys.exit("--ours-env takes KEY=VALUE")
    if args.one == "ours":
        print(json.dumps(_one_ours(args.model, args.n_prompt, args.n_gen, args.threads, args.depth)))
        return
    if args.one == "llamacpp":
        _use_lib(args.lib)
        print(json.dumps(_one_llamacpp(args.model, args.n_prompt, args.n_gen, args.threads,
                                       args.repack == "on", args.depth)))
        return

    libs = args.llamacpp_lib or ["default"]
    for lib in libs:
        if lib != "default" and not (Path(lib) / "llama_cpp").is_dir():
            sys.exit(f"--llamacpp-lib {lib}: no llama_cpp package in that directory")
    engines = ["ours"] + libs
    repack = {lib: args.repack != "off" for lib in libs}
    notes: dict[str, str] = {}
    load_before = _loadavg()
    print(f"load average before: {load_before}", file=sys.stderr)

    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for rep in range(args.reps):
        for engine in engines:
            if engine == "ours":
                r, why = _spawn(args, "ours")
            else:
                r, why = _spawn(args, "llamacpp", engine, repack[engine])
                if r is None and repack[engine] and args.repack == "auto":
                    how = why.split(":")[0]  # "killed by SIGSEGV"; its stderr tail is noise
                    notes[engine] = f"its default (weight repacking on) failed: {how}"
                    print(f"  {_lib_label(engine)}: default settings failed ({how}); "
                          "repeating with weight repacking off", file=sys.stderr)
                    repack[engine] = False
                    r, why = _spawn(args, "llamacpp", engine, False)
            if r is None:
                sys.exit(f"{engine} run failed: {why}")
            r["model_memory_mb"] = r["peak_rss_mb"] - r["rss_before_load_mb"]
            runs[engine].append(r)
            label = "ours" if engine == "ours" else _lib_label(engine)
            fill = f"fill {r['depth_fill_tok_s']:7.1f} tok/s  " if args.depth else ""
            print(f"  rep {rep + 1} {label:<22} {fill}prompt {r['prompt_tok_s']:7.1f} tok/s  "
                  f"decode {r['gen_tok_s']:6.1f} tok/s  ttft {r['ttft_s'] * 1000:6.0f} ms  "
                  f"load {r['load_s']:5.2f} s  mem {r['model_memory_mb']:6.0f} MiB", file=sys.stderr)

    load_after = _loadavg()
    ours0 = runs["ours"][0]
    size_mb = Path(args.model).stat().st_size / 2**20
    print(f"CPU: {ours0['cpu']}, {args.threads} threads; CPU has {' '.join(ours0['cpu_isas'])}")
    print(f"ours: kernels {ours0['kernel_isa']} ({ours0['kernel_path']})"
          + (f", env {' '.join(args.ours_env)}" if args.ours_env else ""))
    for lib in libs:
        r = runs[lib][0]
        setting = ("its default settings (weight repacking on)" if repack[lib]
                   else "use_extra_bufts=False (no weight repacking)")
        print(f"{_lib_label(lib)}: llama-cpp-python {r['version']} from {Path(r['lib']).parent}, "
              f"{setting}" + (f"; {notes[lib]}" if lib in notes else ""))
        print(f"  {r['system_info']}")
    depth = f" d={args.depth}" if args.depth else ""
    print(f"{Path(args.model).name}: {size_mb:.0f} MiB, p={args.n_prompt} n={args.n_gen}{depth}, "
          f"median of {args.reps}; load average {load_before} before, {load_after} after")
    width = max(12, *(len(_lib_label(lib)) for lib in libs))
    header = f"{'metric':<24} {'ours':>10}" + "".join(
        f" {_lib_label(lib):>{width}} {'ratio':>6}" for lib in libs)
    print(header)
    for key, label, higher_better in METRICS:
        if key == "depth_fill_tok_s" and not args.depth:
            continue
        ours = statistics.median(r[key] for r in runs["ours"])
        line = f"{label:<24} {ours:>10.3f}"
        for lib in libs:
            ref = statistics.median(r[key] for r in runs[lib])
            ratio = ours / ref if higher_better else ref / ours
            line += f" {ref:>{width}.3f} {ratio:>5.2f}x"
        print(line)
    ours_mem = statistics.median(r["model_memory_mb"] for r in runs["ours"])
    print(f"{'model memory / file':<24} {ours_mem / size_mb:>10.2f}")
    if args.json:
        print(json.dumps(runs))


if __name__ == "__main__":
    main()
