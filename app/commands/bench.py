"""`llmlens bench MODEL [-p 512] [-n 128] [-d DEPTH] [-t THREADS] [--reps 3] [--json]`, like llama-bench.

It also states the CPU, the instruction sets the kernels use, the KV cache bytes per token,
and the machine's memory read bandwidth with the decode speed that bounds (`--no-bandwidth`
skips that probe); `-d N` times prompt and decode after N tokens of cached context.

`--url URL [--api-key K]` measures instead a running OpenAI-compatible server (`llmlens
serve`, llama.cpp's llama-server, vLLM, ...) from its stream, the same way for any of them
(app.remote_backend): time to first token and decode tok/s as they arrive on this side of the
wire, next to what the server reports (`usage`, llama.cpp-style `timings`) when it does.

`--chat-turns N` plays instead an N-turn conversation through the app's prompt building and
engine worker (app/bench_chat.py) and reports, per turn, the time to first token and the prompt
tokens processed and kept in the cache (and the same without keeping the cache).

`--inspect` measures instead what the live trace (engine.trace.LiveTrace: attention rows and
MoE routing of every decode step) costs: decode tok/s with it on and off, interleaved, and
their ratio.
"""

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
    p.add_argument("-d", "--depth", type=int, default=0,
                   help="cache N tokens of context first, then time prompt and decode after them "
                        "(like llama-bench -d; default 0)")
    p.add_argument("--no-bandwidth", action="store_true",
                   help="skip the memory-bandwidth probe (and the decode bound it gives)")
    p.add_argument("--inspect", action="store_true",
                   help="decode speed with the live trace (attention + routing) on vs off")
    p.add_argument("--chat-turns", type=int, default=0, metavar="N",
                   help="play an N-turn chat through the app's code path: TTFT and prompt "
                        "tokens processed per turn")
    p.add_argument("--chat-reply-tokens", type=int, default=16, metavar="N",
                   help="with --chat-turns: tokens generated per reply at most (default 16)")
    p.add_argument("--url", default=None,
                   help="measure the OpenAI-compatible server at URL instead of a local model")
    p.add_argument("--api-key", default=None,
                   help="with --url: the server's API key (default: $LLMLENS_API_KEY if set)")


def run(args: argparse.Namespace) -> int:
    from engine.bench import run_bench

    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    if args.url is not None:
        return _run_url(args, progress)
    path = resolve_model_path(args.model)
    if args.inspect:
        return _run_inspect(args, path, progress)
    if args.chat_turns:
        from app.bench_chat import print_chat_bench, run_chat_bench

        s = run_chat_bench(path, turns=args.chat_turns, max_new_tokens=args.chat_reply_tokens,
                           threads=args.threads, reps=max(1, args.reps), progress=progress)
        print(json.dumps(s)) if args.json else print_chat_bench(s)
        return 0
    result = run_bench(path, n_prompt=args.n_prompt, n_gen=args.n_gen, threads=args.threads,
                       reps=max(1, args.reps), progress=progress, depth=args.depth,
                       bandwidth=not args.no_bandwidth)
    s = result.summary()
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"model   {s['model']}  ({s['file_size_mb']:.1f} MiB, {s['threads']} threads, {s['reps']} reps)")
    _print_machine(s)
    at = f" @ d{s['depth']}" if s["depth"] else ""
    rows = [("prompt", "prompt_tok_s", "tok/s", f"pp{s['n_prompt']}{at}"),
            ("decode", "gen_tok_s", "tok/s", f"tg{s['n_gen']}{at}"),
            ("TTFT", "ttft_s", "s", "32-token prompt"),
            ("load", "load_s", "s", "")]
    for label, key, unit, note in rows:
        print(f"{label:<7} {s[key]:>10.3f} {unit:<6} (min {s[key + '_min']:.3f}, max {s[key + '_max']:.3f}) {note}")
    print(f"memory  RSS before load {s['rss_before_load_mb']:.0f} MiB, peak {s['peak_rss_mb']:.0f} MiB, "
          f"model {s['model_memory_mb']:.0f} MiB = {s['model_memory_ratio']:.2f}x file")
    _print_bound(s)
    return 0


def _print_machine(s: dict) -> None:
    print(f"cpu     {s['cpu']}; has {' '.join(s['cpu_isas']) or 'no SIMD flags reported'}")
    print(f"kernels {s['kernel_isa']} ({s['kernel_path']}: {s['kernel_reason']})")
    if s.get("weight_pages"):
        print(f"weights {s['weight_pages']}")


def _print_bound(s: dict) -> None:
    n_ctx = s["depth"] + s["n_prompt"] + s["n_gen"]
    print(f"KV      {s['kv_cache_bytes_per_token'] / 2**10:.1f} KiB per token of context "
          f"({s['kv_cache_bytes_per_token'] * n_ctx / 2**20:.0f} MiB at {n_ctx} tokens)"
          + (f"; {s['depth']}-token fill at {s['depth_fill_tok_s']:.1f} tok/s" if s["depth"] else ""))
    if s["mem_bandwidth_gbs"] is None:
        return
    per_token = (s["decode_weight_bytes_per_token"] + s["decode_kv_bytes_per_token"]) / 2**20
    print(f"bound   memory read {s['mem_bandwidth_gbs']:.1f} GB/s ({s['threads']}-thread streaming "
          f"read of {s['bandwidth_probe_mb']:.0f} MiB); a decode step reads {per_token:.1f} MiB "
          f"({s['decode_weight_bytes_per_token'] / 2**20:.1f} weights + "
          f"{s['decode_kv_bytes_per_token'] / 2**20:.1f} KV) -> at most "
          f"{s['decode_bound_tok_s']:.1f} tok/s; decode runs at {s['decode_share_of_bound']:.0%} of it")


def _run_inspect(args: argparse.Namespace, path, progress) -> int:
    from engine.bench import run_inspect_bench

    s = run_inspect_bench(path, n_prompt=args.n_prompt, n_gen=args.n_gen, threads=args.threads,
                          reps=max(1, args.reps), progress=progress).summary()
    if args.json:
        print(json.dumps(s))
        return 0
    threads = f"{s['threads']} thread{'s' if s['threads'] != 1 else ''}"
    print(f"model   {s['model']}  ({threads}, {s['reps']} interleaved pairs, "
          f"tg{s['n_gen']} after a {s['n_prompt']}-token prompt)")
    print(f"decode  plain      {s['plain_gen_tok_s']:>10.3f} tok/s")
    print(f"decode  live trace {s['live_gen_tok_s']:>10.3f} tok/s")
    print(f"ratio   {s['live_ratio']:.3f} (live / plain, median of pairs)")
    return 0


# ----------------------------------------------------------------------------- --url

URL_WORDS = ("the of and to in is was for on that with as by at from it his an were are "
             "which this be or had not but one what all their there can when out up so said "
             "time more some would about into than them other river stone light water").split()


def url_bench_prompt(n_words: int, rep: int) -> str:
    """About `n_words` tokens of plain words (common words are one token in most
    vocabularies; the server's `usage` gives the exact count). Each rep starts differently,
    so a server's prompt cache cannot answer from the previous rep."""
    words = [URL_WORDS[(rep * 7 + i * (rep + 3)) % len(URL_WORDS)] for i in range(n_words)]
    return " ".join(words)


def run_url_bench(url: str, api_key: str | None = None, n_prompt: int = 512, n_gen: int = 128,
                  reps: int = 3, model: str | None = None,
                  progress=None) -> dict:
    """`reps` streamed chat requests of ~n_prompt prompt words asking for n_gen tokens;
    medians of what the stream shows (TTFT, decode tok/s between tokens) and of what the
    server says (`usage`, `timings`)."""
    import statistics

    from app.remote_backend import OpenAIClient
    from engine.errors import LLMLensError

    if n_prompt < 1 or n_gen < 2 or reps < 1:
        raise LLMLensError(f"--url needs -p >= 1, -n >= 2 (a decode speed needs two tokens) "
                           f"and --reps >= 1 (got -p {n_prompt} -n {n_gen} --reps {reps})")
    rows = []
    with OpenAIClient(url, api_key, model=model) as client:
        try:
            name = model or client.models()[0]
        except (ConnectionError, IndexError) as exc:
            raise LLMLensError(f"cannot bench {url}: {exc or 'it serves no model'}") from None
        client.model = name
        for rep in range(reps):
            messages = [("user", url_bench_prompt(n_prompt, rep))]
            done = list(client.stream_chat(messages, {"max_tokens": n_gen, "temperature": 0,
                                                      "ignore_eos": True}))[-1]
            if done.reason == "error":
                raise LLMLensError(f"rep {rep + 1}: {done.message}")
            t, st = done.timings, done.timings.server or {}
            row = {"ttft_s": t.ttft_s, "gen_tok_s": t.gen_tok_s, "gen_tokens": t.gen_tokens,
                   "pieces": len(t.per_token_s), "prompt_tokens": t.prompt_tokens,
                   "server_prompt_tok_s": st.get("prompt_per_second"),
                   "server_gen_tok_s": st.get("predicted_per_second")}
            rows.append(row)
            if progress:
                progress(f"rep {rep + 1}/{reps}: TTFT {_ms(row['ttft_s'])}, decode "
                         f"{row['gen_tok_s']:.1f} tok/s over {row['pieces']} pieces"
                         + (f" (server: {row['server_gen_tok_s']:.1f} tok/s)"
                            if row["server_gen_tok_s"] else ""))

    def median(key: str):
        values = [r[key] for r in rows if r[key] is not None]
        return round(statistics.median(values), 4) if values else None

    return {"url": client.base_url, "model": name, "n_prompt_words": n_prompt, "n_gen": n_gen,
            "reps": reps, **{k: median(k) for k in rows[0]},
            "ttft_s_all": [r["ttft_s"] for r in rows],
            "gen_tok_s_all": [round(r["gen_tok_s"], 4) for r in rows]}


def _count(n: float | None) -> str:
    return f"{n:g}" if n else "?"  # a median of counts may fall between two


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def _run_url(args: argparse.Namespace, progress) -> int:
    import os

    s = run_url_bench(args.url, args.api_key or os.environ.get("LLMLENS_API_KEY") or None,
                      n_prompt=args.n_prompt, n_gen=args.n_gen, reps=max(1, args.reps),
                      model=args.model, progress=progress)
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"server  {s['url']}  model {s['model']}  ({s['reps']} reps, ~{s['n_prompt_words']}-word "
          f"prompt, {_count(s['prompt_tokens'])} tokens by the server's count)")
    print(f"TTFT    {_ms(s['ttft_s']):>10}        (request sent -> first text, from the stream)")
    print(f"decode  {s['gen_tok_s'] or 0:>10.3f} tok/s  (from the stream: pieces after the first "
          f"/ their time; {_count(s['gen_tokens'])} tokens by the server's count)")
    if s["server_gen_tok_s"] is not None:
        print(f"server  prompt {s['server_prompt_tok_s'] or 0:.3f} tok/s, decode "
              f"{s['server_gen_tok_s']:.3f} tok/s (its own `timings`)")
    return 0
