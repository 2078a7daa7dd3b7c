#include "mlp.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "rng.h"
#include "util.h"

static const int kWidths[MLP_HIDDEN_LAYERS + 2] = {DIGITS_FEATURES, 128, 64, DIGITS_CLASSES};

/* ---- dense layer: y = x W + b --------------------------------------------------------- */

/* He initialization: W ~ N(0, 2 / fan_in) keeps the variance of ReLU activations roughly
 * constant from layer to layer (half of a zero-mean pre-activation is clipped by ReLU). */
static void dense_init(Dense* d, int in, int out, int with_bias, Rng* rng) {
  d->in = in;
  d->out = out;
  d->w = xcalloc((size_t)in * out, sizeof(float));
  d->dw = xcalloc((size_t)in * out, sizeof(float));
  d->b = with_bias ? xcalloc((size_t)out, sizeof(float)) : NULL;
  d->db = with_bias ? xcalloc((size_t)out, sizeof(float)) : NULL;
  const double stddev = sqrt(2.0 / in);
  for (size_t i = 0; i < (size_t)in * out; ++i) d->w[i] = (float)(stddev * rng_normal(rng));
}

static void dense_free(Dense* d) {
  free(d->w);
  free(d->dw);
  free(d->b);
  free(d->db);
}

static void dense_forward(const Dense* d, const float* x, int batch, float* y) {
  if (batch == 0) return; /* an empty share of a data-parallel mini-batch */
  /* y (batch x out) = x (batch x in) . W (in x out) */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, batch, d->out, d->in, 1.0f, x, d->in, d->w, d->out, 0.0f, y,
              d->out);
  if (d->b == NULL) return;
  for (int i = 0; i < batch; ++i)
    for (int j = 0; j < d->out; ++j) y[(size_t)i * d->out + j] += d->b[j];
}

/* For y = x W + b and an upstream gradient dy = dL/dy:
 *   dL/dW = x^T dy          (each weight W[k][j] touches y[i][j] through x[i][k], summed over i)
 *   dL/db = sum_i dy[i]     (the bias is broadcast over the batch rows)
 *   dL/dx = dy W^T          (skipped when dx is NULL: the first layer needs no input gradient) */
static void dense_backward(Dense* d, const float* x, const float* dy, int batch, float* dx) {
  if (batch == 0) { /* an empty share: no gradient (BLAS is not asked for a K = 0 product) */
    for (int i = 0; i < d->in * d->out; ++i) d->dw[i] = 0.0f;
    for (int j = 0; d->db != NULL && j < d->out; ++j) d->db[j] = 0.0f;
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d->in, d->out, batch, 1.0f, x, d->in, dy, d->out, 0.0f, d->dw,
              d->out);
  if (d->db != NULL) {
    for (int j = 0; j < d->out; ++j) d->db[j] = 0.0f;
    for (int i = 0; i < batch; ++i)
      for (int j = 0; j < d->out; ++j) d->db[j] += dy[(size_t)i * d->out + j];
  }
  if (dx != NULL)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, d->in, d->out, 1.0f, dy, d->out, d->w, d->out, 0.0f, dx,
                d->in);
}

static void sgd(float* p, const float* grad, int n, float lr) {
  for (int i = 0; i < n; ++i) p[i] -= lr * grad[i];
}

/* ---- hidden block: dense -> [batch norm] -> ReLU -------------------------------------- */

static bn_layer* batch_norm_create(int features, const MlpOptions* opt) {
  bn_config* cfg = NULL;
  BN_TRY(bn_config_create(&cfg));
  const int32_t axes[1] = {-1}; /* normalize each feature over the batch (the default) */
  BN_TRY(bn_config_set_axes(cfg, axes, 1));
  BN_TRY(bn_config_set_momentum(cfg, opt->bn_momentum)); /* 0.9 by default: why in options.c */
  /* Data-parallel: statistics and backward reductions over every replica's rows together. */
  if (opt->bn_allreduce != NULL) BN_TRY(bn_config_set_allreduce(cfg, opt->bn_allreduce, opt->bn_allreduce_data));
  const int64_t shape[2] = {opt->max_batch, features};
  bn_layer* layer = NULL;
  BN_TRY(bn_create(cfg, shape, 2, &layer));
  bn_config_destroy(cfg);
  BN_TRY(bn_set_num_threads(layer, opt->bn_threads));
  return layer;
}

static void hidden_init(Hidden* h, int in, int out, const MlpOptions* opt, Rng* rng) {
  size_t n = (size_t)opt->max_batch * out;
  /* Before batch norm a bias is redundant: the batch mean subtraction cancels it (its
   * gradient is exactly zero) and beta plays its role. So only the plain net has one. */
  dense_init(&h->dense, in, out, !opt->use_batch_norm, rng);
  h->bn = opt->use_batch_norm ? batch_norm_create(out, opt) : NULL;
  h->z = xcalloc(n, sizeof(float));
  h->h = h->bn != NULL ? xcalloc(n, sizeof(float)) : h->z;
  h->a = xcalloc(n, sizeof(float));
  h->grad = xcalloc(n, sizeof(float));
  h->dgamma = xcalloc((size_t)out, sizeof(float));
  h->dbeta = xcalloc((size_t)out, sizeof(float));
  h->param = xcalloc((size_t)out, sizeof(float));
}

static void hidden_free(Hidden* h) {
  dense_free(&h->dense);
  bn_destroy(h->bn);
  if (h->h != h->z) free(h->h);
  free(h->z);
  free(h->a);
  free(h->grad);
  free(h->dgamma);
  free(h->dbeta);
  free(h->param);
}

static void hidden_forward(Hidden* h, const float* x, int batch) {
  const int out = h->dense.out;
  dense_forward(&h->dense, x, batch, h->z);
  if (h->bn != NULL) {
    const int64_t shape[2] = {batch, out};
    BN_TRY(bn_forward(h->bn, shape, 2, h->z, h->h));
  }
  for (size_t i = 0; i < (size_t)batch * out; ++i) h->a[i] = h->h[i] > 0.0f ? h->h[i] : 0.0f;
}

/* Backward through a = relu(h), h = BN(z), z = x W: h->grad holds dL/da on entry. */
static void hidden_backward(Hidden* h, const float* x, int batch, float* dx) {
  const int out = h->dense.out;
  /* ReLU passes the gradient where its input was positive: dL/dh = dL/da * [h > 0]. */
  for (size_t i = 0; i < (size_t)batch * out; ++i)
    if (h->h[i] <= 0.0f) h->grad[i] = 0.0f;
  if (h->bn != NULL) {
    /* Training-mode batch norm, per feature over the m = batch rows, with
     * xhat = (z - mean) / sqrt(var + eps) and h = gamma * xhat + beta:
     *   dL/dbeta  = sum_i dh_i,   dL/dgamma = sum_i dh_i * xhat_i,
     *   dL/dz_i   = gamma / sqrt(var + eps) * (dh_i - mean(dh) - xhat_i * mean(dh * xhat)).
     * The two mean terms are the gradient flowing through the batch mean and variance,
     * which depend on every row. libbatchnorm computes all three (dx in place over dy). */
    const int64_t shape[2] = {batch, out};
    BN_TRY(bn_backward(h->bn, shape, 2, h->z, h->grad, h->grad, h->dgamma, h->dbeta));
  }
  dense_backward(&h->dense, x, h->grad, batch, dx);
}

/* gamma -= lr * dgamma (or beta) through the library's parameter accessors. */
static void batch_norm_sgd(Hidden* h, bn_param which, const float* grad, float lr) {
  const int n = h->dense.out; /* one gamma and one beta per feature */
  BN_TRY(bn_get_param(h->bn, which, h->param, n));
  sgd(h->param, grad, n, lr);
  BN_TRY(bn_set_param(h->bn, which, h->param, n));
}

static void hidden_sgd(Hidden* h, float lr) {
  sgd(h->dense.w, h->dense.dw, h->dense.in * h->dense.out, lr);
  if (h->dense.b != NULL) sgd(h->dense.b, h->dense.db, h->dense.out, lr);
  if (h->bn == NULL) return;
  batch_norm_sgd(h, BN_PARAM_GAMMA, h->dgamma, lr);
  batch_norm_sgd(h, BN_PARAM_BETA, h->dbeta, lr);
}

/* ---- the network ---------------------------------------------------------------------- */

void mlp_init(Mlp* net, const MlpOptions* opt) {
  Rng rng;
  rng_seed(&rng, opt->seed, 1);
  net->max_batch = opt->max_batch;
  for (int l = 0; l < MLP_HIDDEN_LAYERS; ++l) hidden_init(&net->hidden[l], kWidths[l], kWidths[l + 1], opt, &rng);
  dense_init(&net->head, kWidths[MLP_HIDDEN_LAYERS], DIGITS_CLASSES, 1, &rng);
  net->probs = xcalloc((size_t)opt->max_batch * DIGITS_CLASSES, sizeof(float));
  net->dlogits = xcalloc((size_t)opt->max_batch * DIGITS_CLASSES, sizeof(float));
}

void mlp_free(Mlp* net) {
  for (int l = 0; l < MLP_HIDDEN_LAYERS; ++l) hidden_free(&net->hidden[l]);
  dense_free(&net->head);
  free(net->probs);
  free(net->dlogits);
}

void mlp_set_training(Mlp* net, int training) {
  for (int l = 0; l < MLP_HIDDEN_LAYERS; ++l)
    if (net->hidden[l].bn != NULL) BN_TRY(bn_set_training(net->hidden[l].bn, training));
}

/* Softmax in place over one row of logits, stably: p_j = exp(z_j - lse) with
 * lse = log sum_k exp(z_k) computed around the max. Returns -log p_label = lse - z_label. */
static double softmax_row(float* z, int label, int* argmax) {
  int best = 0;
  for (int j = 1; j < DIGITS_CLASSES; ++j)
    if (z[j] > z[best]) best = j;
  double sum = 0.0;
  for (int j = 0; j < DIGITS_CLASSES; ++j) sum += exp((double)z[j] - z[best]);
  const double lse = z[best] + log(sum);
  const double loss = lse - z[label];
  for (int j = 0; j < DIGITS_CLASSES; ++j) z[j] = (float)exp((double)z[j] - lse);
  *argmax = best;
  return loss;
}

BatchResult mlp_forward(Mlp* net, const float* x, const int* labels, int batch) {
  if (batch < 0 || batch > net->max_batch) die("mlp_forward: batch %d out of range", batch);
  const float* in = x;
  for (int l = 0; l < MLP_HIDDEN_LAYERS; ++l) {
    hidden_forward(&net->hidden[l], in, batch);
    in = net->hidden[l].a;
  }
  dense_forward(&net->head, in, batch, net->probs);
  BatchResult r = {0.0, 0};
  for (int i = 0; i < batch; ++i) {
    int predicted = 0;
    r.loss_sum += softmax_row(net->probs + (size_t)i * DIGITS_CLASSES, labels[i], &predicted);
    r.correct += predicted == labels[i];
  }
  return r;
}

void mlp_backward(Mlp* net, const float* x, const int* labels, int batch) {
  mlp_backward_share(net, x, labels, batch, batch);
}

void mlp_backward_share(Mlp* net, const float* x, const int* labels, int batch, int total_rows) {
  /* Mean cross-entropy L = -(1/m) sum_i log p[i][y_i] over softmax p (m = total_rows, the
   * whole mini-batch): the Jacobian of the softmax folds into
   * dL/dlogit[i][j] = (p[i][j] - [j == y_i]) / m. */
  const float inv_m = 1.0f / (float)total_rows;
  for (int i = 0; i < batch; ++i)
    for (int j = 0; j < DIGITS_CLASSES; ++j) {
      size_t k = (size_t)i * DIGITS_CLASSES + j;
      net->dlogits[k] = (net->probs[k] - (j == labels[i] ? 1.0f : 0.0f)) * inv_m;
    }
  const int last = MLP_HIDDEN_LAYERS - 1;
  dense_backward(&net->head, net->hidden[last].a, net->dlogits, batch, net->hidden[last].grad);
  for (int l = last; l >= 0; --l) {
    const float* in = l > 0 ? net->hidden[l - 1].a : x;
    float* dx = l > 0 ? net->hidden[l - 1].grad : NULL;
    hidden_backward(&net->hidden[l], in, batch, dx);
  }
}

void mlp_sgd_step(Mlp* net, float lr) {
  for (int l = 0; l < MLP_HIDDEN_LAYERS; ++l) hidden_sgd(&net->hidden[l], lr);
  sgd(net->head.w, net->head.dw, net->head.in * net->head.out, lr);
  sgd(net->head.b, net->head.db, net->head.out, lr);
}

/* ---- gradients as one array (data-parallel training) ---------------------------------- */

/* Calls fn on every gradient array in a fixed order. */
static void for_each_gradient(const Mlp* net, void (*fn)(float* grad, int n, void* ctx), void* ctx) {
  for (int l = 0; l < MLP_HIDDEN_LAYERS; ++l) {
    const Hidden* h = &net->hidden[l];
    fn(h->dense.dw, h->dense.in * h->dense.out, ctx);
    if (h->dense.db != NULL) fn(h->dense.db, h->dense.out, ctx);
    if (h->bn != NULL) {
      fn(h->dgamma, h->dense.out, ctx);
      fn(h->dbeta, h->dense.out, ctx);
    }
  }
  fn(net->head.dw, net->head.in * net->head.out, ctx);
  fn(net->head.db, net->head.out, ctx);
}

typedef struct {
  float* buffer;
  int offset;
  int pack; /* 1: gradients -> buffer, 0: buffer -> gradients, -1: count only */
} Packer;

static void pack_one(float* grad, int n, void* ctx) {
  Packer* p = ctx;
  if (p->pack == 1) memcpy(p->buffer + p->offset, grad, (size_t)n * sizeof(float));
  if (p->pack == 0) memcpy(grad, p->buffer + p->offset, (size_t)n * sizeof(float));
  p->offset += n;
}

int mlp_gradient_count(const Mlp* net) {
  Packer p = {NULL, 0, -1};
  for_each_gradient(net, pack_one, &p);
  return p.offset;
}

void mlp_pack_gradients(const Mlp* net, float* out) {
  Packer p = {out, 0, 1};
  for_each_gradient(net, pack_one, &p);
}

void mlp_unpack_gradients(Mlp* net, const float* in) {
  Packer p = {(float*)in, 0, 0};
  for_each_gradient(net, pack_one, &p);
}
