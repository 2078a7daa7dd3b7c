# Sourced by scripts/sanitize.sh and scripts/fuzz.sh: configures the instrumented trees (clang).
#   build-asan  ASan + UBSan + libFuzzer coverage: the instrumented test suite and the fuzz targets
#   build-tsan  ThreadSanitizer: the thread tests
# Configured with -Release; cmake/sanitize.cmake lowers it to -O1 with line tables. Without the
# MPI component: its tests run under mpiexec, whose runtime is not instrumented.
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
ASAN_TREE=${BN_ASAN_BUILD_DIR:-$ROOT/build-asan}
TSAN_TREE=${BN_TSAN_BUILD_DIR:-$ROOT/build-tsan}

configure_tree() {  # tree, cmake arguments...
  local tree=$1
  shift
  mkdir -p "$tree"
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$tree" -DCMAKE_BUILD_TYPE=Release -DBN_BUILD_BENCH=OFF -DBN_BUILD_MPI=OFF "$@" \
    >"$tree/configure.log" 2>&1 || { cat "$tree/configure.log"; return 1; }
}

configure_asan_tree() { configure_tree "$ASAN_TREE" -DBN_SANITIZE=address,undefined -DBN_FUZZ=ON -DBN_BUILD_TESTS=ON; }
configure_tsan_tree() { configure_tree "$TSAN_TREE" -DBN_SANITIZE=thread; }
