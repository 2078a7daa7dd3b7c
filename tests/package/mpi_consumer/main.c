/* Synchronized batch norm through an installed libbatchnorm_mpi: every rank holds one value
 * of a feature, the layer normalizes them over all ranks together. Run with 2 ranks. */
#include <batchnorm/batchnorm_mpi.h>
#include <math.h>
#include <stdio.h>

static int fail(const char* what) {
  fprintf(stderr, "mpi_consumer: %s: %s | %s\n", what, bn_last_error(), bn_mpi_last_error());
  return 1;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0, status = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  bn_config* cfg = NULL;
  bn_layer* layer = NULL;
  const int64_t shape[2] = {1, 1};
  const double x = rank + 1.0; /* the global batch is 1, 2, ..., size */
  double y = 0.0;
  if (bn_config_create(&cfg) != BN_OK || bn_config_set_dtype(cfg, BN_F64) != BN_OK ||
      bn_config_set_epsilon(cfg, 0.0) != BN_OK || bn_config_set_mpi(cfg, MPI_COMM_WORLD) != BN_OK ||
      bn_create(cfg, shape, 2, &layer) != BN_OK || bn_set_training(layer, 1) != BN_OK ||
      bn_forward(layer, shape, 2, &x, &y) != BN_OK) {
    status = fail("setting up or running the layer");
  } else {
    const double mean = (size + 1) / 2.0, var = (size * (double)size - 1.0) / 12.0;
    const double expected = (x - mean) / sqrt(var);
    if (fabs(y - expected) > 1e-12) {
      fprintf(stderr, "mpi_consumer: rank %d: y=%.17g, expected %.17g\n", rank, y, expected);
      status = 1;
    }
  }
  bn_destroy(layer);
  bn_config_destroy(cfg);
  if (status == 0 && rank == 0) printf("mpi_consumer: libbatchnorm %s over %d ranks OK\n", bn_version_string(), size);
  MPI_Finalize();
  return status;
}
