/* Normalizes one small batch through an installed libbatchnorm and checks the result. */
#include <batchnorm/batchnorm.h>
#include <math.h>
#include <stdio.h>

int main(void) {
  bn_config* cfg = NULL;
  bn_layer* layer = NULL;
  const int64_t shape[2] = {4, 1};
  const float x[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  float y[4];
  if (bn_version() / 10000 != BN_VERSION_MAJOR) return 1;
  if (bn_config_create(&cfg) != BN_OK || bn_config_set_epsilon(cfg, 0.0) != BN_OK ||
      bn_create(cfg, shape, 2, &layer) != BN_OK || bn_set_training(layer, 1) != BN_OK ||
      bn_forward(layer, shape, 2, x, y) != BN_OK) {
    fprintf(stderr, "consumer: %s\n", bn_last_error());
    return 1;
  }
  /* mean 2.5, biased variance 1.25: y = (x - 2.5) / sqrt(1.25) */
  for (int i = 0; i < 4; ++i) {
    const double expected = (x[i] - 2.5) / sqrt(1.25);
    if (fabs(y[i] - expected) > 1e-6) {
      fprintf(stderr, "consumer: y[%d]=%g, expected %g\n", i, y[i], expected);
      return 1;
    }
  }
  bn_destroy(layer);
  bn_config_destroy(cfg);
  printf("consumer: libbatchnorm %s OK\n", bn_version_string());
  return 0;
}
