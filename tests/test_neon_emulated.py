"""The ARM64 NEON kernels (engine/kernels/aarch64_neon.h), checked on an x86 machine.

tests/kernels/neon_selftest.cpp (no torch) is cross-compiled with aarch64-linux-gnu-g++ and run
under qemu-user against references from the x86 kernels (tests/kernels/make_reference.py): the
dequantizers bit-exact, the dot products within 1e-5 * sum |W x_q|, for every supported type
and 1, 2, 4, 8 tokens. Builds and CPUs:
* the shipped flags (baseline armv8-a): both builds of the dot kernels are compiled in; on
  qemu's default CPU (which has dotprod) both are checked and dispatch defaults to dotprod, on
  a Cortex-A72 (no dotprod) to the base build, and no dotprod instruction runs there (qemu
  would stop the test with SIGILL); only the dotprod build's functions hold `sdot`;
* -march=armv8.2-a+dotprod: the dotprod build alone.
Emulation proves the results, not the speed: that needs ARM hardware.

Skipped, with the reason, where the cross compiler or qemu-aarch64 is missing
(apt-get install g++-aarch64-linux-gnu qemu-user). The build-flag and CPU-probe tests need
neither. LLMLENS_ARM_BINDINGS_CHECK=1 also compiles qgemv.cpp (the torch bindings) for aarch64.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from engine import kernels
from engine.kernels import build_flags

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "engine" / "kernels"
SELFTEST = ROOT / "tests" / "kernels" / "neon_selftest.cpp"
CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
SYSROOT = Path("/usr/aarch64-linux-gnu")
TIMEOUT_S = 600  # only detects a hang: a compile takes seconds

ARM_CPUINFO = ("processor\t: 0\nBogoMIPS\t: 50.00\n"
               "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
               "cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n")


def _tools_missing() -> str | None:
    missing = [t for t in (CXX, QEMU) if shutil.which(t) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed "
                "(apt-get install g++-aarch64-linux-gnu qemu-user)")
    if not (SYSROOT / "lib").is_dir():
        return f"no aarch64 sysroot at {SYSROOT} (apt-get install g++-aarch64-linux-gnu)"
    return None


needs_tools = pytest.mark.skipif(_tools_missing() is not None, reason=str(_tools_missing()))


def _arm_cflags() -> list[str]:
    """The flags a Linux ARM64 install builds with, less OpenMP (the self-test has no threads)."""
    flags = build_flags.flags_for("aarch64", msvc=False, darwin=False).cflags
    return [f for f in flags if f != "-fopenmp"]


def _compile(out: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [CXX, "-std=c++17", "-Wall", *_arm_cflags(), *extra, f"-I{KERNELS}", str(SELFTEST),
           "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The self-test for the shipped flags ("base") and for armv8.2-a+dotprod ("dotprod"),
    and the reference file ("ref")."""
    from tests.kernels.make_reference import write_reference

    d = tmp_path_factory.mktemp("neon")
    jobs = {"base": _compile(d / "selftest_base", []),
            "dotprod": _compile(d / "selftest_dotprod", ["-march=armv8.2-a+dotprod"])}
    ref = d / "ref.bin"
    try:
        write_reference(ref)  # while the compilers run
        out = {"ref": ref}
        for name, job in jobs.items():
            log, _ = job.communicate(timeout=TIMEOUT_S)
            assert job.returncode == 0, f"{name} build failed:\n{log[-4000:]}"
            out[name] = d / f"selftest_{name}"
    finally:
        for job in jobs.values():
            if job.poll() is None:
                job.kill()
                job.wait()
    return out


def _run(binary: Path, ref: Path, cpu: str | None = None) -> str:
    """The self-test's first line (the instruction sets), once it has passed."""
    cmd = [QEMU, "-L", str(SYSROOT), *(["-cpu", cpu] if cpu else []), str(binary), str(ref)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "14 types, 0 failures" in out, out[-4000:]
    return out.splitlines()[0]


@needs_tools
def test_baseline_build_checks_both_kernel_builds_and_defaults_to_dotprod(built):
    first = _run(built["base"], built["ref"])  # qemu's default CPU model has dotprod
    assert first == "isa: neon-dotprod (choices: neon, neon-dotprod); builds: neon_base neon_dotprod"


@needs_tools
def test_baseline_build_has_dotprod_instructions_only_in_the_dotprod_kernels(built):
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("aarch64-linux-gnu-objdump not installed (binutils-aarch64-linux-gnu)")
    asm = subprocess.run([objdump, "-dC", str(built["base"])], capture_output=True, text=True,
                         timeout=TIMEOUT_S, check=True).stdout
    fn, with_sdot = "", set()
    for line in asm.splitlines():
        if m := re.match(r"^[0-9a-f]+ <(.*)>:$", line):
            fn = m.group(1)
        elif re.search(r"\ssdot\s", line):
            with_sdot.add(fn)
    assert with_sdot and all("neon_dotprod::" in f for f in with_sdot), sorted(with_sdot)[:5]


@needs_tools
def test_baseline_build_on_a_cpu_without_dotprod_uses_the_base_kernels(built):
    first = _run(built["base"], built["ref"], cpu="cortex-a72")  # Raspberry Pi 4's core
    assert first == "isa: neon (choices: neon); builds: neon_base"


@needs_tools
def test_dotprod_build(built):
    first = _run(built["dotprod"], built["ref"])
    assert first == "isa: neon-dotprod (choices: neon-dotprod); builds: neon_dotprod"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LLMLENS_ARM_BINDINGS_CHECK", "") in ("", "0"),
                    reason="set LLMLENS_ARM_BINDINGS_CHECK=1 (about 50 s of CPU)")
@needs_tools
def test_the_torch_bindings_compile_for_arm64():
    """qgemv.cpp, the whole translation unit with torch's headers, for aarch64 (syntax and
    types only: no aarch64 libtorch to link against here). Opt-in: parsing torch's headers
    alone takes longer than all the other tests here."""
    from torch.utils.cpp_extension import include_paths

    incs = [*include_paths(), sysconfig.get_paths()["include"]]
    cmd = [CXX, "-std=c++20", "-fsyntax-only", *build_flags.flags_for("aarch64", False, False).cflags,
           "-DTORCH_EXTENSION_NAME=llmlens_qgemv", build_flags.source_define(KERNELS / "qgemv.cpp"),
           *(f"-I{p}" for p in incs), str(KERNELS / "qgemv.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert proc.returncode == 0, "\n".join(errors[:20]) or proc.stderr[-4000:]


# -- build flags and the CPU probe (no cross tools needed) -------------------------------------


def test_flags_per_architecture_and_compiler():
    arm = build_flags.flags_for("aarch64", msvc=False, darwin=False)
    assert not any(f.startswith("-m") and f != "-march=armv8-a" for f in arm.cflags)
    assert "-march=armv8-a" in arm.cflags and arm.cpu_flags == ("asimd",)
    x86 = build_flags.flags_for("x86_64", msvc=False, darwin=False)
    assert x86 == (["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"], ["-fopenmp"],
                   ("avx2", "fma", "f16c"))
    assert build_flags.flags_for("x86_64", msvc=True).cflags == ["/O2", "/arch:AVX2", "/openmp"]
    assert "/arch:AVX2" not in build_flags.flags_for("aarch64", msvc=True).cflags
    # the names setup.py and the loader import describe this machine
    # (not LDFLAGS: torch's cpp_extension.load appends its libraries to the list it is given)
    here = build_flags.flags_for()
    assert (build_flags.CFLAGS, build_flags.REQUIRED_CPU_FLAGS) == (here.cflags, here.cpu_flags)


def test_each_architecture_hashes_only_its_own_kernel_header():
    src = KERNELS / "qgemv.cpp"
    names = {a: [p.name for p in build_flags.kernel_files(src, a)] for a in ("x86_64", "aarch64")}
    assert names["x86_64"][0] == names["aarch64"][0] == "qgemv.cpp"
    assert {"blocks.h", "x86_avx2.h"} <= set(names["x86_64"])
    assert not any(n.startswith("aarch64_") for n in names["x86_64"])
    assert names["aarch64"] == ["qgemv.cpp", "aarch64_neon.h", "blocks.h", "layer_ops.h"]


def test_cpu_probe_accepts_arm64_with_neon():
    features = build_flags.cpu_features(ARM_CPUINFO)
    assert {"asimd", "asimddp"} <= features
    assert build_flags.cpu_problem("aarch64", features) is None
    assert build_flags.cpu_problem("arm64", None) is None  # macOS: no /proc, NEON is standard
    assert build_flags.cpu_problem("aarch64", frozenset({"fp"})) == \
        "CPU lacks asimd (the NEON kernels need it)"
    assert build_flags.cpu_problem("riscv64", frozenset()) == \
        "CPU architecture riscv64 (the kernels need x86-64 AVX2 or ARM64 NEON)"
    assert build_flags.cpu_problem("x86_64", frozenset({"avx2", "fma"})) == \
        "CPU lacks f16c (the AVX2 kernels need it)"


def test_loader_cpu_check_on_an_arm64_machine(monkeypatch):
    monkeypatch.setattr(kernels.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(kernels, "cpu_features", lambda: build_flags.cpu_features(ARM_CPUINFO))
    monkeypatch.setattr(kernels, "kernel_arch", lambda: "aarch64")
    assert kernels._cpu_problem() is None
    monkeypatch.setattr(kernels, "cpu_features", lambda: frozenset({"fp"}))
    assert kernels._cpu_problem() == "CPU lacks asimd (the NEON kernels need it)"
