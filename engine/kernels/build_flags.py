"""Compiler flags of the fused kernels, shared by the install-time build (setup.py) and the
runtime build (engine/kernels/__init__.py).

Only the standard library: setup.py executes this file directly, before torch or the `engine`
package can be imported.
"""

import hashlib
from pathlib import Path

# The kernels are written with AVX2/FMA/F16C intrinsics and parallelised with OpenMP.
CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
# /proc/cpuinfo flag names the CPU must have for the library to be loaded at all.
REQUIRED_CPU_FLAGS = ("avx2", "fma", "f16c")


def source_tag(source: Path) -> str:
    """A short hash of the kernel source, compiled into the library (`source_hash`): the loader
    refuses an installed library built from another source (an edited checkout)."""
    return "h" + hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]


def source_define(source: Path) -> str:
    return f"-DLLMLENS_SOURCE_HASH={source_tag(source)}"
