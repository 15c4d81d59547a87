"""Text formatters shared by the whole app: byte sizes (1024-based, so KiB/MiB/GiB) and counts.

One formatter for every view (browser, status bar, inspection panels), so a size reads the
same everywhere.
"""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """`1536` -> "1.50 KiB": 1024-based units, named as such."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    """A parameter or token count: 270M, 1.2B (decimal, as models are named)."""
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M"
    if n >= 1e3:
        return f"{n / 1e3:.0f}K"
    return str(n)
