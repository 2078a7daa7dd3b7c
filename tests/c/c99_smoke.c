/* The public header compiled as strict C99: a training step and a backward through the
 * C API, checked against values derived by hand. Exit status 0 on success. */
#include <batchnorm/batchnorm.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

static int failures = 0;

#define EXPECT(cond)                                                         \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: failed: %s (last error: %s)\n", __FILE__,      \
              __LINE__, #cond, bn_last_error());                             \
      ++failures;                                                            \
    }                                                                        \
  } while (0)

static int close_to(double got, double want) { return fabs(got - want) <= 1e-5 * (1.0 + fabs(want)); }

int main(void) {
  bn_config* cfg = NULL;
  bn_layer* layer = NULL;
  /* Two features, four rows: column 0 = {1,2,3,4} (mean 2.5, biased variance 1.25),
   * column 1 = {-2,-2,2,2} (mean 0, variance 4). */
  const int64_t shape[2] = {4, 2};
  const float x[8] = {1, -2, 2, -2, 3, 2, 4, 2};
  float y[8], dx[8], dgamma[2], dbeta[2], mean[2], var[2];
  const float gamma[2] = {2.0f, 1.0f};
  const float beta[2] = {0.5f, 3.0f};
  int i;

  EXPECT(bn_version() == BN_VERSION_NUMBER);
  EXPECT(strcmp(bn_status_string(BN_ERR_SHAPE), "BN_ERR_SHAPE") == 0);
  EXPECT(bn_config_create(&cfg) == BN_OK);
  EXPECT(bn_config_set_momentum(cfg, 0.5) == BN_OK);
  EXPECT(bn_config_set_epsilon(cfg, 0.0) == BN_OK);
  EXPECT(bn_config_set_momentum(cfg, 2.0) == BN_ERR_INVALID_ARGUMENT);
  EXPECT(strstr(bn_last_error(), "bn_config_set_momentum") != NULL);
  EXPECT(bn_create(cfg, shape, 2, &layer) == BN_OK);
  bn_config_destroy(cfg);
  if (!layer) return 1;
  EXPECT(bn_num_features(layer) == 2);
  EXPECT(bn_set_param(layer, BN_PARAM_GAMMA, gamma, 2) == BN_OK);
  EXPECT(bn_set_param(layer, BN_PARAM_BETA, beta, 2) == BN_OK);
  EXPECT(bn_set_training(layer, 1) == BN_OK);
  EXPECT(bn_forward(layer, shape, 2, x, y) == BN_OK);
  /* epsilon 0: y = 2*(x - 2.5)/sqrt(1.25) + 0.5 on column 0, x/2 + 3 on column 1. */
  for (i = 0; i < 4; ++i) {
    EXPECT(close_to(y[2 * i], 2.0 * (x[2 * i] - 2.5) / sqrt(1.25) + 0.5));
    EXPECT(close_to(y[2 * i + 1], x[2 * i + 1] / 2.0 + 3.0));
  }
  EXPECT(bn_get_param(layer, BN_PARAM_MOVING_MEAN, mean, 2) == BN_OK);
  EXPECT(bn_get_param(layer, BN_PARAM_MOVING_VARIANCE, var, 2) == BN_OK);
  EXPECT(close_to(mean[0], 1.25) && close_to(mean[1], 0.0)); /* 0.5*0 + 0.5*mean */
  EXPECT(close_to(var[0], 1.125) && close_to(var[1], 2.5));  /* 0.5*1 + 0.5*var */
  /* dy = 1: dbeta = 4, dgamma = sum xhat = 0, dx = 0 (a constant shift of y). */
  {
    const float dy[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    EXPECT(bn_backward(layer, shape, 2, x, dy, dx, dgamma, dbeta) == BN_OK);
    EXPECT(close_to(dbeta[0], 4.0) && close_to(dbeta[1], 4.0));
    EXPECT(close_to(dgamma[0], 0.0) && close_to(dgamma[1], 0.0));
    for (i = 0; i < 8; ++i) EXPECT(close_to(dx[i], 0.0));
  }
  bn_destroy(layer);
  layer = NULL;
  /* Keras options: gamma starts at -1 (CONSTANT), L2(0.5) gives 0.5*(1 + 1) = 1, and NonNeg
   * zeroes it. */
  {
    float g[2];
    double loss = -1.0;
    EXPECT(bn_config_create(&cfg) == BN_OK);
    EXPECT(bn_config_set_initializer(cfg, BN_PARAM_GAMMA, BN_INITIALIZER_CONSTANT, -1.0, 0.0, (uint64_t)0) == BN_OK);
    EXPECT(bn_config_set_regularizer(cfg, BN_PARAM_GAMMA, 0.0, 0.5) == BN_OK);
    EXPECT(bn_config_set_constraint(cfg, BN_PARAM_GAMMA, BN_CONSTRAINT_NON_NEG, 0.0, 0.0, 0.0, NULL, 0) == BN_OK);
    EXPECT(bn_create(cfg, shape, 2, &layer) == BN_OK);
    bn_config_destroy(cfg);
    if (!layer) return 1;
    EXPECT(bn_regularization_loss(layer, &loss) == BN_OK && close_to(loss, 1.0));
    EXPECT(bn_apply_constraints(layer) == BN_OK);
    EXPECT(bn_get_param(layer, BN_PARAM_GAMMA, g, 2) == BN_OK && g[0] == 0.0f && g[1] == 0.0f);
    EXPECT(bn_regularization_loss(layer, &loss) == BN_OK && loss == 0.0);
    bn_destroy(layer);
  }
  bn_destroy(NULL);
  bn_config_destroy(NULL);
  if (failures == 0) printf("c99: ok\n");
  return failures == 0 ? 0 : 1;
}
