/* The public header compiled as strict C11: the ABI's fixed-width types checked at
 * compile time, and an inference forward in double precision checked by hand. */
#include <batchnorm/batchnorm.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Every enumeration of the ABI is an int32_t (API.md "Rules"). */
#define BN_IS_INT32(T) _Generic((T)0, int32_t: 1, default: 0)
_Static_assert(BN_IS_INT32(bn_status), "bn_status is int32_t");
_Static_assert(BN_IS_INT32(bn_dtype), "bn_dtype is int32_t");
_Static_assert(BN_IS_INT32(bn_param), "bn_param is int32_t");
_Static_assert(BN_IS_INT32(bn_fused), "bn_fused is int32_t");
_Static_assert(BN_IS_INT32(bn_keras_rules), "bn_keras_rules is int32_t");
_Static_assert(BN_IS_INT32(bn_moving_variance), "bn_moving_variance is int32_t");
_Static_assert(BN_IS_INT32(bn_single_value_policy), "bn_single_value_policy is int32_t");
_Static_assert(BN_OK == 0 && BN_ERR_INTERNAL == 9, "pinned status values");
_Static_assert(BN_F32 == 0 && BN_F64 == 1 && BN_BF16 == 2 && BN_F16 == 3, "pinned dtype values");
_Static_assert(BN_PARAM_GAMMA == 0 && BN_PARAM_MOVING_STDDEV == 8, "pinned parameter values");

int main(void) {
  bn_config* cfg = NULL;
  bn_layer* layer = NULL;
  const int32_t axes[1] = {0};
  const int64_t shape[2] = {3, 2}; /* features along axis 0 */
  const double x[6] = {1, 3, -4, 4, 10, 10};
  const double mean[3] = {1, 0, 5};
  const double var[3] = {4, 16, 0.25};
  double y[6];
  int failures = 0;
  int fused = -1;

  if (bn_config_create(&cfg) != BN_OK) return 1;
  failures += bn_config_set_axes(cfg, axes, 1) != BN_OK;
  failures += bn_config_set_dtype(cfg, BN_F64) != BN_OK;
  failures += bn_config_set_epsilon(cfg, 0.0) != BN_OK;
  failures += bn_config_set_dtype(cfg, 4) != BN_ERR_INVALID_ARGUMENT; /* unknown dtype: refused, F64 kept */
  failures += bn_create(cfg, shape, 2, &layer) != BN_OK;
  bn_config_destroy(cfg);
  if (!layer) return 1;
  failures += bn_get_fused(layer, &fused) != BN_OK || fused != 0;
  failures += bn_set_param(layer, BN_PARAM_MOVING_MEAN, mean, 3) != BN_OK;
  failures += bn_set_param(layer, BN_PARAM_MOVING_VARIANCE, var, 3) != BN_OK;
  failures += bn_forward(layer, shape, 2, x, y) != BN_OK; /* a new layer infers */
  {
    /* y = (x - mean)/sqrt(var): row 0 -> {0, 1}, row 1 -> {-1, 1}, row 2 -> {10, 10}. */
    const double want[6] = {0, 1, -1, 1, 10, 10};
    int i;
    for (i = 0; i < 6; ++i) failures += fabs(y[i] - want[i]) > 1e-12;
  }
  failures += bn_forward(layer, shape, 1, x, y) != BN_ERR_SHAPE;
  failures += strstr(bn_last_error(), "bn_forward") == NULL;
  bn_destroy(layer);
  if (failures) fprintf(stderr, "c11: %d failures (last error: %s)\n", failures, bn_last_error());
  else printf("c11: ok\n");
  return failures == 0 ? 0 : 1;
}
