"""Statistics, histogram and a pooled heatmap of one GGUF tensor, computed chunk by chunk.

`analyse_tensor` is a generator (run it in `app.workers.Worker`): it dequantizes a tensor a
few million values at a time, so memory stays bounded (a 262144 x 640 embedding never exists
as one float32 array), yields progress after every chunk (the worker's cancellation point)
and returns a `TensorAnalysis` of plain numpy data for the UI.

The histogram is exact in one pass even though the value range is unknown until the end:
bins sit on a dyadic grid (width 2**k, bin i covers [i * 2**k, (i + 1) * 2**k)). Dividing by a
power of two is exact in float64, so binning is exact; when a later chunk widens the range,
k grows by one and neighbouring bins merge exactly (i -> floor(i / 2)). The result equals
`np.histogram(values, bins=edges)` for the returned edges.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from engine.gguf.dequant import dequantize_chunks, dequantize_rows, n_rows
from engine.gguf.reader import GGUFFile, TensorInfo

MAX_BINS = 256
IMAGE_MAX_ROWS = 512
IMAGE_MAX_COLS = 1024
CHUNK_VALUES = 1 << 21  # 8 MiB of float32 per chunk: small steps keep cancel and the GIL snappy


@dataclass(frozen=True)
class Progress:
    done_rows: int
    total_rows: int

    @property
    def fraction(self) -> float:
        return self.done_rows / self.total_rows if self.total_rows else 1.0


@dataclass(frozen=True)
class TensorAnalysis:
    name: str
    n_values: int
    n_nonfinite: int
    min: float
    max: float
    mean: float
    std: float
    zero_fraction: float
    hist_edges: np.ndarray   # [n_bins + 1] float64
    hist_counts: np.ndarray  # [n_bins] int64
    image: np.ndarray        # [H, W] float32: block means of the (rows, row_len) view
    row_factor: int          # each image pixel averages row_factor x col_factor values
    col_factor: int
    rows: int                # shape of the 2-D view: leading dims flattened x last dim
    cols: int

    def stats(self) -> dict[str, float | int]:
        return {"min": self.min, "max": self.max, "mean": self.mean, "std": self.std,
                "zeros": self.zero_fraction, "non-finite": self.n_nonfinite,
                "values": self.n_values}


class DyadicHistogram:
    """Exact one-pass histogram on power-of-two bins; see the module docstring."""

    def __init__(self, max_bins: int = MAX_BINS):
        self.max_bins = max_bins
        self.k: int | None = None
        self.lo = 0  # index of counts[0]
        self.counts = np.zeros(0, dtype=np.int64)

    def _span(self, lo_v: float, hi_v: float, k: int) -> tuple[int, int]:
        w = math.ldexp(1.0, k)
        return math.floor(lo_v / w), math.floor(hi_v / w)

    def _initial_k(self, lo_v: float, hi_v: float) -> int:
        span = hi_v - lo_v
        if span > 0:
            k = math.floor(math.log2(span / self.max_bins))
        else:
            mag = abs(hi_v)
            k = math.floor(math.log2(mag)) - 7 if mag > 0 else 0
        while True:  # the rounding of floor() can need one or two bins more
            a, b = self._span(lo_v, hi_v, k)
            if b - a + 1 <= self.max_bins:
                return k
            k += 1

    def add(self, x: np.ndarray) -> None:
        """Add finite float32 values (any shape)."""
        if x.size == 0:
            return
        x = x.reshape(-1)
        lo_v, hi_v = float(x.min()), float(x.max())
        if self.k is None:
            self.k = self._initial_k(lo_v, hi_v)
            a, b = self._span(lo_v, hi_v, self.k)
            self.lo, self.counts = a, np.zeros(b - a + 1, dtype=np.int64)
        else:
            cur_lo_v = self.lo * math.ldexp(1.0, self.k)
            cur_hi_v = (self.lo + len(self.counts) - 1) * math.ldexp(1.0, self.k)
            lo_v, hi_v = min(lo_v, cur_lo_v), max(hi_v, cur_hi_v)
            while True:
                a, b = self._span(lo_v, hi_v, self.k)
                if b - a + 1 <= self.max_bins:
                    break
                self._coarsen()
            self._extend(a, b)
        # Scaling by a power of two, floor, and subtracting an integer are all exact in float32
        # (integers this small are representable), so no float64 copy of the chunk is needed.
        t = np.multiply(x, np.float32(math.ldexp(1.0, -self.k)), dtype=np.float32)
        np.floor(t, out=t)
        t -= np.float32(self.lo)
        self.counts += np.bincount(t.astype(np.intp), minlength=len(self.counts))

    def _coarsen(self) -> None:
        old = np.arange(self.lo, self.lo + len(self.counts), dtype=np.int64)
        new_lo = self.lo // 2
        new_idx = old // 2 - new_lo  # floor division: exact merge of bin pairs
        self.counts = np.bincount(new_idx, weights=self.counts,
                                  minlength=int(new_idx[-1]) + 1).astype(np.int64)
        self.lo = new_lo
        self.k += 1

    def _extend(self, a: int, b: int) -> None:
        hi = self.lo + len(self.counts) - 1
        front, back = max(0, self.lo - a), max(0, b - hi)
        if front or back:
            self.counts = np.concatenate([np.zeros(front, np.int64), self.counts,
                                          np.zeros(back, np.int64)])
            self.lo -= front

    def edges(self) -> np.ndarray:
        if self.k is None:
            return np.zeros(1)
        w = math.ldexp(1.0, self.k)
        return (self.lo + np.arange(len(self.counts) + 1, dtype=np.float64)) * w


class RunningStats:
    """Count, min, max, mean, variance (Chan et al. pairwise merge), zeros, non-finite."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.zeros = 0
        self.nonfinite = 0
        self.total = 0

    def add(self, x: np.ndarray) -> np.ndarray:
        """Add a chunk; returns its finite values (for the histogram)."""
        x = x.reshape(-1)
        self.total += x.size
        self.zeros += int(np.count_nonzero(x == 0))
        finite = np.isfinite(x)
        n_fin = int(np.count_nonzero(finite))
        if n_fin != x.size:
            self.nonfinite += x.size - n_fin
            x = x[finite]
        if x.size == 0:
            return x
        mean_b = float(x.sum(dtype=np.float64)) / x.size
        d = x - np.float32(mean_b)
        m2_b = float(np.dot(d, d))  # float32 dot: plenty for display, and no float64 copy
        n_a, n_b = self.n, x.size
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.n = n
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        return x

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else math.nan


def _pool(block: np.ndarray, row_factor: int, col_factor: int) -> np.ndarray:
    """Block means of `block` [r, c] over row_factor x col_factor tiles (ragged edges kept)."""
    r, c = block.shape
    if row_factor == 1 and col_factor == 1:
        return block.astype(np.float32, copy=True)
    row_starts = np.arange(0, r, row_factor)
    col_starts = np.arange(0, c, col_factor)
    sums = block
    if row_factor > 1:
        sums = np.add.reduceat(sums, row_starts, axis=0, dtype=np.float64)
    if col_factor > 1:
        sums = np.add.reduceat(sums, col_starts, axis=1, dtype=np.float64)
    row_n = np.diff(np.append(row_starts, r))
    col_n = np.diff(np.append(col_starts, c))
    return (sums / np.outer(row_n, col_n)).astype(np.float32)


def view_shape(info: TensorInfo) -> tuple[int, int]:
    """The 2-D view shown as a heatmap: leading dims flattened x the last (row) dim."""
    return n_rows(info), info.shape[-1]


def analyse_tensor(gf: GGUFFile, info: TensorInfo, chunk_values: int = CHUNK_VALUES,
                   max_image: tuple[int, int] = (IMAGE_MAX_ROWS, IMAGE_MAX_COLS),
                   ) -> Generator[Progress, None, TensorAnalysis]:
    """Yield `Progress` after each chunk; return the full `TensorAnalysis`."""
    rows, cols = view_shape(info)
    row_factor = max(1, -(-rows // max_image[0]))
    col_factor = max(1, -(-cols // max_image[1]))
    # Chunks hold whole row tiles so that pooling never straddles two chunks.
    rows_per_chunk = max(row_factor, (max(1, chunk_values // cols) // row_factor) * row_factor)
    stats = RunningStats()
    hist = DyadicHistogram()
    tiles: list[np.ndarray] = []
    yield Progress(0, rows)
    for start, chunk in dequantize_chunks(gf, info, rows_per_chunk):
        values = chunk.numpy()  # [n, cols] float32
        hist.add(stats.add(values))
        tiles.append(_pool(values, row_factor, col_factor))
        del chunk, values
        yield Progress(min(rows, start + rows_per_chunk), rows)
    return TensorAnalysis(
        name=info.name, n_values=stats.total, n_nonfinite=stats.nonfinite,
        min=stats.min if stats.n else math.nan, max=stats.max if stats.n else math.nan,
        mean=stats.mean if stats.n else math.nan, std=stats.std,
        zero_fraction=stats.zeros / stats.total if stats.total else 0.0,
        hist_edges=hist.edges(), hist_counts=hist.counts.copy(),
        image=np.concatenate(tiles, axis=0) if tiles else np.zeros((0, 0), np.float32),
        row_factor=row_factor, col_factor=col_factor, rows=rows, cols=cols)


def slice_image(gf: GGUFFile, info: TensorInfo, start_row: int, n: int,
                max_cols: int = IMAGE_MAX_COLS) -> tuple[np.ndarray, int]:
    """Rows [start_row, start_row + n) of the 2-D view, unpooled along rows: (image, col_factor)."""
    rows, cols = view_shape(info)
    n = max(0, min(n, rows - start_row))
    col_factor = max(1, -(-cols // max_cols))
    values = dequantize_rows(gf, info, start_row, n).numpy()  # [n, cols]: reads only these rows
    return _pool(values, 1, col_factor), col_factor
