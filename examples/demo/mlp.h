/* A small multilayer perceptron for the digits:
 *   64 -> 128 -> [BN] -> ReLU -> 64 -> [BN] -> ReLU -> 10 -> softmax cross-entropy.
 * Dense layers run on cblas_sgemm; the optional batch norm layers run on libbatchnorm. */
#ifndef BN_DEMO_MLP_H
#define BN_DEMO_MLP_H

#include <batchnorm/batchnorm.h>
#include <stdint.h>

#define MLP_HIDDEN_LAYERS 2

typedef struct {
  int in, out;
  float* w;  /* in x out, row-major: y = x w + b */
  float* b;  /* out, or NULL when the layer has no bias */
  float* dw; /* gradients, same shapes */
  float* db;
} Dense;

/* dense -> [batch norm] -> ReLU, with the activations kept for the backward pass. */
typedef struct {
  Dense dense;
  bn_layer* bn;  /* NULL in the plain network */
  float* z;      /* batch x out: dense output (the batch norm input) */
  float* h;      /* batch x out: batch norm output; aliases z without batch norm */
  float* a;      /* batch x out: ReLU output */
  float* grad;   /* batch x out: dL/da, turned in place into dL/dh and then dL/dz */
  float* dgamma; /* out: batch norm parameter gradients */
  float* dbeta;
  float* param; /* out: scratch for the gamma/beta update */
} Hidden;

typedef struct {
  int max_batch;
  Hidden hidden[MLP_HIDDEN_LAYERS];
  Dense head;
  float* probs; /* batch x classes: logits, then softmax probabilities */
  float* dlogits;
} Mlp;

typedef struct {
  int use_batch_norm;
  int max_batch;
  uint64_t seed;      /* He init; equal seeds give equal dense weights */
  double bn_momentum; /* Keras momentum of the moving statistics */
  int32_t bn_threads; /* bn_set_num_threads: 0 = caller's arena */
  /* Data-parallel training: the cross-replica callback of the batch norm layers
   * (bn_config_set_allreduce), NULL for one process. */
  bn_allreduce_fn bn_allreduce;
  void* bn_allreduce_data;
} MlpOptions;

typedef struct {
  double loss_sum; /* sum over the batch of -log p(label) */
  int correct;     /* argmax(p) == label */
} BatchResult;

void mlp_init(Mlp* net, const MlpOptions* opt);
void mlp_free(Mlp* net);
/* Training mode: batch statistics (and moving-statistic updates); else the moving statistics. */
void mlp_set_training(Mlp* net, int training);
/* Forward pass over batch rows (1 <= batch <= max_batch; 0 is allowed for a data-parallel
 * replica whose share of a mini-batch is empty), keeping what backward needs. */
BatchResult mlp_forward(Mlp* net, const float* x, const int* labels, int batch);
/* Gradients of the mean loss of the last forward (same x, labels, batch). */
void mlp_backward(Mlp* net, const float* x, const int* labels, int batch);
/* The same for a replica holding `batch` of the mini-batch's `total_rows` rows: the loss is
 * the mean over all total_rows rows, so the replicas' gradients sum to the mini-batch's. */
void mlp_backward_share(Mlp* net, const float* x, const int* labels, int batch, int total_rows);
/* Every parameter gradient (dense weights and biases, batch norm dgamma and dbeta) packed
 * into one array of mlp_gradient_count floats, and back: a replica sums them across replicas
 * in between. */
int mlp_gradient_count(const Mlp* net);
void mlp_pack_gradients(const Mlp* net, float* out);
void mlp_unpack_gradients(Mlp* net, const float* in);
/* Plain SGD: p -= lr * dL/dp for every weight, bias, gamma and beta. */
void mlp_sgd_step(Mlp* net, float lr);

#endif
