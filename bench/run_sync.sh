#!/usr/bin/env bash
# The synchronization benchmark at 2 and 4 ranks (bn_sync_bench, see README "Synchronized batch
# norm"): one table per rank count on stdout, CSVs sync_2.csv and sync_4.csv in the current
# directory.
#   bench/run_sync.sh [build-dir] [bn_sync_bench options...]    (build-dir default: build)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
exe=$build/bench/bn_sync_bench
[ -x "$exe" ] || { echo "no $exe: configure with -DBN_BUILD_BENCH=ON and MPI (libopenmpi-dev)" >&2; exit 1; }
flags=()
if mpiexec --version 2>/dev/null | grep -q -E "Open MPI|OpenRTE"; then
  flags=(--allow-run-as-root --oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none)
fi
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
for ranks in 2 4; do
  echo
  [ "$ranks" -gt "$(nproc)" ] && echo "($ranks ranks on $(nproc) cores: oversubscribed, the ranks share the cores)"
  OPENBLAS_NUM_THREADS=1 mpiexec -n "$ranks" "${flags[@]}" "$exe" --csv "sync_$ranks.csv" "$@"
done
echo
echo "load average $(cut -d' ' -f1-3 /proc/loadavg) after the run (compare times only from quiet runs)"
