#!/usr/bin/env bash
# Build the standalone LLM Lens app (PyInstaller, one folder): packaging/dist/llmlens/llmlens.
#
#   packaging/build.sh            # build venv in packaging/build/venv, then the bundle
#
# The build venv holds the runtime dependencies only (CPU torch, PySide6, ...; no test or
# reference packages) plus PyInstaller; it is created once and reused. The project is installed
# into it from a copy of the sources (so the checkout's own build/ and .so stay untouched), which
# compiles the fused kernels (engine.kernels._qgemv) with the system C++ compiler: the bundle
# carries that library, so the target machine needs no compiler.
#
# Environment: LLMLENS_BUILD_VENV (another venv to build in), PYTHON (interpreter that creates
# the venv, default python3).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
BUILD="$HERE/build"
VENV="${LLMLENS_BUILD_VENV:-$BUILD/venv}"
SRC="$BUILD/src"
start=$(date +%s)

mkdir -p "$BUILD"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# Build tools and PyInstaller; torch pinned as in pyproject.toml (the CPU build).
"$VENV/bin/pip" install -q "setuptools>=68" wheel "torch==2.13.0" "pyinstaller>=6.10,<7"

# A clean copy of the sources: what pip builds from and what records the git revision.
rm -rf "$SRC" && mkdir -p "$SRC"
cp -a "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT/README.md" "$ROOT/LICENSE" "$SRC/"
for d in app engine ui resources; do
    cp -a "$ROOT/$d" "$SRC/$d"
done
find "$SRC" \( -name __pycache__ -o -name '*.so' \) -prune -exec rm -rf {} +
"$VENV/bin/python" "$HERE/build_info.py" "$ROOT" "$BUILD/build_info.json"

# The runtime dependencies (pyproject's list, no extras), then the project itself, always
# rebuilt (--force-reinstall) so the bundle has the current sources; --no-build-isolation: the
# kernels compile against the venv's torch, the one the bundle ships.
"$VENV/bin/python" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$SRC/pyproject.toml" > "$BUILD/requirements.txt"
"$VENV/bin/pip" install -q -r "$BUILD/requirements.txt"
"$VENV/bin/pip" install -q --no-build-isolation --force-reinstall --no-deps "$SRC"
# On x86-64 the bundle must carry the kernels (setup.py builds them only there).
case "$(uname -m)" in
    x86_64|amd64)
        "$VENV/bin/python" -c "import engine.kernels._qgemv" || {
            echo "build.sh: the fused kernels did not compile (is a C++ compiler installed?)" >&2
            exit 1; } ;;
esac

cd "$BUILD"
"$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
    --workpath "$BUILD/pyinstaller" --distpath "$HERE/dist" "$HERE/llmlens.spec"
# So that a copied bundle folder can install its own menu entry.
cp "$HERE/install-desktop-entry.sh" "$HERE/dist/llmlens/"

end=$(date +%s)
echo "build.sh: built $HERE/dist/llmlens/llmlens in $((end - start)) s," \
     "$(du -sh "$HERE/dist/llmlens" | cut -f1) on disk"
