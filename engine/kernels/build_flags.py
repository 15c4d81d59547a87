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


def kernel_files(source: Path) -> list[Path]:
    """The translation unit and the headers beside it that it includes (blocks.h, per-arch)."""
    source = Path(source)
    return [source, *sorted(source.parent.glob("*.h"))]


def source_tag(source: Path) -> str:
    """A short hash of the kernel sources, compiled into the library (`source_hash`): the loader
    refuses an installed library built from other sources (an edited checkout)."""
    h = hashlib.sha256()
    for f in kernel_files(source):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return "h" + h.hexdigest()[:16]


def source_define(source: Path) -> str:
    return f"-DLLMLENS_SOURCE_HASH={source_tag(source)}"
