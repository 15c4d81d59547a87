"""DeepSeek-V2-Lite (16B MoE + MLA, Q4_K_M) memory and speed: llmlens against llama.cpp.

    python tests/bench/bench_deepseek_v2_lite.py [FILE.gguf] [-p 64] [-n 32] [-t 2]
    python tests/bench/bench_deepseek_v2_lite.py /tmp/dsv2-4l.gguf --layers 4   # smoke version

The goal (issue): load and generate on a 24 GB, 2-core machine with model memory (peak RSS
minus RSS after imports, as `llmlens bench` reports it) at most 1.3x the file size, and decode
at >= 0.7x llama.cpp's tok/s on the same file and thread count.

1. FILE (default /tmp/dsv2lite-q4km.gguf) is written by make_deepseek_v2_lite.py if absent:
   the real architecture, shapes and Q4_K_M tensor types, random weights (~10 GB; the free
   disk space is checked first).
2. The file is read through once so that both engines start from the page cache.
3. `llmlens bench FILE -p P -n N -t T --reps 1 --json` runs in a subprocess.
4. llama-cpp-python runs the same work in another subprocess: a 32-token prompt (time to
   first token), a P-token prompt in one batch, N greedy decode steps one token at a time
   (argmax of the last logits, EOS ignored). It is built with `use_extra_bufts = False`: the
   wheel segfaults on quantized files on AMX CPUs otherwise (see tests/test_models_reference.py).
5. One table: load time, peak RSS, model memory and its ratio to the file size, prompt and
   decode tok/s, and ours / llama.cpp ratios; the MLA cache bytes per token; `--json-out`
   writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_PATH = Path("/tmp/dsv2lite-q4km.gguf")
MEMORY_GOAL = 1.3   # model memory / file size, at most
DECODE_GOAL = 0.7   # our decode tok/s / llama.cpp's, at least


# ----------------------------------------------------------------------------- the file

def ensure_file(path: Path, layers: int) -> None:
    """Write the benchmark file if absent, after checking the disk has room for it."""
    if path.exists():
        return
    from tests.bench.make_deepseek_v2_lite import nbytes, plan

    need = sum(nbytes(s, q) for _, s, q in plan(layers, "split"))
    free = shutil.disk_usage(path.parent).free
    if free < need * 1.1 + (2 << 30):
        sys.exit(f"{path.parent}: {free / 2**30:.1f} GiB free, the file needs {need / 2**30:.1f} GiB")
    print(f"writing {path} ({layers} layers, {need / 2**30:.2f} GiB) ...", flush=True)
    cmd = [sys.executable, str(ROOT / "tests/bench/make_deepseek_v2_lite.py"), str(path),
           "--layers", str(layers)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def prewarm(path: Path) -> float:
    """Read the file once (into the page cache) so neither engine pays the disk; seconds taken."""
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(16 << 20)
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- engines

def run_ours(path: Path, n_prompt: int, n_gen: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "app.cli", "bench", str(path), "-p", str(n_prompt),
           "-n", str(n_gen), "-t", str(threads), "--reps", "1", "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"llmlens bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_llamacpp(path: str, n_prompt: int, n_gen: int, threads: int) -> dict:
    """In a child process: llama.cpp's load, TTFT, prompt and decode on `path` (no repacking)."""
    from tests.bench.compare_llamacpp import _one_llamacpp

    r = _one_llamacpp(path, n_prompt, n_gen, threads)
    return {**r, "model_memory_mb": r["peak_rss_mb"] - r["rss_before_load_mb"]}


def run_llamacpp(path: Path, n_prompt: int, n_gen: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, str(path), "--llama-child", "-p", str(n_prompt),
           "-n", str(n_gen), "-t", str(threads)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"llama.cpp run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mla_cache_bytes(path: Path) -> tuple[int, int]:
    """(MLA cache bytes per token, what a decompressed per-head K/V cache would take), f32."""
    from engine.gguf.reader import open_gguf
    from engine.models.deepseek2 import DeepseekV2Config

    with open_gguf(path) as gf:
        c = DeepseekV2Config.from_gguf(gf)
    return c.n_layer * (c.kv_lora_rank + c.qk_rope) * 4, c.n_layer * c.n_head * (c.qk_head + c.v_head) * 4


# ----------------------------------------------------------------------------- report

def report(path: Path, ours: dict, ref: dict | None, cache: tuple[int, int], load_avg) -> dict:
    size_mb = path.stat().st_size / 2**20
    rows = [("load", "load_s", "s", "{:.2f}"), ("TTFT (32 tok)", "ttft_s", "s", "{:.3f}"),
            ("prompt", "prompt_tok_s", "tok/s", "{:.2f}"), ("decode", "gen_tok_s", "tok/s", "{:.2f}"),
            ("peak RSS", "peak_rss_mb", "MiB", "{:.0f}"),
            ("model memory", "model_memory_mb", "MiB", "{:.0f}")]
    print(f"\nfile     {path} ({size_mb / 1024:.2f} GiB)")
    print(f"{'':<15}{'llmlens':>12}{'llama.cpp':>12}{'ours/ref':>9}")
    for label, key, unit, fmt in rows:
        a = ours[key]
        b = ref[key] if ref else None
        ratio = f"{a / b:.2f}" if b else ""  # always llmlens / llama.cpp
        print(f"{label:<15}{fmt.format(a):>12}{fmt.format(b) if b is not None else '-':>12}"
              f"{ratio:>9}  {unit}")
    mem_ratio = ours["model_memory_mb"] / size_mb
    print(f"model memory / file size: llmlens {mem_ratio:.3f}"
          + (f", llama.cpp {ref['model_memory_mb'] / size_mb:.3f}" if ref else "")
          + f"  (goal <= {MEMORY_GOAL})")
    decode_ratio = ours["gen_tok_s"] / ref["gen_tok_s"] if ref else None
    if decode_ratio is not None:
        print(f"decode llmlens / llama.cpp: {decode_ratio:.3f}  (goal >= {DECODE_GOAL})")
    print(f"MLA cache: {cache[0]} bytes/token (f32 latents + rope key); "
          f"decompressed K/V would be {cache[1]} ({cache[1] / cache[0]:.1f}x)")
    print(f"load average (1 min) before/after: {load_avg[0]:.2f} / {load_avg[1]:.2f}")
    return {"file": str(path), "file_size_mb": round(size_mb, 1), "llmlens": ours, "llama_cpp": ref,
            "model_memory_ratio": round(mem_ratio, 3),
            "decode_ratio": round(decode_ratio, 3) if decode_ratio is not None else None,
            "mla_cache_bytes_per_token": cache[0], "full_kv_bytes_per_token": cache[1],
            "load_avg": load_avg, "date": time.strftime("%Y-%m-%d %H:%M")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path, default=DEFAULT_PATH,
                    help=f"benchmark GGUF (default {DEFAULT_PATH}; written if absent)")
    ap.add_argument("--layers", type=int, default=27, help="layers when writing the file (default 27)")
    ap.add_argument("-p", "--n-prompt", type=int, default=64)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    ap.add_argument("--no-prewarm", action="store_true", help="do not read the file first")
    ap.add_argument("--json-out", type=Path, default=None, help="write the results here")
    ap.add_argument("--llama-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.llama_child:
        print(json.dumps(one_llamacpp(str(args.model), args.n_prompt, args.n_gen, args.threads)))
        return 0
    ensure_file(args.model, args.layers)
    if not args.no_prewarm:
        print(f"page cache: read the file in {prewarm(args.model):.1f} s", flush=True)
    load0 = os.getloadavg()[0]
    print("llmlens bench ...", flush=True)
    ours = run_ours(args.model, args.n_prompt, args.n_gen, args.threads)
    ref = None
    if not args.no_llama:
        print("llama.cpp ...", flush=True)
        ref = run_llamacpp(args.model, args.n_prompt, args.n_gen, args.threads)
    result = report(args.model, ours, ref, mla_cache_bytes(args.model), (load0, os.getloadavg()[0]))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
