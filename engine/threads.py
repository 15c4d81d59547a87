"""CPU thread policy: one place decides how many threads the engine's kernels use."""

from __future__ import annotations

import os

import psutil
import torch


def default_threads() -> int:
    """All physical cores: hyper-threads share the FPUs that matrix kernels saturate."""
    env = os.environ.get("LLMLENS_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Apply a thread count to torch (intra-op) once; returns the count in force.

    Inter-op parallelism is pinned to one thread so that torch never runs two kernels at once,
    each with a full team of threads (oversubscription doubles latency on a 2-core machine).
    """
    n = threads if threads and threads > 0 else default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # Only settable before the first parallel op; later calls keep the earlier value.
    return n
