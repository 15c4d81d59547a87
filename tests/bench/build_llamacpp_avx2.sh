#!/usr/bin/env bash
# Builds llama-cpp-python with an AVX2-only llama.cpp into a separate site dir, so that
# tests/bench/compare_llamacpp.py --llamacpp-lib DIR can compare AVX2 against AVX2 on a machine
# that also has AVX-512/VNNI/AMX (the PyPI build compiles for the machine it runs on).
#
#   tests/bench/build_llamacpp_avx2.sh [TARGET_DIR] [VERSION]     (default /work/llama_avx2 0.3.36)
#
# GGML_NATIVE=OFF stops -march=native; the GGML_* switches below then are the whole ISA list
# (option names checked against the llama.cpp vendored in llama-cpp-python 0.3.36:
# ggml/CMakeLists.txt). No tools, examples, tests or multimodal library: only libllama/libggml.
# Takes 5-12 minutes on 2 cores. Check the result with
#   PYTHONPATH=TARGET_DIR python -c "import llama_cpp; print(llama_cpp.llama_print_system_info())"
# which must list AVX2 = 1 and AVX512 = 0.
set -euo pipefail

TARGET=${1:-/work/llama_avx2}
VERSION=${2:-0.3.36}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PIP=${PIP:-$ROOT/.venv/bin/pip}

export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF \
-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAVA_BUILD=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

mkdir -p "$TARGET"
"$PIP" install --no-deps --no-cache-dir --no-binary llama-cpp-python --upgrade \
    --target "$TARGET" "llama-cpp-python==$VERSION"

PYTHONPATH="$TARGET" "$ROOT/.venv/bin/python" - <<'EOF'
import llama_cpp
info = llama_cpp.llama_print_system_info().decode()
print(llama_cpp.__file__)
print(info)
if "AVX512 = 1" in info or "AMX_INT8 = 1" in info or "AVX2 = 1" not in info:
    raise SystemExit("this build is not AVX2-only")
EOF
