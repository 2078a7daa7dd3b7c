// Layer configuration in C++ terms: what Keras' BatchNormalization constructor takes,
// plus the library's explicit extensions (SEMANTICS Part A.9). Plain values only;
// every check that needs the input shape happens in the layer (layer.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "layer/keras_options.hpp"

namespace bn {

enum class DType : int32_t { f32 = 0, f64 = 1, bf16 = 2, f16 = 3 };
enum class Fused : int32_t { automatic = 0, on = 1, off = 2 };
enum class KerasRules : int32_t { v1 = 0, v2 = 1 };
enum class MovingVariance : int32_t { automatic = 0, biased = 1, unbiased = 2 };
enum class SingleValue : int32_t { compute = 0, reject = 1 };
// Training forwards whose batch statistics are not finite (NaN or infinity in x).
enum class NonFinite : int32_t { refuse = 0, propagate = 1, skip_update = 2 };

// Batch renormalization (Keras renorm, renorm_clipping, renorm_momentum). Infinite rmax/dmax
// and rmin 0 mean unclipped.
struct Renorm {
  bool enabled = false;
  double rmax = std::numeric_limits<double>::infinity();
  double rmin = 0.0;
  double dmax = std::numeric_limits<double>::infinity();
  double momentum = 0.99;
};

// Keras `adjustment`: given the input shape, fills per-feature scale and bias (arriving as 1
// and 0); returns false to fail the forward.
using Adjustment = std::function<bool(const int64_t* shape, int32_t ndim, double* scale, double* bias,
                                      int64_t features)>;

// Cross-replica statistics (synchronized batch norm): sums `count` doubles in place across all
// replicas, leaving the same values on every replica; returns false to fail the call. A
// collective: layer_sync.cpp says when the layer calls it and with what.
using Allreduce = std::function<bool(double* buffer, int64_t count)>;

struct Config {
  std::vector<int32_t> axes{-1};
  double momentum = 0.99;
  double epsilon = 1e-3;
  bool center = true;
  bool scale = true;
  DType dtype = DType::f32;
  bool trainable = true;
  Fused fused = Fused::automatic;
  KerasRules rules = KerasRules::v1;
  MovingVariance moving_variance = MovingVariance::automatic;
  bool cumulative_average = false;
  SingleValue single_value = SingleValue::compute;
  NonFinite nonfinite = NonFinite::refuse;
  bool relu = false;  // fused epilogue: y = max(bn(x) + residual, 0)
  KerasParamOptions keras;  // initializers, regularizers, constraints
  Renorm renorm;
  int64_t virtual_batch_size = 0;  // ghost batch norm; 0 = off
  Adjustment adjustment;           // empty = off
  Allreduce allreduce;             // empty = off (statistics of the local batch)
};

// Limits of the layer.
constexpr int32_t kMaxRank = 8;
// Keras' fused path clamps epsilon from below (tf.nn.fused_batch_norm).
constexpr double kFusedMinEpsilon = 1.001e-5;

}  // namespace bn
