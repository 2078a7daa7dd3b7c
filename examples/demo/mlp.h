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
} MlpOptions;

typedef struct {
  double loss_sum; /* sum over the batch of -log p(label) */
  int correct;     /* argmax(p) == label */
} BatchResult;

void mlp_init(Mlp* net, const MlpOptions* opt);
void mlp_free(Mlp* net);
/* Training mode: batch statistics (and moving-statistic updates); else the moving statistics. */
void mlp_set_training(Mlp* net, int training);
/* Forward pass over batch rows (1 <= batch <= max_batch), keeping what backward needs. */
BatchResult mlp_forward(Mlp* net, const float* x, const int* labels, int batch);
/* Gradients of the mean loss of the last forward (same x, labels, batch). */
void mlp_backward(Mlp* net, const float* x, const int* labels, int batch);
/* Plain SGD: p -= lr * dL/dp for every weight, bias, gamma and beta. */
void mlp_sgd_step(Mlp* net, float lr);

#endif
