"""`llmlens info MODEL [--json]`: a GGUF file's summary and tensor table, without loading it."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from engine.default_model import resolve_model_path
from engine.gguf.reader import StringArray, open_gguf
from engine.gguf.summary import human_bytes, summarize

MAX_JSON_ARRAY = 64


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a GGUF file's summary, metadata and tensors")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the embedded model)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _json_value(value: Any, type_name: str) -> Any:
    if isinstance(value, (list, np.ndarray, StringArray)):
        if len(value) > MAX_JSON_ARRAY:
            return {"type": type_name, "length": len(value)}
        return value.tolist() if isinstance(value, np.ndarray) else list(value)
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def info_json(gf) -> dict[str, Any]:
    return {
        "path": str(gf.path),
        "metadata": {k: _json_value(v, gf.metadata_types[k]) for k, v in gf.metadata.items()},
        "tensors": [
            {"name": t.name, "shape": list(t.shape), "type": t.type_name,
             "n_elements": t.n_elements, "n_bytes": t.n_bytes, "offset": t.offset}
            for t in gf.tensors
        ],
        "summary": summarize(gf).as_dict(),
    }


def _print_text(gf) -> None:
    summary = summarize(gf)
    print(f"{gf.path}  (GGUF v{gf.version})")
    width = max(len(label) for label, _ in summary.display_rows())
    for label, text in summary.display_rows():
        print(f"  {label:<{width}}  {text}")
    print()
    name_w = max((len(t.name) for t in gf.tensors), default=4)
    print(f"  {'name':<{name_w}}  {'shape':<22} {'type':<7} {'elements':>13} {'bytes':>12} {'offset':>12}")
    for t in gf.tensors:
        shape = "×".join(map(str, t.shape))
        print(f"  {t.name:<{name_w}}  {shape:<22} {t.type_name:<7} {t.n_elements:>13,} "
              f"{human_bytes(t.n_bytes):>12} {t.offset:>12}")


def run(args: argparse.Namespace) -> int:
    path = resolve_model_path(args.model)
    with open_gguf(path) as gf:
        if args.json:
            print(json.dumps(info_json(gf), ensure_ascii=False))
        else:
            _print_text(gf)
    return 0
