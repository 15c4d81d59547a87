"""`llmlens render-template [MODEL] --messages FILE.json [--template FILE.jinja]
[--no-generation-prompt]`: print the exact prompt text a chat would send to the model.

The file's `tokenizer.chat_template` (or `--template`, or the documented fallback for files
without one, see `engine.chat_template`) is rendered in the sandbox with the file's BOS/EOS
strings. FILE.json holds a list of {"role", "content"} objects (or {"messages": [...]});
"-" reads it from stdin. The text is written as-is, with no newline added.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.chat_template import render_chat
from engine.default_model import resolve_model_path
from engine.errors import LLMLensError
from engine.gguf.reader import open_gguf


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render-template", help="print the prompt a chat template makes",
                       description="Render MODEL's chat template (MODEL omitted or 'default': "
                                   "the embedded model) for the messages in FILE.json.")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: embedded model)")
    p.add_argument("--messages", required=True, metavar="FILE.json",
                   help='JSON list of {"role": ..., "content": ...} ("-" = stdin)')
    p.add_argument("--template", metavar="FILE.jinja", help="use this template instead")
    p.add_argument("--no-generation-prompt", action="store_true",
                   help="do not open an assistant turn at the end")


def _read_text(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LLMLensError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LLMLensError(f"{what} {path} is not UTF-8 text") from None


def _messages(path: str) -> list[dict]:
    try:
        data = json.loads(_read_text(path, "messages file"))
    except json.JSONDecodeError as exc:
        raise LLMLensError(f"messages file {path}: invalid JSON ({exc.msg}, line {exc.lineno})") \
            from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        raise LLMLensError(f"messages file {path}: expected a list of message objects")
    return data


def run(args: argparse.Namespace) -> int:
    messages = _messages(args.messages)
    template = _read_text(args.template, "template") if args.template else None
    with open_gguf(resolve_model_path(args.model)) as gf:
        metadata = gf.metadata
        source = dict(metadata)
        if template is not None:
            source["tokenizer.chat_template"] = template
        text = render_chat(source, messages, add_generation_prompt=not args.no_generation_prompt)
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
