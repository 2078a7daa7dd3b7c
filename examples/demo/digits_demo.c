/* digits_demo: batch normalization on the UCI handwritten digits, from C.
 *
 * Trains two identical multilayer perceptrons side by side, from the same seed and with
 * the same plain SGD learning rate: one with dense -> ReLU blocks, one with
 * dense -> batch norm -> ReLU blocks (libbatchnorm). The inputs are scaled to [0, 1] but
 * not standardized (non-negative, off-centre, some pixels always 0), so He init leaves the
 * plain network's hidden pre-activations off-centre and poorly scaled, and at a small
 * learning rate it learns slowly; batch norm re-centres and re-scales every hidden feature
 * on each mini-batch, whatever the input statistics and the current weights. Held-out accuracy is measured in inference
 * mode, where batch norm uses its moving statistics.
 *
 * Exit status: 0 on success; 1 on any error (bad data, a failing bn_* call) or when the
 * batch-norm network ends below --min-accuracy on the real data (so CI catches a broken
 * library). */
#include <batchnorm/batchnorm.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "mlp.h"
#include "options.h"
#include "rng.h"
#include "util.h"

#define TEST_ROWS 360
#define EVAL_CHUNK 256
#define BANNER_RULE "####################################################################"

typedef struct {
  const char* name;
  Mlp net;
  double train_seconds;
} Model;

typedef struct {
  double train_loss, train_acc, test_acc;
} EpochRow;

/* ---- data ----------------------------------------------------------------------------- */

/* Loads the real digits, or the synthetic stand-in; returns 1 for real data. */
static int load_data(const Options* opt, Dataset* all) {
  char path[4096];
  const char* found = opt->synthetic ? NULL : digits_locate(opt->data_path, path, sizeof path);
  if (found != NULL) {
    digits_load_csv(found, all);
    printf("data: %s (%d rows, %d features, %d classes)\n", found, all->rows, DIGITS_FEATURES, DIGITS_CLASSES);
    return 1;
  }
  digits_synthetic(opt->seed, all);
  char line[3][80];
  snprintf(line[0], sizeof line[0], "SYNTHETIC DATA: %s.",
           opt->synthetic ? "requested with --synthetic" : "no digits.csv.gz was found");
  snprintf(line[1], sizeof line[1], "%d seeded random samples shaped like the digits, NOT", all->rows);
  snprintf(line[2], sizeof line[2], "the real digits: the accuracies say nothing about them.");
  printf("\n%s\n", BANNER_RULE);
  for (int i = 0; i < 3; ++i) printf("##  %-60s  ##\n", line[i]);
  printf("%s\n\n", BANNER_RULE);
  return 0;
}

/* Copies the rows order[0..n) of d into contiguous batch buffers. */
static void gather(const Dataset* d, const int* order, int n, float* x, int* y) {
  for (int i = 0; i < n; ++i) {
    memcpy(x + (size_t)i * DIGITS_FEATURES, d->x + (size_t)order[i] * DIGITS_FEATURES, DIGITS_FEATURES * sizeof(float));
    y[i] = d->y[order[i]];
  }
}

/* ---- training and evaluation ---------------------------------------------------------- */

/* One pass over the training rows in `order`, in mini-batches (the last one may be short).
 * Loss and accuracy are running means over the epoch's batches, as Keras reports them. */
static void train_epoch(Model* m, const Dataset* train, const int* order, const Options* opt, float* xb, int* yb,
                        EpochRow* row) {
  double start = now_seconds(), loss = 0.0;
  long correct = 0;
  mlp_set_training(&m->net, 1);
  for (int first = 0; first < train->rows; first += opt->batch) {
    int n = train->rows - first < opt->batch ? train->rows - first : opt->batch;
    gather(train, order + first, n, xb, yb);
    BatchResult r = mlp_forward(&m->net, xb, yb, n);
    mlp_backward(&m->net, xb, yb, n);
    mlp_sgd_step(&m->net, (float)opt->lr);
    loss += r.loss_sum;
    correct += r.correct;
  }
  if (!isfinite(loss)) die("%s: the training loss is not finite (lr too large?)", m->name);
  m->train_seconds += now_seconds() - start;
  row->train_loss = loss / train->rows;
  row->train_acc = 100.0 * (double)correct / train->rows;
}

/* Accuracy in inference mode: batch norm normalizes with its moving statistics, so the
 * result does not depend on how the rows are grouped. */
static double evaluate(Model* m, const Dataset* d) {
  long correct = 0;
  mlp_set_training(&m->net, 0);
  for (int first = 0; first < d->rows; first += EVAL_CHUNK) {
    int n = d->rows - first < EVAL_CHUNK ? d->rows - first : EVAL_CHUNK;
    correct += mlp_forward(&m->net, d->x + (size_t)first * DIGITS_FEATURES, d->y + first, n).correct;
  }
  return 100.0 * (double)correct / d->rows;
}

/* ---- report --------------------------------------------------------------------------- */

static void print_header(const Options* opt, const Dataset* train, const Dataset* test) {
  if (bn_version() / 10000 != BN_VERSION_MAJOR)
    die("libbatchnorm %s loaded, but this demo was built against major version %d", bn_version_string(),
        BN_VERSION_MAJOR);
  printf(
      "libbatchnorm %s | train %d rows, held-out test %d rows, pixels scaled x/16 "
      "(not standardized)\n",
      bn_version_string(), train->rows, test->rows);
  printf(
      "MLP 64-128-64-10, plain SGD lr %g, batch %d, %d epochs, seed %llu, "
      "BN momentum %g, BN threads %d\n\n",
      opt->lr, opt->batch, opt->epochs, (unsigned long long)opt->seed, opt->bn_momentum, (int)opt->threads);
  printf(
      "train loss/acc: running means over each epoch's mini-batches (training mode);\n"
      "test acc: held-out rows in inference mode (batch norm uses its moving statistics)\n\n");
  printf("      | %-32s | %s\n", "plain: dense -> ReLU", "batch norm: dense -> BN -> ReLU");
  printf("epoch | %10s %10s %10s | %10s %10s %10s\n", "train loss", "train acc", "test acc", "train loss", "train acc",
         "test acc");
}

static void print_row(int epoch, const EpochRow* plain, const EpochRow* bn) {
  printf("%5d | %10.4f %9.2f%% %9.2f%% | %10.4f %9.2f%% %9.2f%%\n", epoch, plain->train_loss, plain->train_acc,
         plain->test_acc, bn->train_loss, bn->train_acc, bn->test_acc);
  fflush(stdout);
}

/* ---- main ----------------------------------------------------------------------------- */

#define REACH_ACCURACY 90.0 /* the summary reports the first epoch at this held-out accuracy */

typedef struct {
  EpochRow last;
  int reached; /* first epoch with test_acc >= REACH_ACCURACY, 0 if never */
} Progress;

static void model_init(Model* m, const char* name, int use_bn, const Options* opt) {
  MlpOptions mo;
  mo.use_batch_norm = use_bn;
  mo.max_batch = opt->batch > EVAL_CHUNK ? opt->batch : EVAL_CHUNK;
  mo.seed = opt->seed; /* the same seed: both nets start from the same dense weights */
  mo.bn_momentum = opt->bn_momentum;
  mo.bn_threads = opt->threads;
  mo.bn_allreduce = NULL; /* one process (digits_demo_mpi.c: data-parallel) */
  mo.bn_allreduce_data = NULL;
  m->name = name;
  m->train_seconds = 0.0;
  mlp_init(&m->net, &mo);
}

static void run_epoch(Model* m, const Dataset* train, const Dataset* test, const int* order, const Options* opt,
                      float* xb, int* yb, int epoch, Progress* p) {
  train_epoch(m, train, order, opt, xb, yb, &p->last);
  p->last.test_acc = evaluate(m, test);
  if (p->reached == 0 && p->last.test_acc >= REACH_ACCURACY) p->reached = epoch;
}

/* Trains both models on the same shuffled order each epoch, printing one row per epoch. */
static void train_both(Model* plain, Model* normed, const Dataset* train, const Dataset* test, const Options* opt,
                       Progress* pp, Progress* pb) {
  int* order = xcalloc((size_t)train->rows, sizeof(int));
  for (int i = 0; i < train->rows; ++i) order[i] = i;
  float* xb = xcalloc((size_t)opt->batch * DIGITS_FEATURES, sizeof(float));
  int* yb = xcalloc((size_t)opt->batch, sizeof(int));
  Rng shuffle_rng;
  rng_seed(&shuffle_rng, opt->seed, 5);
  for (int epoch = 1; epoch <= opt->epochs; ++epoch) {
    rng_shuffle(&shuffle_rng, order, train->rows);
    run_epoch(plain, train, test, order, opt, xb, yb, epoch, pp);
    run_epoch(normed, train, test, order, opt, xb, yb, epoch, pb);
    print_row(epoch, &pp->last, &pb->last);
  }
  free(order);
  free(xb);
  free(yb);
}

static const char* epoch_text(int epoch, char* buf, size_t size) {
  if (epoch == 0) return "never";
  snprintf(buf, size, "epoch %d", epoch);
  return buf;
}

static void print_summary(const Progress* pp, const Progress* pb, const Model* plain, const Model* normed,
                          double seconds) {
  char a[32], b[32];
  printf("\nfinal held-out accuracy: plain %.2f %%, batch norm %.2f %% (%+.2f points)\n", pp->last.test_acc,
         pb->last.test_acc, pb->last.test_acc - pp->last.test_acc);
  printf("first reached %.0f %% held-out: plain %s, batch norm %s\n", REACH_ACCURACY,
         epoch_text(pp->reached, a, sizeof a), epoch_text(pb->reached, b, sizeof b));
  printf("time: %.2f s total; training %.2f s plain, %.2f s batch norm\n", seconds, plain->train_seconds,
         normed->train_seconds);
}

/* The CI check: a broken library shows up as a batch norm net that fails to learn. */
static int check_accuracy(int real, double accuracy, const Options* opt) {
  if (!real) {
    printf("(synthetic data: the %.0f %% accuracy check applies to the real digits only)\n", opt->min_accuracy);
    return EXIT_SUCCESS;
  }
  if (accuracy < opt->min_accuracy) {
    printf("FAIL: the batch norm network ended at %.2f %% held-out accuracy, below %.0f %%\n", accuracy,
           opt->min_accuracy);
    return EXIT_FAILURE;
  }
  printf("OK: the batch norm network passed the %.0f %% held-out accuracy check\n", opt->min_accuracy);
  return EXIT_SUCCESS;
}

int main(int argc, char** argv) {
  Options opt;
  options_parse(argc, argv, &opt);
  const double start = now_seconds();

  Dataset all, train, test;
  const int real = load_data(&opt, &all);
  digits_split(&all, TEST_ROWS, opt.seed, &train, &test);
  dataset_free(&all);

  Model plain, normed;
  model_init(&plain, "plain", 0, &opt);
  model_init(&normed, "batch norm", 1, &opt);
  print_header(&opt, &train, &test);

  Progress pp = {{0, 0, 0}, 0}, pb = {{0, 0, 0}, 0};
  train_both(&plain, &normed, &train, &test, &opt, &pp, &pb);
  print_summary(&pp, &pb, &plain, &normed, now_seconds() - start);
  const int status = check_accuracy(real, pb.last.test_acc, &opt);

  mlp_free(&plain.net);
  mlp_free(&normed.net);
  dataset_free(&train);
  dataset_free(&test);
  return status;
}
