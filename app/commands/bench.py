"""`llmlens bench MODEL [-p 512] [-n 128] [-t THREADS] [--reps 3] [--json]`, like llama-bench."""

from __future__ import annotations

import argparse
import json
import sys

from engine.default_model import resolve_model_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure prompt/decode speed, time to first token, load time and memory")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the embedded model)")
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (default 512)")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object of medians")


def run(args: argparse.Namespace) -> int:
    from engine.bench import run_bench

    path = resolve_model_path(args.model)
    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    result = run_bench(path, n_prompt=args.n_prompt, n_gen=args.n_gen, threads=args.threads,
                       reps=max(1, args.reps), progress=progress)
    s = result.summary()
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"model   {s['model']}  ({s['file_size_mb']:.1f} MiB, {s['threads']} threads, {s['reps']} reps)")
    rows = [("prompt", "prompt_tok_s", "tok/s", f"pp{s['n_prompt']}"),
            ("decode", "gen_tok_s", "tok/s", f"tg{s['n_gen']}"),
            ("TTFT", "ttft_s", "s", "32-token prompt"),
            ("load", "load_s", "s", "")]
    for label, key, unit, note in rows:
        print(f"{label:<7} {s[key]:>10.3f} {unit:<6} (min {s[key + '_min']:.3f}, max {s[key + '_max']:.3f}) {note}")
    print(f"memory  RSS before load {s['rss_before_load_mb']:.0f} MiB, peak {s['peak_rss_mb']:.0f} MiB, "
          f"model {s['model_memory_mb']:.0f} MiB = {s['model_memory_ratio']:.2f}x file")
    return 0
