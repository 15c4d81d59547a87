"""`llmlens tokenize [MODEL] TEXT [--no-special] [--json] [--pieces]` and
`llmlens tokenize [MODEL] --jsonl [--no-special]`: token ids from a GGUF vocabulary.

Only the file's metadata is read (no weights). By default BOS/EOS are added as the file asks
and special-token texts such as `<start_of_turn>` become their ids; `--no-special` does
neither (llama.cpp's `add_special=false, parse_special=false`). `--jsonl` reads one JSON string
per line from stdin and prints one JSON list of ids per line, with a single model load.
"""

from __future__ import annotations

import argparse
import json
import sys

from engine.default_model import resolve_model_path
from engine.errors import LLMLensError
from engine.gguf.reader import open_gguf
from engine.tokenizer import load_tokenizer


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="print the token ids of a text",
                       description="Token ids of TEXT with MODEL's vocabulary (MODEL omitted or "
                                   "'default': the embedded model).")
    p.add_argument("args", nargs="*", metavar="[MODEL] TEXT",
                   help="GGUF file (optional) and the text; with --jsonl only the file")
    p.add_argument("--no-special", action="store_true",
                   help="add no BOS/EOS and treat special-token texts as plain text")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help='print {"ids": [...]}')
    out.add_argument("--jsonl", action="store_true",
                     help="read one JSON string per line from stdin, print one id list per line")
    out.add_argument("--pieces", action="store_true", help="print one 'id<TAB>piece' per line")


def _split_args(args: argparse.Namespace) -> tuple[str | None, str | None]:
    pos = list(args.args)
    if args.jsonl:
        if len(pos) > 1:
            raise LLMLensError("tokenize --jsonl takes only MODEL (the texts come from stdin)")
        return (pos[0] if pos else None), None
    if not pos:
        raise LLMLensError("tokenize needs a TEXT (usage: llmlens tokenize [MODEL] TEXT)")
    if len(pos) > 2:
        raise LLMLensError("tokenize takes [MODEL] TEXT; quote a text that has spaces")
    return (pos[0], pos[1]) if len(pos) == 2 else (None, pos[0])


def run(args: argparse.Namespace) -> int:
    model, text = _split_args(args)
    with open_gguf(resolve_model_path(model)) as gf:
        tok = load_tokenizer(gf)
    special = not args.no_special

    def encode(s: str) -> list[int]:
        return tok.encode(s, add_special=special, parse_special=special)

    if args.jsonl:
        for lineno, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LLMLensError(f"stdin line {lineno}: not JSON ({exc.msg})") from None
            if not isinstance(item, str):
                raise LLMLensError(f"stdin line {lineno}: expected a JSON string")
            sys.stdout.write(json.dumps(encode(item)) + "\n")
        return 0
    ids = encode(text)
    if args.json:
        print(json.dumps({"ids": ids}))
    elif args.pieces:
        for i in ids:
            print(f"{i}\t{tok.token_text(i)!r}")
    else:
        print(" ".join(map(str, ids)))
    return 0
