#!/usr/bin/env bash
# Soak test: 10^6 training steps on a small layer; fails if VmRSS grows by more than the slack
# (KiB) or the number of open file descriptors changes after the first sample. Not in CI.
#   bash scripts/soak.sh [steps [interval [slack_kib]]]     (defaults: 1000000 100000 2048)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD_DIR" -j"$(nproc)" --target bn_soak
"$BUILD_DIR/tests/soak/bn_soak" "$@"
