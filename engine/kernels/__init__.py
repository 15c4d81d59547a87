"""Loader for the fused dequantize-and-multiply CPU kernels (engine/kernels/qgemv.cpp).

Three paths, tried in order by `load()`:

1. installed: `pip install` compiles the kernels into `engine/kernels/_qgemv*.so` (setup.py);
   it is used when it imports and was built against the running torch version and C++ ABI;
2. runtime build: otherwise `torch.utils.cpp_extension.load` compiles them (C++ compiler and
   ninja, about a minute) into a directory private to this interpreter (a hash of sys.prefix)
   and torch version, under the user cache dir; later runs load that library in milliseconds;
3. fallback: no usable library (non-AVX2 CPU, no compiler, failed build, another process still
   compiling after `LLMLENS_KERNEL_BUILD_TIMEOUT` seconds, LLMLENS_NO_KERNELS=1): `load()`
   returns None and callers take the stock-op path (`engine.quant_linear` dequantizes row
   chunks with the torch dequantizers). `status()` says which path runs and why, in one line.

A runtime build can never hang later runs: builders serialise on an OS file lock (flock, freed
by the kernel when its holder dies, even by SIGKILL) that records the holder's PID; the holder
of that lock removes the lock file of torch's own build step if a killed builder left it (that
file alone would make every later `cpp_extension.load` wait forever); and a process that finds
another one building waits at most `LLMLENS_KERNEL_BUILD_TIMEOUT` seconds (default 180).

For the app: `needs_build()` says, without building, whether `load()` is about to compile
(show "Preparing CPU kernels (first run)…"), and `load(on_progress=...)` reports each step.

Environment: LLMLENS_NO_KERNELS=1 (stock ops), LLMLENS_KERNEL_ISA=avx2 (force the AVX2 kernels on
an AVX-512 VNNI CPU; by default the best the CPU has is used, see `isa()`), LLMLENS_KERNEL_BUILD_DIR (runtime build dir),
LLMLENS_KERNEL_BUILD_TIMEOUT (seconds to wait for another builder), LLMLENS_KERNELS_RUNTIME_BUILD=1
(ignore the installed library; tests and debugging).

Module functions (all release the GIL):
    gemv(w u8 [rows, row_bytes], type, x f32 [T, n], nthreads) -> f32 [T, rows]
    dequant_rows(w, type, n, start, count, nthreads) -> f32 [count, n]
    get_rows(w, type, n, ids i64 [N]) -> f32 [N, n]
    quantize_activations(x f32 [T, n], type) -> f32 [T, n]   # the kernels' 8-bit rounding
    supported_types() -> list[int]                           # ggml type ids
"""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from engine.kernels.build_flags import (CFLAGS, LDFLAGS, REQUIRED_CPU_FLAGS, cpu_features,
                                        cpu_problem, kernel_arch, kernel_files, source_define,
                                        source_tag)

__all__ = ["load", "isa", "isa_options", "compute_path", "available", "disabled_reason", "status", "needs_build", "build_dir",
           "KernelStatus", "PREPARING_MESSAGE", "SOURCES", "EXTENSION_NAME"]

EXTENSION_NAME = "llmlens_qgemv"
INSTALLED_MODULE = "engine.kernels._qgemv"
SOURCES = [Path(__file__).with_name("qgemv.cpp")]
PREPARING_MESSAGE = "Preparing CPU kernels (first run)…"
DEFAULT_BUILD_TIMEOUT_S = 180.0
# torch's FileBaton: while it exists, every `cpp_extension.load` on the directory waits forever.
TORCH_BATON = "lock"
BUILD_LOCK = "llmlens-build.lock"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KernelStatus:
    """Which kernel path runs and why: path is "installed", "runtime-build", "fallback" or
    "not-loaded" (load() not called yet)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


_lock = threading.Lock()
_loaded = False
_module: ModuleType | None = None
_status = KernelStatus("not-loaded", "kernels.load() has not run yet")


def _torch_version() -> str:
    return torch.__version__.split("+")[0]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _cpu_problem() -> str | None:
    """Why this CPU cannot run the fused kernels (AVX2 on x86-64, NEON on ARM64), or None if
    it can."""
    features = cpu_features()
    if features is None and kernel_arch() == "x86_64":
        # No /proc (macOS, Windows): trust PyTorch's own dispatch probe.
        cap = torch.backends.cpu.get_cpu_capability()
        return None if cap.startswith(("AVX2", "AVX512")) else f"CPU capability {cap}"
    return cpu_problem(platform.machine(), features)


def _policy_problem() -> str | None:
    """Why no kernels may be used at all (env switch or CPU), or None."""
    if _env_flag("LLMLENS_NO_KERNELS"):
        return "LLMLENS_NO_KERNELS is set"
    return _cpu_problem()


# -- 1. the library built at install time ---------------------------------------------------------

_installed_checked = False
_installed: tuple[ModuleType | None, str] = (None, "")


def _installed_module() -> tuple[ModuleType | None, str]:
    """(the installed library if it is usable here, else None; why not)."""
    global _installed_checked, _installed
    if _installed_checked:
        return _installed
    _installed_checked = True
    if _env_flag("LLMLENS_KERNELS_RUNTIME_BUILD"):
        _installed = (None, "LLMLENS_KERNELS_RUNTIME_BUILD is set")
        return _installed
    try:
        mod = importlib.import_module(INSTALLED_MODULE)
    except ImportError as e:  # not built at install (no compiler), or a broken/foreign binary
        _installed = (None, f"no installed library ({str(e).splitlines()[0][:120]})")
        return _installed
    built = getattr(mod, "torch_version", None)
    abi = getattr(mod, "cxx11_abi", None)
    built_from = getattr(mod, "source_hash", None)
    if built != _torch_version():
        _installed = (None, f"installed library built for torch {built}, "
                            f"running torch {_torch_version()}")
    elif abi is not None and bool(abi) != bool(torch.compiled_with_cxx11_abi()):
        _installed = (None, "installed library built with another C++ ABI than torch")
    elif built_from is not None and SOURCES[0].exists() and built_from != source_tag(SOURCES[0]):
        _installed = (None, "installed library built from other kernel sources (reinstall: "
                            "pip install -e .)")
    else:
        _installed = (mod, f"installed library {Path(mod.__file__).name}")
    return _installed


# -- 2. the runtime build --------------------------------------------------------------------------


def build_dir() -> Path:
    """Where the runtime build goes: one directory per interpreter (venv) and torch version, so
    two venvs never share (or wait on) one build."""
    override = os.environ.get("LLMLENS_KERNEL_BUILD_DIR")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    root = Path(os.environ.get("LLMLENS_CACHE_DIR") or user_cache_dir("llmlens"))
    prefix = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:12]
    tag = (f"py{sys.version_info.major}{sys.version_info.minor}"
           f"_torch{_torch_version()}_{prefix}")
    return root / "torch_extensions" / tag


def _runtime_library_fresh(directory: Path) -> bool:
    lib = directory / f"{EXTENSION_NAME}.so"
    return lib.exists() and all(s.stat().st_mtime <= lib.stat().st_mtime
                                for s in kernel_files(SOURCES[0]))


def _build_timeout() -> float:
    try:
        return float(os.environ.get("LLMLENS_KERNEL_BUILD_TIMEOUT", DEFAULT_BUILD_TIMEOUT_S))
    except ValueError:
        return DEFAULT_BUILD_TIMEOUT_S


class BuildLockTimeout(RuntimeError):
    """Another live process held the build lock for longer than the timeout."""


class _BuildLock:
    """Exclusive build rights on a directory: an flock on `BUILD_LOCK`, which holds the PID.

    The kernel drops an flock when its process dies, however it dies, so a killed builder can
    never leave this lock held; the PID written inside only names the holder in messages.
    """

    def __init__(self, directory: Path, timeout: float, on_wait: Progress) -> None:
        self.path = directory / BUILD_LOCK
        self.timeout = timeout
        self.on_wait = on_wait
        self.fd: int | None = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def __enter__(self) -> _BuildLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    raise BuildLockTimeout(
                        f"another process (PID {holder}) was still compiling the kernels "
                        f"after {self.timeout:.0f} s") from None
                if not told:
                    self.on_wait(f"Waiting for another llmlens process (PID {self.holder()}) "
                                 "to finish compiling the CPU kernels…")
                    told = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _remove_stale_baton(directory: Path, on_progress: Progress) -> None:
    """Drop torch's build lock file: under our lock, any such file was left by a dead builder."""
    baton = directory / TORCH_BATON
    if baton.exists():
        baton.unlink(missing_ok=True)
        on_progress(f"Removed a stale kernel build lock left by a killed process ({baton})")


def _compile(on_progress: Progress) -> ModuleType:
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")
    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with _BuildLock(directory, _build_timeout(), on_progress):
        _remove_stale_baton(directory, on_progress)
        if not _runtime_library_fresh(directory):
            on_progress(PREPARING_MESSAGE)
            print(f"llmlens: compiling quantized CPU kernels into {directory} "
                  "(first run only, ~1 min)", file=sys.stderr, flush=True)
        return cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(s) for s in SOURCES],
            extra_cflags=[*CFLAGS, source_define(SOURCES[0])],
            extra_ldflags=list(LDFLAGS),
            build_directory=str(directory),
            verbose=False,
        )


# -- public API ------------------------------------------------------------------------------------


def needs_build() -> bool:
    """True when `load()` would compile the kernels now (first run without an installed
    library): the app shows PREPARING_MESSAGE. Cheap, never compiles, safe on the GUI thread."""
    if _loaded or _policy_problem() is not None:
        return False
    if _installed_module()[0] is not None:
        return False
    return not _runtime_library_fresh(build_dir())


def load(on_progress: Progress | None = None) -> ModuleType | None:
    """The compiled kernel module, or None (then `status()` says why).

    on_progress: called with one-line messages (PREPARING_MESSAGE when a build starts, a
    waiting message when another process is building), from the calling thread.
    """
    global _loaded, _module, _status
    if _loaded:
        return _module
    with _lock:
        if _loaded:
            return _module
        report = on_progress or (lambda _msg: None)
        problem = _policy_problem()
        if problem is not None:
            _status = KernelStatus("fallback", problem)
        else:
            mod, why_not = _installed_module()
            if mod is not None:
                _module, _status = mod, KernelStatus("installed", why_not)
            else:
                try:
                    _module = _compile(report)
                    _status = KernelStatus("runtime-build",
                                           f"compiled at run time in {build_dir()} ({why_not})")
                except Exception as e:  # no compiler, failed build, lock timeout: stock ops work
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                    _status = KernelStatus("fallback", first if isinstance(e, BuildLockTimeout)
                                           else f"build failed: {first}")
                    print(f"llmlens: quantized CPU kernels unavailable ({_status.reason}); "
                          "using the slower dequantize-and-matmul path",
                          file=sys.stderr, flush=True)
        if _module is not None:
            _status = KernelStatus(_status.path, f"{_status.reason}; {_apply_isa(_module)} kernels")
        _loaded = True
        return _module


def _apply_isa(mod: ModuleType) -> str:
    """Switch to the instruction set named by LLMLENS_KERNEL_ISA (e.g. "avx2" to measure the AVX2
    path on an AVX-512 machine); returns the one in use."""
    want = os.environ.get("LLMLENS_KERNEL_ISA", "").strip().lower()
    if want and hasattr(mod, "use_isa"):
        try:
            mod.use_isa(want)
        except RuntimeError as e:
            print(f"llmlens: LLMLENS_KERNEL_ISA={want} ignored: {str(e).splitlines()[0]}",
                  file=sys.stderr, flush=True)
    return mod.isa() if hasattr(mod, "isa") else "avx2"


def isa() -> str | None:
    """The instruction set of the fused kernels in use ("avx2", "avx512-vnni", ...), or None when
    they are not loaded (the stock-op path)."""
    mod = load()
    if mod is None:
        return None
    return mod.isa() if hasattr(mod, "isa") else "avx2"


def isa_options() -> list[str]:
    """The instruction sets LLMLENS_KERNEL_ISA may pick on this CPU ([] without kernels)."""
    mod = load()
    if mod is None:
        return []
    return [s.strip() for s in mod.isa_options().split(",")] if hasattr(mod, "isa_options") else ["avx2"]


def compute_path() -> tuple[str, str]:
    """(short, why) for the status bar and `llmlens bench`: ("avx512-vnni kernels", "installed
    library …") or ("portable path", "LLMLENS_NO_KERNELS is set"). Never compiles anything:
    before `load()` has run it says so."""
    if _status.path == "not-loaded":
        return "kernels not loaded yet", _status.reason
    if _module is None:
        return "portable path", _status.reason
    name = _module.isa() if hasattr(_module, "isa") else "avx2"
    return f"{name} kernels", _status.reason


def available() -> bool:
    """True when the fused kernels are loaded (compiling them first if needed)."""
    return load() is not None


def status() -> KernelStatus:
    """Which path runs (installed / runtime-build / fallback / not-loaded) and why; never
    loads or compiles anything."""
    return _status


def disabled_reason() -> str | None:
    """Why `load()` returned None, or None when the kernels are in use (or not tried yet)."""
    return _status.reason if _status.path == "fallback" else None
