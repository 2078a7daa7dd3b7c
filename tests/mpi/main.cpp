// bn_mpi_tests / bn_mpi_unit_tests: run under mpirun (see CMakeLists.txt). Optional argument:
// a substring of the test names to run. Checks bn_mpi's refusal before MPI_Init and after
// MPI_Finalize on every rank, around the collective tests.
#include <mpi.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "batchnorm/batchnorm_mpi.h"
#include "harness.hpp"

namespace {

// Before MPI_Init and after MPI_Finalize: BN_ERR_STATE, nothing attached. Returns failures.
int outside_mpi(const char* when) {
  int failures = 0;
  double v = 1.0;
  bn_config* cfg = nullptr;
  if (bn_config_create(&cfg) != BN_OK) return 1;
  const bn_status a = bn_mpi_allreduce(nullptr, &v, 1);
  if (a != BN_ERR_STATE || std::strstr(bn_mpi_last_error(), "bn_mpi_allreduce: MPI is") == nullptr) {
    std::fprintf(stderr, "%s: bn_mpi_allreduce returned %s (%s), expected BN_ERR_STATE\n", when, bn_status_string(a),
                 bn_mpi_last_error());
    ++failures;
  }
  const bn_status b = bn_config_set_mpi(cfg, MPI_COMM_WORLD);
  if (b != BN_ERR_STATE || std::strstr(bn_mpi_last_error(), "bn_config_set_mpi: MPI is") == nullptr) {
    std::fprintf(stderr, "%s: bn_config_set_mpi returned %s (%s), expected BN_ERR_STATE\n", when, bn_status_string(b),
                 bn_mpi_last_error());
    ++failures;
  }
  bn_config_destroy(cfg);
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  int failures = outside_mpi("before MPI_Init");
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  const int rank = bn_mpi_test::rank();
  int failed_tests = bn_mpi_test::run_all(argc > 1 ? argv[1] : "");
  MPI_Finalize();
  failures += outside_mpi("after MPI_Finalize");
  if (failures > 0) std::fprintf(stderr, "[rank %d] %d check(s) outside MPI failed\n", rank, failures);
  return failed_tests + failures > 0 ? 1 : 0;
}
