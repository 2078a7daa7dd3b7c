// Keras' per-parameter options of the BatchNormalization layer: initializers (gamma, beta,
// moving mean, moving variance), regularizers and constraints (gamma, beta). Plain values
// only; the checks and the math live in keras_params.cpp.
#pragma once

#include <cstdint>
#include <vector>

namespace bn {

// Values mirror the pinned BN_INITIALIZER_* constants (checked in capi/).
enum class InitKind : int32_t {
  zeros = 0,
  ones = 1,
  constant = 2,          // a = value
  random_normal = 3,     // a = mean, b = stddev
  random_uniform = 4,    // a = minval, b = maxval
  truncated_normal = 5,  // a = mean, b = stddev; |z| > 2 redrawn
};

struct Initializer {
  InitKind kind = InitKind::zeros;
  double a = 0.0, b = 0.0;
  uint64_t seed = 0;
};

// l1*sum|w| + l2*sum w^2 (Keras L1L2; no 1/2 on the L2 term). 0, 0 = none.
struct Regularizer {
  double l1 = 0.0, l2 = 0.0;
  bool active() const { return l1 != 0.0 || l2 != 0.0; }
};

// Values mirror the pinned BN_CONSTRAINT_* constants.
enum class ConstraintKind : int32_t { none = 0, non_neg = 1, unit_norm = 2, max_norm = 3, min_max_norm = 4 };

struct Constraint {
  ConstraintKind kind = ConstraintKind::none;
  double min_value = 0.0, max_value = 0.0, rate = 1.0;
  std::vector<int32_t> axes;  // of the storage shape (Keras `axis`); norm kinds only
};

struct KerasParamOptions {
  Initializer gamma_init{InitKind::ones, 0.0, 0.0, 0};
  Initializer beta_init{InitKind::zeros, 0.0, 0.0, 0};
  Initializer moving_mean_init{InitKind::zeros, 0.0, 0.0, 0};
  Initializer moving_variance_init{InitKind::ones, 0.0, 0.0, 0};
  Regularizer gamma_regularizer, beta_regularizer;
  Constraint gamma_constraint, beta_constraint;
};

}  // namespace bn
