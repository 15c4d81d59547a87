"""`llmlens trace [MODEL] (--ids 1,2,3 | -p TEXT) --out FILE.npz`: attention, routing and
logit lens of one teacher-forced pass (engine.inspect), as plain numpy arrays.

The .npz holds (L = transformer-layer index, T = tokens, R = rows kept by --rows, default T):
`ids` int32 [T]; `rows` int32 [2] (the query rows [a, b) of attn and lens);
`attn.L` float32 [n_head, R, T]; for MoE layers `router_probs.L` float32 [T, n_expert],
`topk_ids.L` int32 [T, k], `topk_weights.L` float32 [T, k], and where the router ranks
experts by bias-corrected scores (DeepSeek-V3, GLM-4.5, ERNIE 4.5) `select_scores.L` float32
[T, n_expert] and, for group-limited routing, `groups_kept.L` int32 [T, n_groups_used] (why
an expert with a lower router_probs score can be chosen); `lens_ids.L` int32 [R, 10],
`lens_logits.L` float32 [R, 10] (engine.inspect.to_arrays).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.commands.logits import _parse_ids
from engine.default_model import resolve_model_path
from engine.errors import LLMLensError
from engine.inspect import KINDS, inspect, to_arrays
from engine.models.base import load_model

LENS_K = 10


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="write attention, MoE routing and logit lens of one "
                                     "forward pass to a .npz file")
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF file, or 'default' for the embedded model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", help="comma-separated token ids")
    src.add_argument("-p", "--prompt", help="text to tokenize instead of --ids (with BOS)")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--what", default=",".join(KINDS),
                   help=f"comma-separated subset of {','.join(KINDS)} (default: all)")
    p.add_argument("--rows", default=None, metavar="A:B",
                   help="query rows [A, B) of attention and lens (default: all)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")


def _parse_what(text: str) -> tuple[str, ...]:
    what = tuple(dict.fromkeys(w.strip() for w in text.split(",") if w.strip()))
    bad = [w for w in what if w not in KINDS]
    if bad or not what:
        raise LLMLensError(f"--what takes a comma-separated subset of {','.join(KINDS)}, "
                           f"got {text!r}")
    return what


def _parse_rows(text: str | None, n: int) -> tuple[int, int] | None:
    if text is None:
        return None
    a, sep, b = text.partition(":")
    try:
        lo = int(a) if a.strip() else 0
        hi = int(b) if b.strip() else n
    except ValueError:
        lo = hi = -1
    if not sep or not 0 <= lo < hi <= n:
        raise LLMLensError(f"--rows must be A:B with 0 <= A < B <= {n} (the token count), "
                           f"got {text!r}")
    return lo, hi


def run(args: argparse.Namespace) -> int:
    what = _parse_what(args.what)
    if not str(args.out).endswith(".npz"):
        raise LLMLensError(f"--out must name a .npz file, got {args.out!r}")
    if not Path(args.out).resolve().parent.is_dir():  # before a pass that may take minutes
        raise LLMLensError(f"cannot write {args.out}: its folder does not exist")
    path = resolve_model_path(args.model)
    if args.ids is not None:
        ids = _parse_ids(args.ids)
        model = load_model(path, n_ctx=len(ids), threads=args.threads)
    else:
        from engine.tokenizer import load_tokenizer

        model = load_model(path, n_ctx=1, threads=args.threads)  # inspect() sizes its own cache
        ids = load_tokenizer(model.gguf).encode(args.prompt, add_special=True, parse_special=True)
    rows = _parse_rows(args.rows, len(ids))
    res = inspect(model, ids, what=what, rows=rows, lens_k=LENS_K)
    arrays = to_arrays(res)
    try:
        np.savez(args.out, **arrays)
    except OSError as exc:
        raise LLMLensError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"wrote {args.out}: {len(ids)} tokens, rows {res.rows[0]}:{res.rows[1]}, "
          f"{len(res.attn)} attention / {len(res.topk_ids)} MoE / {len(res.lens_ids)} lens layers")
    return 0
