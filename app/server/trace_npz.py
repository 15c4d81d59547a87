"""An `engine.inspect.Inspection` as .npz bytes, the body of `POST /v1/lens/trace`.

The array names and layout are `engine.inspect.to_arrays`'s, the same `llmlens trace` writes.
"""

from __future__ import annotations

import io

import numpy as np


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz file in memory (what np.savez writes to disk)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
