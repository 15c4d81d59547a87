"""`llmlens logits [MODEL] --ids 1,2,3 --out FILE.npy`: raw logits of one forward pass.

Writes float32 [n_ids, n_vocab]: row i is the distribution after ids[: i + 1]. `-p TEXT`
tokenizes a prompt instead (with BOS, as generation would).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from engine.default_model import resolve_model_path
from engine.errors import LLMLensError
from engine.models.base import load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("logits", help="write the logits of one forward pass to a .npy file")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the embedded model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", help="comma-separated token ids")
    src.add_argument("-p", "--prompt", help="text to tokenize instead of --ids")
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise LLMLensError(f"--ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise LLMLensError("--ids is empty")
    return ids


def run(args: argparse.Namespace) -> int:
    path = resolve_model_path(args.model)
    if args.ids is not None:
        ids = _parse_ids(args.ids)
        model = load_model(path, n_ctx=len(ids), threads=args.threads)
    else:
        from engine.tokenizer import load_tokenizer

        model = load_model(path, n_ctx=1, threads=args.threads)  # cache sized below
        ids = load_tokenizer(model.gguf).encode(args.prompt, add_special=True, parse_special=True)
    bad = [i for i in ids if not 0 <= i < model.n_vocab]
    if bad:
        raise LLMLensError(f"token ids out of range [0, {model.n_vocab}): {bad[:10]}")
    logits = model.forward(torch.tensor(ids), model.new_cache(len(ids)), 0)  # [T, V]
    np.save(args.out, logits.numpy().astype(np.float32, copy=False))
    print(f"wrote {args.out}: float32 {list(logits.shape)}")
    return 0
