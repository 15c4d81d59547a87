"""Building and loading the fused kernels (engine/kernels/__init__.py) can never hang a run.

* A runtime build killed mid-compile (SIGKILL, lock files left behind) does not block the next
  run: it completes, with the kernels or with the stock-op fallback and a reason (slow: compiles).
* A live builder is waited for at most LLMLENS_KERNEL_BUILD_TIMEOUT seconds, then stock ops.
* The installed library is used when it matches the running torch and the source, else refused.
* The status API the app uses: `status()`, `needs_build()`, `load(on_progress=...)`.

Each scenario that needs a fresh loader runs `python -c` in a subprocess with a private build
dir (LLMLENS_KERNEL_BUILD_DIR under tmp_path); timeouts here only detect hangs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import kernels

ROOT = Path(__file__).resolve().parent.parent
HANG_S = 900  # far above any build on a loaded 2-core machine: only a hang gets here

REPORT = (
    "import json, sys\n"
    "from engine import kernels\n"
    "msgs = []\n"
    "needs = kernels.needs_build()\n"
    "mod = kernels.load(on_progress=msgs.append)\n"
    "ok = mod is not None and mod.gemv is not None\n"
    "st = kernels.status()\n"
    "print(json.dumps({'path': st.path, 'reason': st.reason, 'loaded': ok, 'needs': needs,\n"
    "                  'messages': msgs}))\n"
)


def _env(build_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMLENS_")}
    env.update(LLMLENS_KERNEL_BUILD_DIR=str(build_dir), LLMLENS_KERNELS_RUNTIME_BUILD="1",
               PYTHONPATH=str(ROOT), **extra)
    return env


def _report(env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", REPORT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hold_build_lock(build_dir: Path) -> subprocess.Popen:
    """A process that holds the build lock (as a live builder does) until killed."""
    build_dir.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys, time\n"
            f"fd = os.open({str(build_dir / kernels.BUILD_LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
            "print('held', flush=True)\n"
            "time.sleep(3600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_no_kernels_switch_gives_the_fallback_with_its_reason(tmp_path):
    got = _report(_env(tmp_path / "build", LLMLENS_NO_KERNELS="1"))
    assert got == {"path": "fallback", "reason": "LLMLENS_NO_KERNELS is set", "loaded": False,
                   "needs": False, "messages": []}


@pytest.mark.skipif(kernels._cpu_problem() is not None, reason="CPU cannot run the kernels")
def test_a_live_builder_is_waited_for_a_bounded_time_then_stock_ops(tmp_path):
    build = tmp_path / "build"
    holder = _hold_build_lock(build)
    try:
        got = _report(_env(build, LLMLENS_KERNEL_BUILD_TIMEOUT="1"))
    finally:
        holder.kill()
        holder.wait()
    assert got["needs"] is True  # nothing built in this dir yet
    assert got["path"] == "fallback" and got["loaded"] is False
    assert got["reason"] == (f"another process (PID {holder.pid}) was still compiling the "
                             "kernels after 1 s")
    assert got["messages"] == [f"Waiting for another llmlens process (PID {holder.pid}) to "
                               "finish compiling the CPU kernels…"]


def test_a_killed_lock_holder_frees_the_lock_and_its_stale_torch_lock_is_removed(tmp_path):
    build = tmp_path / "build"
    holder = _hold_build_lock(build)
    (build / kernels.TORCH_BATON).write_text("")  # what a killed cpp_extension build leaves
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    messages: list[str] = []
    with kernels._BuildLock(build, timeout=30, on_wait=messages.append) as lock:
        assert lock.holder() == str(os.getpid())
        kernels._remove_stale_baton(build, messages.append)
    assert not (build / kernels.TORCH_BATON).exists()
    assert messages == [f"Removed a stale kernel build lock left by a killed process "
                        f"({build / kernels.TORCH_BATON})"]


def test_build_dir_is_private_to_the_interpreter_and_torch_version(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMLENS_KERNEL_BUILD_DIR", raising=False)
    monkeypatch.setenv("LLMLENS_CACHE_DIR", str(tmp_path))
    first = kernels.build_dir()
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "another-venv"))
    second = kernels.build_dir()
    assert first != second
    assert first.parent == second.parent == tmp_path / "torch_extensions"
    assert f"torch{kernels._torch_version()}" in first.name


@pytest.mark.parametrize("attrs, problem", [
    ({"torch_version": "0.0.1"}, "installed library built for torch 0.0.1"),
    ({"source_hash": "h0000000000000000"}, "installed library built from other kernel sources"),
    ({}, None),
])
def test_an_installed_library_is_used_only_when_it_matches(monkeypatch, attrs, problem):
    fake = SimpleNamespace(__file__="/x/_qgemv.so", torch_version=kernels._torch_version(),
                           source_hash=kernels.source_tag(kernels.SOURCES[0]))
    for k, v in attrs.items():
        setattr(fake, k, v)
    monkeypatch.setitem(sys.modules, kernels.INSTALLED_MODULE, fake)
    monkeypatch.setattr(kernels, "_installed_checked", False)
    monkeypatch.setattr(kernels, "_installed", (None, ""))  # restored afterwards
    monkeypatch.delenv("LLMLENS_KERNELS_RUNTIME_BUILD", raising=False)
    mod, why = kernels._installed_module()
    if problem is None:
        assert mod is fake and why == "installed library _qgemv.so"
    else:
        assert mod is None and why.startswith(problem)


def test_the_pip_installed_library_is_the_one_loaded(tmp_path):
    try:
        import engine.kernels._qgemv  # noqa: F401
    except ImportError as e:
        pytest.skip(f"no install-time build in this checkout ({e}); see setup.py")
    env = _env(tmp_path / "build")
    del env["LLMLENS_KERNELS_RUNTIME_BUILD"]
    got = _report(env)
    if kernels._cpu_problem() is not None:
        assert got["path"] == "fallback"
        return
    assert got["path"] == "installed", got["reason"]
    assert got["loaded"] and got["needs"] is False and got["messages"] == []
    assert not (tmp_path / "build").exists()  # nothing compiled at run time


@pytest.mark.slow
@pytest.mark.skipif(kernels._cpu_problem() is not None, reason="CPU cannot run the kernels")
def test_a_runtime_build_killed_mid_compile_does_not_hang_the_next_run(tmp_path):
    build = tmp_path / "build"
    env = _env(build)
    first = subprocess.Popen([sys.executable, "-c", REPORT], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # its own group: ninja and c++ die with it
    baton = build / kernels.TORCH_BATON
    deadline = time.monotonic() + HANG_S
    while not baton.exists():
        if first.poll() is not None:
            out, err = first.communicate()
            pytest.skip(f"the runtime build ended before compiling (no compiler?): {out} {err}")
        assert time.monotonic() < deadline, "the first build never took its lock"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert baton.exists()  # the stale lock that used to make every later run wait forever

    got = _report(env)
    print(f"after the killed build: {got}")
    assert got["needs"] is True
    assert got["path"] in ("runtime-build", "fallback"), got
    if got["path"] == "runtime-build":
        assert got["loaded"] is True
        assert kernels.PREPARING_MESSAGE in got["messages"]
    else:
        assert got["reason"].startswith("build failed: "), got
    assert got["messages"][0] == (f"Removed a stale kernel build lock left by a killed process "
                                  f"({baton})")
    assert not baton.exists()
    # And the run after that loads the finished build without compiling or waiting.
    if got["path"] == "runtime-build":
        again = _report(env)
        assert (again["path"], again["needs"], again["messages"]) == ("runtime-build", False, [])
