#!/usr/bin/env bash
# Quick start 3: set up, build, and run the digits demo data-parallel over MPI: 2 ranks (or
# BN_RANKS), next to one process. Extra arguments go to the demo (see --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exe=$BUILD_DIR/examples/demo/bn_digits_demo_mpi
if [ ! -x "$exe" ]; then
  echo "bn_digits_demo_mpi was not built: it needs MPI (Debian: apt-get install libopenmpi-dev openmpi-bin)" >&2
  exit 1
fi
# Open MPI: root needs --allow-run-as-root, more ranks than cores --oversubscribe; loopback
# only (shared memory, without the CMA single copy that containers usually forbid). The same
# flags as the CTest tests (BN_MPIEXEC_FLAGS in mpi/CMakeLists.txt).
flags=()
if mpiexec --version 2>/dev/null | grep -q -E "Open MPI|OpenRTE"; then
  flags=(--allow-run-as-root --oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none)
fi
# One BLAS and one batch norm thread per rank: the ranks are the parallelism.
OPENBLAS_NUM_THREADS=1 exec mpiexec -n "${BN_RANKS:-2}" "${flags[@]}" "$exe" --threads 1 "$@"
