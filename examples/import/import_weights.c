/* Importing batch-norm weights trained elsewhere, from raw little-endian float32 arrays.
 *
 *   import_weights keras WEIGHTS CASE   Keras: gamma, beta, moving_mean, moving_variance, one
 *                                       file (np.concatenate(layer.get_weights())); CASE holds
 *                                       an NHWC input and Keras' output (make_keras_case.py)
 *   import_weights torch DIR            PyTorch: a BatchNorm2d state dict, one file per entry,
 *                                       and torch's results to compare with (torch_export.py)
 *
 * Conventions (README "Saving, loading and importing"):
 *   Keras    BatchNormalization(axis=-1, momentum, epsilon): the library's own conventions;
 *            nothing to convert.
 *   PyTorch  BatchNorm2d(C, eps, momentum) on NCHW input:
 *            axis 1; epsilon = eps;
 *            momentum: Keras momentum = 1 - PyTorch momentum (PyTorch weights the new batch
 *              by its momentum, Keras keeps that fraction of the old value);
 *              momentum=None is the cumulative average: bn_config_set_cumulative_average(1)
 *              with the step counter set to num_batches_tracked, so that the next batch is
 *              weighted 1/(num_batches_tracked + 1) as PyTorch would;
 *            running_var is fed the unbiased (Bessel-corrected) batch variance:
 *              BN_MOVING_VARIANCE_UNBIASED;
 *            fused OFF: PyTorch does not clamp eps (Keras' fused path clamps it to 1.001e-5)
 *              and updates with the plain weighted average;
 *            BN_SINGLE_VALUE_REJECT: PyTorch refuses to train on one value per channel.
 * After the import the program checks inference (and, for PyTorch, one more training step
 * and the running statistics it leaves) against the other framework's numbers, saves the
 * layer as a state file and checks that the file gives the same layer back. */
#include <batchnorm/batchnorm.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { kMaxChannels = 64, kMaxValues = 4096 };

#define TRY(call)                                                 \
  do {                                                            \
    if ((call) != BN_OK) {                                        \
      fprintf(stderr, "%s failed: %s\n", #call, bn_last_error()); \
      return 1;                                                   \
    }                                                             \
  } while (0)

/* Reads exactly `count` elements of `size` bytes from dir/name (little-endian host). */
static int read_raw(const char* dir, const char* name, void* out, size_t size, size_t count) {
  char path[1024];
  FILE* f;
  size_t got;
  char extra;
  snprintf(path, sizeof path, "%s%s%s", dir, dir[0] ? "/" : "", name);
  f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return 1;
  }
  got = fread(out, size, count, f);
  if (got != count || fread(&extra, 1, 1, f) != 0) {
    fprintf(stderr, "%s: expected exactly %zu values of %zu bytes\n", path, count, size);
    fclose(f);
    return 1;
  }
  fclose(f);
  return 0;
}

/* Counts the values that differ by more than abs + rel*|want|. */
static int compare(const char* what, const float* got, const float* want, int n, double abs_tol, double rel_tol) {
  int bad = 0, i;
  double worst = 0.0;
  for (i = 0; i < n; ++i) {
    const double d = fabs((double)got[i] - (double)want[i]);
    if (d > worst) worst = d;
    if (!(d <= abs_tol + rel_tol * fabs((double)want[i]))) {
      if (bad < 5) fprintf(stderr, "%s[%d] = %.9g, expected %.9g\n", what, i, (double)got[i], (double)want[i]);
      ++bad;
    }
  }
  printf("%-22s %4d values, largest difference %.3g%s\n", what, n, worst, bad ? "  FAILED" : "");
  return bad;
}

/* Saves the layer to `path`, rebuilds it from the file and checks both give the same y. */
static int check_state_file(bn_layer* layer, const char* path, const int64_t* shape, const float* x, float* y,
                            int n) {
  float again[kMaxValues];
  bn_layer* restored = NULL;
  int same;
  TRY(bn_set_training(layer, 0));
  TRY(bn_forward(layer, shape, 4, x, y));
  TRY(bn_save_file(layer, path));
  TRY(bn_create_from_file(path, &restored));
  TRY(bn_forward(restored, shape, 4, x, again));
  same = memcmp(y, again, (size_t)n * sizeof(float)) == 0;
  printf("state file %s: %s\n", path, same ? "the same layer back (bitwise)" : "DIFFERENT");
  bn_destroy(restored);
  remove(path);
  return same ? 0 : 1;
}

/* ------------------------------------------------------------------------ */
static int import_keras(const char* weights_path, const char* case_path) {
  float weights[4 * kMaxChannels], x[kMaxValues], y[kMaxValues], want[kMaxValues];
  int64_t shape[4];
  double epsilon = 1e-3;
  int n = 0, nw = 0, bad = 0;
  int64_t c;
  char line[65536];
  bn_config* cfg = NULL;
  bn_layer* layer = NULL;
  FILE* f = fopen(case_path, "r");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", case_path);
    return 1;
  }
  while (fgets(line, sizeof line, f)) {
    char* tok = strtok(line, " \t\r\n");
    int k = 0;
    if (!tok || tok[0] == '#') continue;
    if (strcmp(tok, "shape") == 0) {
      while ((tok = strtok(NULL, " \t\r\n")) && k < 4) shape[k++] = strtoll(tok, NULL, 10);
    } else if (strcmp(tok, "epsilon") == 0) {
      epsilon = strtod(strtok(NULL, " \t\r\n"), NULL);
    } else if (strcmp(tok, "x") == 0 || strcmp(tok, "y") == 0) {
      float* dst = tok[0] == 'x' ? x : want;
      while ((tok = strtok(NULL, " \t\r\n")) && k < kMaxValues) dst[k++] = (float)strtod(tok, NULL);
      if (dst == x) n = k; else nw = k;
    }
  }
  fclose(f);
  c = shape[3];
  if (n != nw || n != shape[0] * shape[1] * shape[2] * c || c > kMaxChannels) {
    fprintf(stderr, "%s: inconsistent case\n", case_path);
    return 1;
  }
  if (read_raw("", weights_path, weights, sizeof(float), (size_t)(4 * c))) return 1;

  /* Keras' defaults are the library's (axis -1, momentum 0.99): only epsilon is set here. */
  TRY(bn_config_create(&cfg));
  TRY(bn_config_set_epsilon(cfg, epsilon));
  TRY(bn_create(cfg, shape, 4, &layer));
  bn_config_destroy(cfg);
  /* layer.get_weights() order: gamma, beta, moving_mean, moving_variance. */
  TRY(bn_set_param(layer, BN_PARAM_GAMMA, weights, c));
  TRY(bn_set_param(layer, BN_PARAM_BETA, weights + c, c));
  TRY(bn_set_param(layer, BN_PARAM_MOVING_MEAN, weights + 2 * c, c));
  TRY(bn_set_param(layer, BN_PARAM_MOVING_VARIANCE, weights + 3 * c, c));
  TRY(bn_forward(layer, shape, 4, x, y)); /* a new layer is in inference mode */
  bad += compare("keras inference y", y, want, n, 1e-5, 1e-5);
  bad += check_state_file(layer, "keras_import.bnstate", shape, x, y, n);
  bn_destroy(layer);
  return bad ? 1 : 0;
}

/* ------------------------------------------------------------------------ */
static int import_torch(const char* dir) {
  float w[kMaxChannels], b[kMaxChannels], rm[kMaxChannels], rv[kMaxChannels];
  float rm_after[kMaxChannels], rv_after[kMaxChannels], got_rm[kMaxChannels], got_rv[kMaxChannels];
  float x_eval[kMaxValues], y_eval[kMaxValues], x_train[kMaxValues], y_train[kMaxValues], y[kMaxValues];
  int64_t tracked, tracked_after, steps = -1, shape[4];
  double eps, momentum;
  int n, bad = 0;
  int64_t c;
  char path[1024];
  bn_config* cfg = NULL;
  bn_layer* layer = NULL;
  FILE* f;
  const int32_t channel_axis = 1; /* NCHW */

  snprintf(path, sizeof path, "%s/meta.txt", dir);
  f = fopen(path, "r");
  if (!f || fscanf(f, "%lld %lld %lld %lld %lf %lf", (long long*)&shape[0], (long long*)&shape[1],
                   (long long*)&shape[2], (long long*)&shape[3], &eps, &momentum) != 6) {
    fprintf(stderr, "cannot read %s\n", path);
    if (f) fclose(f);
    return 1;
  }
  fclose(f);
  c = shape[1];
  n = (int)(shape[0] * shape[1] * shape[2] * shape[3]);
  if (c > kMaxChannels || n > kMaxValues) return 1;
  if (read_raw(dir, "weight.f32", w, 4, (size_t)c) || read_raw(dir, "bias.f32", b, 4, (size_t)c) ||
      read_raw(dir, "running_mean.f32", rm, 4, (size_t)c) || read_raw(dir, "running_var.f32", rv, 4, (size_t)c) ||
      read_raw(dir, "num_batches_tracked.i64", &tracked, 8, 1) || read_raw(dir, "x_eval.f32", x_eval, 4, (size_t)n) ||
      read_raw(dir, "y_eval.f32", y_eval, 4, (size_t)n) || read_raw(dir, "x_train.f32", x_train, 4, (size_t)n) ||
      read_raw(dir, "y_train.f32", y_train, 4, (size_t)n) ||
      read_raw(dir, "running_mean_after.f32", rm_after, 4, (size_t)c) ||
      read_raw(dir, "running_var_after.f32", rv_after, 4, (size_t)c) ||
      read_raw(dir, "num_batches_tracked_after.i64", &tracked_after, 8, 1)) {
    return 1;
  }

  TRY(bn_config_create(&cfg));
  TRY(bn_config_set_axes(cfg, &channel_axis, 1));
  TRY(bn_config_set_epsilon(cfg, eps));
  if (momentum < 0) { /* momentum=None */
    TRY(bn_config_set_cumulative_average(cfg, 1));
  } else {
    TRY(bn_config_set_momentum(cfg, 1.0 - momentum));
  }
  TRY(bn_config_set_moving_variance(cfg, BN_MOVING_VARIANCE_UNBIASED));
  TRY(bn_config_set_fused(cfg, BN_FUSED_OFF));
  TRY(bn_config_set_single_value_policy(cfg, BN_SINGLE_VALUE_REJECT));
  TRY(bn_create(cfg, shape, 4, &layer));
  bn_config_destroy(cfg);
  TRY(bn_set_param(layer, BN_PARAM_GAMMA, w, c)); /* weight */
  TRY(bn_set_param(layer, BN_PARAM_BETA, b, c));  /* bias */
  TRY(bn_set_param(layer, BN_PARAM_MOVING_MEAN, rm, c));
  TRY(bn_set_param(layer, BN_PARAM_MOVING_VARIANCE, rv, c));
  TRY(bn_set_step_count(layer, tracked)); /* num_batches_tracked */

  TRY(bn_forward(layer, shape, 4, x_eval, y)); /* inference: bn.eval() */
  bad += compare("torch inference y", y, y_eval, n, 1e-5, 1e-5);
  TRY(bn_set_training(layer, 1)); /* one more step: bn.train() */
  TRY(bn_forward(layer, shape, 4, x_train, y));
  bad += compare("torch training y", y, y_train, n, 1e-5, 1e-5);
  TRY(bn_get_param(layer, BN_PARAM_MOVING_MEAN, got_rm, c));
  TRY(bn_get_param(layer, BN_PARAM_MOVING_VARIANCE, got_rv, c));
  bad += compare("running_mean after", got_rm, rm_after, (int)c, 1e-6, 1e-5);
  bad += compare("running_var after", got_rv, rv_after, (int)c, 1e-6, 1e-5);
  TRY(bn_get_step_count(layer, &steps));
  printf("num_batches_tracked    %lld, torch %lld%s\n", (long long)steps, (long long)tracked_after,
         steps == tracked_after ? "" : "  FAILED");
  bad += steps != tracked_after;
  snprintf(path, sizeof path, "%s/torch_import.bnstate", dir);
  bad += check_state_file(layer, path, shape, x_eval, y, n);
  bn_destroy(layer);
  return bad ? 1 : 0;
}

int main(int argc, char** argv) {
  if (argc == 4 && strcmp(argv[1], "keras") == 0) return import_keras(argv[2], argv[3]);
  if (argc == 3 && strcmp(argv[1], "torch") == 0) return import_torch(argv[2]);
  fprintf(stderr, "usage: %s keras WEIGHTS CASE | %s torch DIR\n", argv[0], argv[0]);
  return 2;
}
