"""Owned memory for packed weights, in transparent huge pages where the OS gives them.

A decode step streams every weight once. In 4 KiB pages that costs a TLB miss every 4 KiB and
stops the hardware prefetchers at every page boundary; in 2 MiB pages it does not. Measured on
the default model (2026-11-29, 2-core Xeon, 2 threads, same process layout): decode 47 -> 61
tok/s with the same bytes moved into huge pages. Linux gives huge pages to anonymous memory
only where a program asks (THP mode "madvise", the usual default); torch's allocator does not
ask, and numpy asks only for single arrays of 4 MiB and more, while most weights are ~1 MB.
So the weights of one file are carved out of a few large anonymous maps advised
MADV_HUGEPAGE (`WeightArena`), one arena per open file, freed with the last weight using it.

Set LLMLENS_HUGE_PAGES=0 to allocate with torch as before (an A/B switch for benchmarks).
Where mmap has no MADV_HUGEPAGE (macOS, Windows), weights are plain torch tensors.
"""

from __future__ import annotations

import mmap
import os
import threading

import torch

__all__ = ["WeightArena", "huge_pages_enabled", "arena_for", "weight_pages"]

HUGE_PAGE = 2 << 20
CHUNK_BYTES = 64 << 20  # virtual; only the pages written become resident
ALIGN = 64  # a cache line, as torch's allocator aligns


def huge_pages_enabled() -> bool:
    """Whether weights go to madvised anonymous maps (Linux with THP, not switched off)."""
    if os.environ.get("LLMLENS_HUGE_PAGES", "") == "0":
        return False
    return hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_ANONYMOUS")


def _thp_mode() -> str | None:
    """The system's transparent-huge-page mode ("always", "madvise", "never"), if it says."""
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def weight_pages(owner: object | None = None) -> str:
    """Where packed weights live, for `llmlens bench` ("huge pages (THP madvise)", ...); given
    the model's open file, whether its weights really went to an arena."""
    if os.environ.get("LLMLENS_HUGE_PAGES", "") == "0":
        return "4 KiB pages (LLMLENS_HUGE_PAGES=0)"
    if not huge_pages_enabled():
        return "4 KiB pages (no transparent huge pages on this OS)"
    mode = _thp_mode()
    if mode == "never":
        return "4 KiB pages (transparent huge pages are off: THP never)"
    if owner is not None and getattr(owner, "_weight_arena", None) is None:
        return "4 KiB pages (no packed weight copied: portable path or float32 weights)"
    return f"huge pages (THP {mode})" if mode else "huge pages (asked for; THP mode unknown)"


class WeightArena:
    """Bump allocation of uint8 tensors out of large anonymous maps advised MADV_HUGEPAGE.

    Each tensor keeps its map alive (torch.frombuffer holds the buffer), so a map is unmapped
    once the arena has moved on and every tensor carved from it is gone. Nothing is ever freed
    inside a map: weights live as long as their model.
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES):
        self._chunk_bytes = chunk_bytes
        self._map: mmap.mmap | None = None
        self._pos = 0
        self._lock = threading.Lock()

    def empty(self, n_bytes: int) -> torch.Tensor:
        """An uninitialised uint8 tensor of `n_bytes`, 64-byte aligned."""
        if n_bytes <= 0:
            return torch.empty(0, dtype=torch.uint8)
        with self._lock:
            if n_bytes > self._chunk_bytes // 2:  # large: a map of its own, the chunk stays
                mm, start = self._new_map(n_bytes)
                return torch.frombuffer(mm, dtype=torch.uint8, count=n_bytes, offset=start)
            if self._map is None or self._pos + n_bytes > len(self._map):
                self._map, self._pos = self._new_map(self._chunk_bytes)
            start = self._pos
            self._pos = start + n_bytes + (-(start + n_bytes) % ALIGN)
            return torch.frombuffer(self._map, dtype=torch.uint8, count=n_bytes, offset=start)

    @staticmethod
    def _new_map(n_bytes: int) -> tuple[mmap.mmap, int]:
        """A map of at least `n_bytes` from a huge-page boundary, and that boundary's offset
        (an anonymous map is only page-aligned; huge pages cover aligned 2 MiB spans)."""
        size = n_bytes + HUGE_PAGE
        size += -size % mmap.PAGESIZE
        mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # THP compiled out or disabled: plain pages, still correct
            pass
        base = torch.frombuffer(mm, dtype=torch.uint8, count=1).data_ptr()
        return mm, -base % HUGE_PAGE


def arena_for(owner: object) -> WeightArena | None:
    """The arena of `owner` (an open GGUF file), made on first use; None where huge pages are
    off or unavailable (the caller then allocates with torch)."""
    if not huge_pages_enabled():
        return None
    arena = getattr(owner, "_weight_arena", None)
    if arena is None:
        arena = owner._weight_arena = WeightArena()
    return arena
