#!/usr/bin/env bash
# Builds oxtrain and its test suite with AddressSanitizer + UndefinedBehaviorSanitizer in
# build-asan (CUDA off; -O1 -g -fno-omit-frame-pointer; a UBSan report stops the program) and
# runs the suite with ctest. Tests that bound memory by RSS or address space skip there with a
# message (running_under_sanitizer(), tests/helpers.h; ASan reserves terabytes of shadow memory).
#
#   scripts/sanitize.sh [CTEST ARGS...]       e.g. -R Checkpoint, or -E 'ParityFull' to skip
#
# Every report, from the test program or from an oxtrain it runs (whose stderr a test may only
# inspect), goes to build-asan/sanitizer-reports/; the script lists them and fails when there is
# one, even if every test passed. CXX=clang++ builds with clang instead of gcc.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

build=build-asan
start=$(date +%s)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DOXTRAIN_SANITIZE=address,undefined -DOXTRAIN_CUDA=OFF "${launcher[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)" 2>&1 | { grep -E "error|warning:" || true; }
built=$(date +%s)

reports=$PWD/$build/sanitizer-reports
rm -rf "$reports" && mkdir -p "$reports"
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:print_stacktrace=1:log_path=$reports/asan
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan
status=0
ctest --test-dir "$build" --output-on-failure -j"$(nproc)" "$@" || status=$?
done_at=$(date +%s)

shopt -s nullglob
found=("$reports"/*)
if [ ${#found[@]} -gt 0 ]; then
  echo "sanitize.sh: ${#found[@]} sanitizer report(s) in $reports:"
  for f in "${found[@]}"; do
    echo "--- $(basename "$f"): $(grep -m1 -E 'ERROR: |runtime error: ' "$f" || head -1 "$f")"
    grep -m3 -E '^ +#[0-9]+ ' "$f" || true
  done
  [ $status -eq 0 ] && status=1
fi
echo "sanitize.sh: build $((built - start)) s, tests $((done_at - built)) s"
exit $status
