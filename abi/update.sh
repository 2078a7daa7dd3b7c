#!/usr/bin/env bash
# Regenerates the ABI baseline abi/libbatchnorm.abi from a Release build:
#   abi/update.sh [build-dir]      (default: build; configured and built if needed)
# Run it when a release adds functions (so the next check guards them too) or, with a
# SONAME bump, after an intended break. Review the diff of libbatchnorm.abi before committing:
# removed or changed entries mean old binaries break.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
command -v abidw >/dev/null || { echo "abidw not found (Debian: apt install abigail-tools)"; exit 1; }
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target batchnorm -j"$(nproc)"
# The file the unversioned link resolves to: a build tree that built an earlier version still
# holds that version's libbatchnorm.so.X.Y.Z too.
link=$(find "$build" -maxdepth 2 -name 'libbatchnorm.so' | head -n 1)
[ -n "$link" ] || { echo "no libbatchnorm.so in $build"; exit 1; }
lib=$(readlink -f "$link")
# No paths or source locations: the file changes only when the ABI does.
abidw --headers-dir "$root/include/batchnorm" --drop-private-types --no-corpus-path \
  --no-comp-dir-path --no-show-locs --exported-interfaces-only \
  --out-file "$root/abi/libbatchnorm.abi" "$lib"
# The compile units' names are absolute: keep them relative to the repository.
sed -i "s|path='$root/|path='|" "$root/abi/libbatchnorm.abi"
echo "wrote $root/abi/libbatchnorm.abi from $lib"
