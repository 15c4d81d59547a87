"""Where a decode step (or a prompt pass) spends its time: torch.profiler over real forwards.

    python tests/bench/profile_decode.py [MODEL] [-t 2] [--steps 16] [--prompt 0] [--ctx 512]

Loads MODEL (default: the embedded Gemma 3 270M), fills the cache with `--ctx` tokens, then
profiles `--steps` one-token decode steps (or, with `--prompt N`, one N-token prompt pass).
The fused kernels are C++ calls that torch.profiler cannot see, so every Linear / QuantLinear
call is wrapped in a `record_function` labelled "linear:<type>" (its time includes the
kernel); the table then splits the step into matmuls, attention, norms and the Python glue
(wall time per step minus the profiled ops).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402


def _instrument() -> None:
    """Label every linear call so kernel time shows up in the profile."""
    from engine.linear import Linear
    from engine.quant_linear import QuantLinear

    for cls, tag in ((QuantLinear, None), (Linear, "F32")):
        orig = cls.__call__

        def call(self, x, _orig=orig, _tag=tag):
            label = f"linear:{_tag or self.type_name}:T={'1' if x.shape[0] == 1 else 'N'}"
            with record_function(label):
                return _orig(self, x)

        cls.__call__ = call


def main() -> None:
    from engine.default_model import default_model_path
    from engine.models.base import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=512, help="tokens in the cache before decoding")
    ap.add_argument("--prompt", type=int, default=0, help="profile one prompt pass of N tokens")
    ap.add_argument("--rows", type=int, default=22)
    args = ap.parse_args()
    path = args.model or default_model_path()
    model = load_model(path, n_ctx=max(args.ctx, args.prompt) + args.steps + 8, threads=args.threads)
    _instrument()
    cache = model.new_cache()
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if args.prompt:
            ids = torch.randint(100, model.n_vocab - 1, (args.prompt,), generator=gen)
            model.forward(ids[:16], cache, 0, all_logits=False)  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                model.forward(ids, cache, 0, all_logits=False)
                wall = time.perf_counter() - t0
            n = 1
            what = f"one {args.prompt}-token prompt pass"
        else:
            ids = torch.randint(100, model.n_vocab - 1, (args.ctx,), generator=gen)
            model.forward(ids, cache, 0, all_logits=False)
            tok = torch.tensor([7])
            for i in range(4):  # warm-up
                model.forward(tok, cache, args.ctx + i, all_logits=False)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                for i in range(args.steps):
                    model.forward(tok, cache, args.ctx + 4 + i, all_logits=False)
                wall = time.perf_counter() - t0
            n = args.steps
            what = f"{args.steps} decode steps at context {args.ctx}"
    print(f"{Path(path).name}, {args.threads} threads, {what}: "
          f"{wall / n * 1e3:.2f} ms per {'pass' if args.prompt else 'step'} (profiled)")
    avgs = prof.key_averages()
    linear_ms = sum(e.cpu_time_total for e in avgs if e.key.startswith("linear:")) / 1e3 / n
    top_ms = sum(e.self_cpu_time_total for e in avgs) / 1e3 / n
    print(f"  linear layers (incl. kernels): {linear_ms:.2f} ms; all profiled ops: {top_ms:.2f} ms; "
          f"unprofiled (Python glue, profiler overhead): {wall / n * 1e3 - top_ms:.2f} ms")
    print(avgs.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
