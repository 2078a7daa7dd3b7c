#!/usr/bin/env bash
# The tool runs of the test suite, each in a tree of its own beside the normal build:
#   bash scripts/sanitize.sh asan       AddressSanitizer (leaks included) + UndefinedBehaviorSanitizer,
#                                       tree build-asan (clang; it also holds the fuzz targets of
#                                       scripts/fuzz.sh), every tier that can run instrumented
#   bash scripts/sanitize.sh tsan       ThreadSanitizer, tree build-tsan (clang), the thread tests
#   bash scripts/sanitize.sh valgrind   valgrind memcheck over the C API tests (tests/capi, tests/c,
#                                       the fuzz corpora) of the normal tree $BUILD_DIR (default build)
# Several at once: bash scripts/sanitize.sh asan tsan valgrind. Any report fails the run.
#
# Not under ASan+UBSan (ctest labels excluded, and why):
#   python, rust, go  load libbatchnorm.so into an interpreter or a test binary that is not
#                     instrumented (the ASan runtime must come first in the process);
#   package           installs the build and consumes it with projects built without sanitizers;
#   abi, docs         read the library's symbols and the headers, run no library code;
#   bench             not built in the instrumented tree (its peers are prebuilt libraries);
#   large             its 8 GiB tensor is an mmap, whose bounds ASan does not track: it would
#                     check nothing the normal run does not, at 45 s.
# capi.out_of_memory reports a skip there (exit code 77): an address-space limit cannot coexist
# with ASan's shadow memory.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JOBS=$(nproc)
[ $# -gt 0 ] || set -- asan tsan valgrind

source "$ROOT/scripts/tool_trees.sh"

run_asan() {
  echo "== asan+ubsan: building the suite in $ASAN_TREE (clang)"
  configure_asan_tree
  cmake --build "$ASAN_TREE" -j"$JOBS"
  echo "== asan+ubsan: ctest (all tiers but python, rust, go, package, abi, docs, bench, large)"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir "$ASAN_TREE" --output-on-failure -j"$JOBS" -LE '^(python|rust|go|package|abi|docs|bench|large)$'
}

run_tsan() {
  echo "== tsan: building bn_capi_tests in $TSAN_TREE (clang)"
  configure_tsan_tree
  cmake --build "$TSAN_TREE" -j"$JOBS" --target bn_capi_tests
  echo "== tsan: the thread tests (bn_capi_tests [threads])"
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 "$TSAN_TREE/tests/capi/bn_capi_tests" "[threads]"
}

run_valgrind() {
  local tree=${BUILD_DIR:-$ROOT/build}
  [ -x "$tree/tests/capi/bn_capi_tests" ] || { echo "valgrind: build the normal tree $tree first"; return 1; }
  local vg=(valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
            --show-leak-kinds=definite --track-origins=yes)
  # (not bn_capi_out_of_memory: it lowers RLIMIT_AS, which valgrind cannot run under; it would skip)
  local programs=("$tree/tests/capi/bn_capi_tests")
  for p in "$tree"/tests/c/bn_c*; do [ -x "$p" ] && programs+=("$p"); done
  local status=0
  for p in "${programs[@]}"; do
    echo "== valgrind memcheck: ${p#"$tree"/}"
    "${vg[@]}" "$p" || status=1
  done
  for replay in "$tree"/tests/fuzz/fuzz_*_replay; do
    [ -x "$replay" ] || continue
    local name
    name=$(basename "$replay" _replay)
    echo "== valgrind memcheck: ${replay#"$tree"/} (corpus ${name#fuzz_})"
    "${vg[@]}" "$replay" "$ROOT/tests/fuzz/corpus/${name#fuzz_}" >/dev/null || status=1
  done
  return $status
}

for tool in "$@"; do
  case $tool in
    asan) run_asan ;;
    tsan) run_tsan ;;
    valgrind) run_valgrind ;;
    *) echo "unknown tool: $tool (asan, tsan, valgrind)"; exit 2 ;;
  esac
done
