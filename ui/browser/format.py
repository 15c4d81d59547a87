"""Small text formatters shared by the browser views (sizes, counts, shapes, metadata values)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ui.format import human_bytes  # noqa: F401  (the app's one byte formatter, re-exported)

_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"})


def shape_text(shape: tuple[int, ...]) -> str:
    return " × ".join(str(d) for d in shape)


def visible(s: str) -> str:
    """A one-line rendering of a string: control characters escaped, so rows stay one line."""
    return s.translate(_ESCAPES)


def number(v: Any, type_name: str = "") -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        if type_name == "float32" or isinstance(v, np.float32):
            return str(np.float32(v))  # shortest repr that round-trips in float32: 1e-06, not 9.99e-07
        return repr(float(v))
    return str(v)


def stat_text(v: float) -> str:
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if math.isnan(v):
        return "—"
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.6g}"
    return f"{v:.4e}"


def value_preview(value: Any, type_name: str, max_chars: int = 160) -> str:
    """One-line text for a metadata value; arrays show their length and first items."""
    if type_name.startswith("array") or isinstance(value, (list, np.ndarray)):
        n = len(value)
        item_type = type_name[6:-1] if type_name.startswith("array[") else ""
        head = []
        used = 0
        for item in value[:16]:
            text = repr(visible(item)) if isinstance(item, str) else number(item, item_type)
            used += len(text) + 2
            if used > max_chars and head:
                break
            head.append(text)
        more = ", …" if len(head) < n else ""
        return f"[{n:,}] " + ", ".join(head) + more
    if isinstance(value, str):
        text = visible(value)
        if len(text) > max_chars:
            return text[:max_chars] + f"… ({len(value):,} chars)"
        return text
    return number(value, type_name)
