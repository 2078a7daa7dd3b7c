/* digits_demo_mpi: the digits demo's batch norm network trained data-parallel over MPI.
 *
 * Every rank loads the same data and shuffles with the same seed, so all ranks walk the same
 * mini-batches; of a mini-batch of n rows, rank r of P takes rows [n*r/P, n*(r+1)/P). The
 * batch norm layers are synchronized (bn_config_set_mpi): their statistics and backward
 * reductions cover the whole mini-batch, as in one process. After the backward every
 * gradient (dense weights and biases, and each rank's share of dgamma and dbeta) is summed
 * over the ranks with one MPI_Allreduce, and every rank takes the same SGD step, so the
 * replicas stay equal. Rank 0 also trains the same network in one process on the whole
 * mini-batches, from the same initial weights, and prints both side by side.
 *
 * Exit status (the same on every rank): 0 when the data-parallel network ends within
 * MAX_GAP points of the one-process network's held-out accuracy, the replicas are bitwise
 * equal, and (on the real digits) it passes --min-accuracy; 1 otherwise. */
#include <batchnorm/batchnorm_mpi.h>
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
#define MAX_GAP 1.0 /* points of held-out accuracy between the two runs */

typedef struct {
  MPI_Comm comm;
  int rank, size;
} World;

typedef struct {
  double loss;
  long correct;
} Totals;

typedef struct {
  double train_loss, train_acc, test_acc;
} EpochRow;

/* The real digits, or the synthetic stand-in (said loudly on rank 0); returns 1 for real data. */
static int load_data(const Options* opt, const World* w, Dataset* all) {
  char path[4096];
  const char* found = opt->synthetic ? NULL : digits_locate(opt->data_path, path, sizeof path);
  if (found != NULL) {
    digits_load_csv(found, all);
    if (w->rank == 0) printf("data: %s (%d rows)\n", found, all->rows);
    return 1;
  }
  digits_synthetic(opt->seed, all);
  if (w->rank == 0)
    printf(
        "SYNTHETIC DATA (%s): seeded random samples shaped like the digits; the accuracies say nothing "
        "about real digits\n",
        opt->synthetic ? "--synthetic" : "no digits.csv.gz found");
  return 0;
}

static void gather(const Dataset* d, const int* order, int n, float* x, int* y) {
  for (int i = 0; i < n; ++i) {
    memcpy(x + (size_t)i * DIGITS_FEATURES, d->x + (size_t)order[i] * DIGITS_FEATURES, DIGITS_FEATURES * sizeof(float));
    y[i] = d->y[order[i]];
  }
}

static void net_init(Mlp* net, const Options* opt, const World* w) {
  MlpOptions mo;
  mo.use_batch_norm = 1;
  mo.max_batch = opt->batch > EVAL_CHUNK ? opt->batch : EVAL_CHUNK;
  mo.seed = opt->seed; /* the same seed: both runs start from the same weights */
  mo.bn_momentum = opt->bn_momentum;
  mo.bn_threads = opt->threads;
  mo.bn_allreduce = NULL;
  mo.bn_allreduce_data = NULL;
  if (w != NULL) { /* synchronized batch norm: what bn_config_set_mpi(cfg, comm) attaches */
    mo.bn_allreduce = bn_mpi_allreduce;
    mo.bn_allreduce_data = bn_mpi_user_data(w->comm);
  }
  mlp_init(net, &mo);
}

/* One mini-batch of n rows starting at order[first], data-parallel: this rank's share. */
static void parallel_step(Mlp* net, const World* w, const Dataset* train, const int* order, int first, int n,
                          const Options* opt, float* xb, int* yb, float* grads, int grad_count, Totals* t) {
  const int lo = (int)((long)n * w->rank / w->size), hi = (int)((long)n * (w->rank + 1) / w->size);
  gather(train, order + first + lo, hi - lo, xb, yb);
  const BatchResult r = mlp_forward(net, xb, yb, hi - lo); /* batch norm: one collective per layer */
  mlp_backward_share(net, xb, yb, hi - lo, n);             /* and one per layer again */
  mlp_pack_gradients(net, grads);
  MPI_Allreduce(MPI_IN_PLACE, grads, grad_count, MPI_FLOAT, MPI_SUM, w->comm);
  mlp_unpack_gradients(net, grads);
  mlp_sgd_step(net, (float)opt->lr);
  t->loss += r.loss_sum;
  t->correct += r.correct;
}

static EpochRow parallel_epoch(Mlp* net, const World* w, const Dataset* train, const int* order, const Options* opt,
                               float* xb, int* yb, float* grads, int grad_count) {
  Totals t = {0.0, 0};
  mlp_set_training(net, 1);
  for (int first = 0; first < train->rows; first += opt->batch) {
    const int n = train->rows - first < opt->batch ? train->rows - first : opt->batch;
    parallel_step(net, w, train, order, first, n, opt, xb, yb, grads, grad_count, &t);
  }
  MPI_Allreduce(MPI_IN_PLACE, &t.loss, 1, MPI_DOUBLE, MPI_SUM, w->comm);
  MPI_Allreduce(MPI_IN_PLACE, &t.correct, 1, MPI_LONG, MPI_SUM, w->comm);
  EpochRow row = {t.loss / train->rows, 100.0 * (double)t.correct / train->rows, 0.0};
  return row;
}

/* The same epoch in one process, on whole mini-batches (rank 0 only). */
static EpochRow single_epoch(Mlp* net, const Dataset* train, const int* order, const Options* opt, float* xb, int* yb) {
  Totals t = {0.0, 0};
  mlp_set_training(net, 1);
  for (int first = 0; first < train->rows; first += opt->batch) {
    const int n = train->rows - first < opt->batch ? train->rows - first : opt->batch;
    gather(train, order + first, n, xb, yb);
    const BatchResult r = mlp_forward(net, xb, yb, n);
    mlp_backward(net, xb, yb, n);
    mlp_sgd_step(net, (float)opt->lr);
    t.loss += r.loss_sum;
    t.correct += r.correct;
  }
  EpochRow row = {t.loss / train->rows, 100.0 * (double)t.correct / train->rows, 0.0};
  return row;
}

/* Held-out accuracy in inference mode (moving statistics: no collective, every rank alone). */
static double evaluate(Mlp* net, const Dataset* d) {
  long correct = 0;
  mlp_set_training(net, 0);
  for (int first = 0; first < d->rows; first += EVAL_CHUNK) {
    const int n = d->rows - first < EVAL_CHUNK ? d->rows - first : EVAL_CHUNK;
    correct += mlp_forward(net, d->x + (size_t)first * DIGITS_FEATURES, d->y + first, n).correct;
  }
  return 100.0 * (double)correct / d->rows;
}

/* FNV-1a over the bytes of every weight, bias, gamma, beta and moving statistic. */
static uint64_t fnv(uint64_t h, const void* data, size_t bytes) {
  const unsigned char* p = data;
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

static uint64_t replica_hash(const Mlp* net) {
  uint64_t h = 14695981039346656037ULL;
  for (int l = 0; l < MLP_HIDDEN_LAYERS; ++l) {
    const Hidden* hid = &net->hidden[l];
    const int out = hid->dense.out;
    h = fnv(h, hid->dense.w, (size_t)hid->dense.in * out * sizeof(float));
    const bn_param params[4] = {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE};
    for (int k = 0; k < 4; ++k) {
      BN_TRY(bn_get_param(hid->bn, params[k], hid->param, out));
      h = fnv(h, hid->param, (size_t)out * sizeof(float));
    }
  }
  h = fnv(h, net->head.w, (size_t)net->head.in * net->head.out * sizeof(float));
  return fnv(h, net->head.b, (size_t)net->head.out * sizeof(float));
}

/* 1 when every rank holds the same bits. */
static int replicas_equal(const Mlp* net, const World* w) {
  const uint64_t h = replica_hash(net);
  uint64_t lo = h, hi = h;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, w->comm);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, w->comm);
  return lo == hi;
}

static void print_header(const Options* opt, const World* w, const Dataset* train, const Dataset* test) {
  printf("libbatchnorm %s | train %d rows, held-out test %d rows | MLP 64-128-64-10 with batch norm, SGD lr %g,\n",
         bn_version_string(), train->rows, test->rows, opt->lr);
  printf("batch %d, %d epochs, seed %llu | data-parallel: %d ranks, ~%d rows of each mini-batch per rank,\n",
         opt->batch, opt->epochs, (unsigned long long)opt->seed, w->size, (opt->batch + w->size - 1) / w->size);
  printf("batch norm synchronized over MPI_COMM_WORLD, gradients summed with MPI_Allreduce\n\n");
  printf("      | %-32s | %s\n", "one process (whole mini-batches)", "data-parallel over the ranks");
  printf("epoch | %10s %10s %10s | %10s %10s %10s\n", "train loss", "train acc", "test acc", "train loss", "train acc",
         "test acc");
}

static int report(int real, const Options* opt, const World* w, const EpochRow* single, const EpochRow* parallel,
                  int equal, double single_s, double parallel_s) {
  const double gap = parallel->test_acc - single->test_acc;
  printf("\nfinal held-out accuracy: one process %.2f %%, %d ranks %.2f %% (%+.2f points; allowed %.0f)\n",
         single->test_acc, w->size, parallel->test_acc, gap, MAX_GAP);
  printf("replicas bitwise equal after training: %s\n", equal ? "yes" : "NO");
  printf("training time: %.2f s one process, %.2f s on %d ranks (a tiny network: collective latency dominates)\n",
         single_s, parallel_s, w->size);
  int ok = fabs(gap) <= MAX_GAP && equal;
  if (real && parallel->test_acc < opt->min_accuracy) {
    printf("FAIL: the data-parallel network ended below %.0f %% held-out accuracy\n", opt->min_accuracy);
    ok = 0;
  }
  if (!real)
    printf("(synthetic data: the %.0f %% accuracy check applies to the real digits only)\n", opt->min_accuracy);
  printf("%s: data-parallel training over %d ranks %s one process\n", ok ? "OK" : "FAIL", w->size,
         ok ? "matches" : "does not match");
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  World w = {MPI_COMM_WORLD, 0, 1};
  MPI_Comm_rank(w.comm, &w.rank);
  MPI_Comm_size(w.comm, &w.size);
  Options opt;
  options_parse(argc, argv, &opt);

  Dataset all, train, test;
  const int real = load_data(&opt, &w, &all);
  digits_split(&all, TEST_ROWS, opt.seed, &train, &test);
  dataset_free(&all);

  Mlp parallel, single;
  net_init(&parallel, &opt, &w);
  if (w.rank == 0) {
    net_init(&single, &opt, NULL);
    print_header(&opt, &w, &train, &test);
  }
  const int grad_count = mlp_gradient_count(&parallel);
  float* grads = xcalloc((size_t)grad_count, sizeof(float));
  float* xb = xcalloc((size_t)opt.batch * DIGITS_FEATURES, sizeof(float));
  int* yb = xcalloc((size_t)opt.batch, sizeof(int));
  int* order = xcalloc((size_t)train.rows, sizeof(int));
  for (int i = 0; i < train.rows; ++i) order[i] = i;
  Rng shuffle_rng;
  rng_seed(&shuffle_rng, opt.seed, 5); /* the same order on every rank */

  EpochRow s = {0, 0, 0}, p = {0, 0, 0};
  double single_s = 0.0, parallel_s = 0.0;
  for (int epoch = 1; epoch <= opt.epochs; ++epoch) {
    rng_shuffle(&shuffle_rng, order, train.rows);
    if (w.rank == 0) {
      double start = now_seconds();
      s = single_epoch(&single, &train, order, &opt, xb, yb);
      single_s += now_seconds() - start;
      s.test_acc = evaluate(&single, &test);
    }
    MPI_Barrier(w.comm);
    double start = now_seconds();
    p = parallel_epoch(&parallel, &w, &train, order, &opt, xb, yb, grads, grad_count);
    parallel_s += now_seconds() - start;
    p.test_acc = evaluate(&parallel, &test);
    if (w.rank == 0) {
      printf("%5d | %10.4f %9.2f%% %9.2f%% | %10.4f %9.2f%% %9.2f%%\n", epoch, s.train_loss, s.train_acc, s.test_acc,
             p.train_loss, p.train_acc, p.test_acc);
      fflush(stdout);
    }
  }
  const int equal = replicas_equal(&parallel, &w);
  int status = EXIT_SUCCESS;
  if (w.rank == 0) status = report(real, &opt, &w, &s, &p, equal, single_s, parallel_s);
  MPI_Bcast(&status, 1, MPI_INT, 0, w.comm);

  if (w.rank == 0) mlp_free(&single);
  mlp_free(&parallel);
  free(grads);
  free(xb);
  free(yb);
  free(order);
  dataset_free(&train);
  dataset_free(&test);
  MPI_Finalize();
  return status;
}
