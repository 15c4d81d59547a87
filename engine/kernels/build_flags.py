"""Compiler flags of the fused kernels, per CPU architecture and compiler, shared by the
install-time build (setup.py), the runtime build (engine/kernels/__init__.py) and the
cross-compiled kernel test (tests/test_neon_emulated.py).

Only the standard library: setup.py executes this file directly, before torch or the `engine`
package can be imported.

x86-64: the kernels are AVX2/FMA/F16C code (x86_avx2.h), so the library needs those flags and
is only loaded on CPUs that have them. ARM64: the NEON kernels (aarch64_neon.h) are built for
the baseline armv8-a, which every ARM64 CPU runs; the int8 dot-product instructions (armv8.2
`dotprod`) are compiled into a second copy of the dot kernels and chosen at run time
(aarch64_neon.h), so one build serves a Raspberry Pi 4 and an Apple M-series alike.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path
from typing import NamedTuple


class Flags(NamedTuple):
    cflags: list[str]
    ldflags: list[str]
    cpu_flags: tuple[str, ...]  # /proc/cpuinfo feature names the CPU must have


def kernel_arch(machine: str | None = None) -> str | None:
    """"x86_64", "aarch64", or None for an architecture the kernels have no code for."""
    m = (machine if machine is not None else platform.machine()).lower()
    if m in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if m in ("aarch64", "arm64"):  # not aarch64_be: the block layouts are little-endian
        return "aarch64"
    return None


def flags_for(arch: str | None = None, msvc: bool | None = None,
              darwin: bool | None = None) -> Flags:
    """The flags for `arch` (default: this machine) with MSVC (default: on Windows) or a
    GCC/clang-style compiler; macOS (`darwin`, default: this OS) has Apple clang's OpenMP."""
    arch = arch or kernel_arch() or "x86_64"
    msvc = sys.platform == "win32" if msvc is None else msvc
    darwin = sys.platform == "darwin" if darwin is None else darwin
    if arch == "aarch64":
        cpu = ("asimd",)
        if msvc:
            return Flags(["/O2", "/openmp"], [], cpu)
        if darwin:  # Apple clang: no -fopenmp driver flag; the default CPU (apple-m1) has dotprod
            return Flags(["-O3", "-Xpreprocessor", "-fopenmp"], ["-lomp"], cpu)
        return Flags(["-O3", "-march=armv8-a", "-fopenmp"], ["-fopenmp"], cpu)
    cpu = ("avx2", "fma", "f16c")
    if msvc:
        return Flags(["/O2", "/arch:AVX2", "/openmp"], [], cpu)
    if darwin:
        return Flags(["-O3", "-mavx2", "-mfma", "-mf16c", "-Xpreprocessor", "-fopenmp"], ["-lomp"], cpu)
    return Flags(["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"], ["-fopenmp"], cpu)


# The flags for this machine (the names setup.py and the loader import).
CFLAGS, LDFLAGS, REQUIRED_CPU_FLAGS = flags_for()


def cpu_features(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's feature names from /proc/cpuinfo ("flags" on x86, "Features" on ARM), or None
    where there is no /proc (macOS, Windows). `cpuinfo`: the file's text (tests)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_problem(machine: str, features: frozenset[str] | None) -> str | None:
    """Why a CPU (`machine` as platform.machine() names it, its `features` or None when
    unknown) cannot run the fused kernels, or None. Unknown features pass on ARM64, where NEON
    is part of the architecture; on x86-64 the caller asks another probe."""
    arch = kernel_arch(machine)
    if arch is None:
        return f"CPU architecture {machine} (the kernels need x86-64 AVX2 or ARM64 NEON)"
    if features is None:
        return None
    missing = [f for f in flags_for(arch).cpu_flags if f not in features]
    if missing:
        what = "NEON" if arch == "aarch64" else "AVX2"
        return f"CPU lacks {', '.join(missing)} (the {what} kernels need it)"
    return None


def kernel_files(source: Path, arch: str | None = None) -> list[Path]:
    """The translation unit and the headers it includes on `arch` (default: this machine):
    blocks.h and that architecture's kernels; the other architectures' headers are left out,
    so editing the NEON kernels does not invalidate an x86 library, nor the reverse."""
    source = Path(source)
    arch = arch or kernel_arch() or "x86_64"
    other = {"x86_64": "aarch64_", "aarch64": "x86_"}[arch]
    return [source, *sorted(h for h in source.parent.glob("*.h") if not h.name.startswith(other))]


def source_tag(source: Path) -> str:
    """A short hash of the kernel sources, compiled into the library (`source_hash`): the loader
    refuses an installed library built from other sources (an edited checkout)."""
    h = hashlib.sha256()
    for f in kernel_files(source):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return "h" + h.hexdigest()[:16]


def source_define(source: Path) -> str:
    return f"-DLLMLENS_SOURCE_HASH={source_tag(source)}"
