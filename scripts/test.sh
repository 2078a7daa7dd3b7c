#!/usr/bin/env bash
# Quick start 2: set up, build, and run the whole test suite:
#   1. the normal suite (ctest in $BUILD_DIR, default build/), arguments passed to ctest;
#   2. the tool runs: ASan+UBSan over the suite (build-asan), valgrind memcheck over the C API
#      tests, TSan over the thread tests (build-tsan), each fuzz target for 60 s from its
#      corpus (build-asan); see scripts/sanitize.sh and scripts/fuzz.sh.
# BN_SKIP_TOOLS=1 runs the normal suite only (quick local iterations). Every stage runs even if
# an earlier one failed; the exit status is non-zero if any did. The times are summed up last.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
start=$SECONDS
source "$ROOT/scripts/setup.sh"
summary=("setup and build: $((SECONDS - start)) s")
passed=0
failed=0

stage() {  # name, command...
  local name=$1 t0=$SECONDS
  shift
  echo "== stage: $name"
  if "$@"; then
    passed=$((passed + 1))
    summary+=("$name: $((SECONDS - t0)) s")
  else
    failed=$((failed + 1))
    summary+=("$name: $((SECONDS - t0)) s, FAILED")
  fi
}

stage "normal suite" ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$(nproc)" "$@"
if [ "${BN_SKIP_TOOLS:-0}" = 1 ]; then
  echo "== BN_SKIP_TOOLS=1: the tool runs (sanitizers, valgrind, fuzzing) are skipped"
else
  stage "valgrind memcheck (C API tests)" bash "$ROOT/scripts/sanitize.sh" valgrind
  stage "ThreadSanitizer (thread tests)" bash "$ROOT/scripts/sanitize.sh" tsan
  stage "ASan+UBSan (test suite)" bash "$ROOT/scripts/sanitize.sh" asan
  stage "libFuzzer (60 s per target)" bash "$ROOT/scripts/fuzz.sh"
fi
echo "== summary ($((SECONDS - start)) s in all)"
printf '   %s\n' "${summary[@]}"
echo "stages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
