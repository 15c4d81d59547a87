"""Loader for the fused dequantize-and-multiply CPU kernels (engine/kernels/qgemv.cpp).

The C++ sources are compiled at first use with `torch.utils.cpp_extension.load` (needs a C++
compiler and ninja) into the user cache dir, e.g. ~/.cache/llmlens/torch_extensions/; later
runs load the cached library in milliseconds. `load()` returns the extension module, or None
when the kernels cannot be used — no x86-64 CPU with AVX2/FMA/F16C, no compiler or ninja, a
failed build, or LLMLENS_NO_KERNELS=1 — in which case callers take the stock-op path
(`engine.quant_linear` dequantizes row chunks with the torch dequantizers). Loading happens
once per process under a lock, so several threads may call `load()` at the same time.

Module functions (all release the GIL):
    gemv(w u8 [rows, row_bytes], type, x f32 [T, n], nthreads) -> f32 [T, rows]
    dequant_rows(w, type, n, start, count, nthreads) -> f32 [count, n]
    get_rows(w, type, n, ids i64 [N]) -> f32 [N, n]
    quantize_activations(x f32 [T, n], type) -> f32 [T, n]   # the kernels' 8-bit rounding
    supported_types() -> list[int]                           # ggml type ids
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["load", "available", "disabled_reason", "SOURCES", "EXTENSION_NAME"]

EXTENSION_NAME = "llmlens_qgemv"
SOURCES = [Path(__file__).with_name("qgemv.cpp")]
_CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"]
_REQUIRED_FLAGS = ("avx2", "fma", "f16c")

_lock = threading.Lock()
_loaded = False
_module: ModuleType | None = None
_reason: str | None = None


def _cpu_problem() -> str | None:
    """Why this CPU cannot run the AVX2 kernels, or None if it can."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"CPU architecture {platform.machine()} (the kernels need x86-64 AVX2)"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        # No /proc (macOS, Windows): trust PyTorch's own dispatch probe.
        cap = torch.backends.cpu.get_cpu_capability()
        return None if cap.startswith(("AVX2", "AVX512")) else f"CPU capability {cap}"
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    missing = [f for f in _REQUIRED_FLAGS if f not in flags]
    return f"CPU lacks {', '.join(missing)}" if missing else None


def _build_dir() -> Path:
    from platformdirs import user_cache_dir

    # One dir per Python/torch pair: the library links against both.
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__.split('+')[0]}"
    path = Path(user_cache_dir("llmlens")) / "torch_extensions" / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


def _compile() -> ModuleType:
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")
    build_dir = _build_dir()
    lib = build_dir / f"{EXTENSION_NAME}.so"
    if not lib.exists() or any(s.stat().st_mtime > lib.stat().st_mtime for s in SOURCES):
        print(f"llmlens: compiling quantized CPU kernels into {build_dir} (first run only, ~1 min)",
              file=sys.stderr, flush=True)
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(s) for s in SOURCES],
        extra_cflags=_CFLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        verbose=False,
    )


def load() -> ModuleType | None:
    """The compiled kernel module, or None (then `disabled_reason()` says why)."""
    global _loaded, _module, _reason
    if _loaded:
        return _module
    with _lock:
        if _loaded:
            return _module
        if os.environ.get("LLMLENS_NO_KERNELS", "") not in ("", "0"):
            _reason = "LLMLENS_NO_KERNELS is set"
        else:
            _reason = _cpu_problem()
        if _reason is None:
            try:
                _module = _compile()
            except Exception as e:  # no compiler, failed build, ...: the fallback still works
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                _reason = f"build failed: {first[:200]}"
                print(f"llmlens: quantized CPU kernels unavailable ({_reason}); "
                      "using the slower dequantize-and-matmul path", file=sys.stderr, flush=True)
        _loaded = True
        return _module


def available() -> bool:
    """True when the fused kernels are loaded (compiling them first if needed)."""
    return load() is not None


def disabled_reason() -> str | None:
    """Why `load()` returned None, or None when the kernels are in use (or not tried yet)."""
    return _reason
