"""Install-time build of the fused CPU kernels (engine/kernels/qgemv.cpp) as
`engine.kernels._qgemv`; all other metadata is in pyproject.toml.

torch must be importable when this runs: pyproject's [build-system] requires pins the same
torch as the runtime dependency, so the library matches the torch it will be loaded with.
The build is optional: on a machine without a C++ compiler (or neither x86-64 nor ARM64) the
package still installs, and engine/kernels falls back to a runtime build or to stock PyTorch ops.
Flags per architecture and compiler: engine/kernels/build_flags.py.
"""

from __future__ import annotations

import os
import platform
import runpy
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
# Executed, not imported: importing `engine` would pull in the whole engine and its dependencies.
FLAGS = runpy.run_path(str(HERE / "engine" / "kernels" / "build_flags.py"))
SOURCE = "engine/kernels/qgemv.cpp"


def _warn(msg: str) -> None:
    print(f"llmlens setup: {msg}; the kernels will be compiled on first use or replaced by "
          "stock PyTorch ops", file=sys.stderr)


def _kernel_build() -> dict:
    if os.environ.get("LLMLENS_SKIP_KERNEL_BUILD", "") not in ("", "0"):
        return {}
    if FLAGS["kernel_arch"]() is None:  # x86-64 (AVX2) and ARM64 (NEON) have kernels
        _warn(f"no fused kernels for the CPU architecture {platform.machine()}")
        return {}
    flags = FLAGS["flags_for"]()
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        _warn("torch is not importable at build time")
        return {}

    class OptionalBuildExtension(BuildExtension):
        """A failed kernel compile is a warning, not a failed install."""

        def build_extension(self, ext) -> None:
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001 - no compiler, missing headers, ...
                _warn(f"could not compile {ext.name} ({type(e).__name__}: {e})")

    ext = CppExtension(
        "engine.kernels._qgemv",
        [SOURCE],
        extra_compile_args=flags.cflags + [FLAGS["source_define"](HERE / SOURCE)],
        extra_link_args=flags.ldflags,
        depends=[str(p.relative_to(HERE)) for p in FLAGS["kernel_files"](HERE / SOURCE)[1:]],
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExtension}}


setup(**_kernel_build())
