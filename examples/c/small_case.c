/* The shared small case (examples/README.md) in plain C99: one training step of
 * BatchNormalization(axis=1, momentum=0.9, epsilon=1e-3) on a 2x3x2x2 NCHW batch, every
 * result checked against examples/expected_small_case.txt. Usage: small_case [FILE]. */
#include <batchnorm/batchnorm.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { kMaxValues = 32 };

/* Reads the values of item `name` (a line "name v1 v2 ...") into out; returns their count. */
static int read_item(const char* path, const char* name, double* out) {
  char line[4096];
  int count = -1;
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  while (fgets(line, sizeof line, f)) {
    char* token = strtok(line, " \t\r\n");
    if (!token || token[0] == '#' || strcmp(token, name) != 0) continue;
    count = 0;
    while ((token = strtok(NULL, " \t\r\n")) && count < kMaxValues) out[count++] = strtod(token, NULL);
    break;
  }
  fclose(f);
  return count;
}

static int check(const char* what, const float* got, const double* want, int n, double tol) {
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    if (!(fabs((double)got[i] - want[i]) <= tol)) {
      fprintf(stderr, "%s[%d] = %.9g, expected %.9g\n", what, i, (double)got[i], want[i]);
      ++bad;
    }
  }
  return bad;
}

#define TRY(call)                                                                             \
  do {                                                                                        \
    if ((call) != BN_OK) {                                                                    \
      fprintf(stderr, "%s failed: %s\n", #call, bn_last_error());                             \
      return 1;                                                                               \
    }                                                                                         \
  } while (0)

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "examples/expected_small_case.txt";
  double xd[kMaxValues], gd[kMaxValues], bd[kMaxValues], y_want[kMaxValues], mm_want[kMaxValues], mv_want[kMaxValues];
  double tol[1];
  if (read_item(path, "x", xd) != 24 || read_item(path, "gamma", gd) != 3 || read_item(path, "beta", bd) != 3 ||
      read_item(path, "y", y_want) != 24 || read_item(path, "moving_mean", mm_want) != 3 ||
      read_item(path, "moving_variance", mv_want) != 3 || read_item(path, "tolerance", tol) != 1) {
    fprintf(stderr, "small_case: cannot read the expected values from %s\n", path);
    return 1;
  }
  const int64_t shape[4] = {2, 3, 2, 2};
  const int32_t axis = 1;
  float x[24], y[24], gamma[3], beta[3], mm[3], mv[3];
  for (int i = 0; i < 24; ++i) x[i] = (float)xd[i];
  for (int i = 0; i < 3; ++i) {
    gamma[i] = (float)gd[i];
    beta[i] = (float)bd[i];
  }
  bn_config* cfg = NULL;
  bn_layer* layer = NULL;
  TRY(bn_config_create(&cfg));
  TRY(bn_config_set_axes(cfg, &axis, 1));
  TRY(bn_config_set_momentum(cfg, 0.9));
  TRY(bn_config_set_epsilon(cfg, 1e-3));
  TRY(bn_create(cfg, shape, 4, &layer));
  bn_config_destroy(cfg);
  TRY(bn_set_param(layer, BN_PARAM_GAMMA, gamma, 3));
  TRY(bn_set_param(layer, BN_PARAM_BETA, beta, 3));
  TRY(bn_set_training(layer, 1));
  TRY(bn_forward(layer, shape, 4, x, y));
  TRY(bn_get_param(layer, BN_PARAM_MOVING_MEAN, mm, 3));
  TRY(bn_get_param(layer, BN_PARAM_MOVING_VARIANCE, mv, 3));
  bn_destroy(layer);
  const int bad = check("y", y, y_want, 24, tol[0]) + check("moving_mean", mm, mm_want, 3, tol[0]) +
                  check("moving_variance", mv, mv_want, 3, tol[0]);
  printf("small case (C): y[0] = %.6f, moving_mean = %.6f %.6f %.6f, moving_variance = %.6f %.6f %.6f: %s\n",
         (double)y[0], (double)mm[0], (double)mm[1], (double)mm[2], (double)mv[0], (double)mv[1], (double)mv[2],
         bad ? "MISMATCH" : "all 30 values match");
  return bad ? 1 : 0;
}
