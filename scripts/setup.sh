#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks, then configures and builds.
# Sourced by demo.sh and test.sh; BUILD_DIR (default: build) is exported.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
PACKAGES=(build-essential cmake pkg-config libtbb-dev libopenblas-dev catch2 python3 python3-numpy python3-sklearn gzip libssl-dev abigail-tools doxygen dpkg-dev golang-go clang libclang-rt-14-dev libfuzzer-14-dev valgrind libopenmpi-dev openmpi-bin)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "== configuring and building in $BUILD_DIR"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DBN_WARNINGS_AS_ERRORS=ON -DBN_BUILD_BENCH=ON ${BN_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j"$(nproc)"
export BUILD_DIR
