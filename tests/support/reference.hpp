// An independent double-precision model of the Keras BatchNormalization layer, used as
// the test oracle. It shares no code with src/: it follows SEMANTICS.md (Part A, B.1, B.2,
// B.5, B.6, B.7, B.11) and the Keras 2 source it cites, written as plainly as possible.
// Scope: the plain features (no renorm, virtual batches or adjustment).
//
// Tensors are row-major std::vector<double>. For an f32 layer the caller passes values
// that are already representable as float; the model computes in long double, returns
// unrounded outputs, and stores parameters and moving statistics rounded to float after
// every update (as the library does).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace bn_test {

enum class RefDtype { f32, f64 };
enum class RefFused { automatic, on, off };                   // Keras fused=None/True/False
enum class RefRules { v1, v2 };                               // tf.compat.v1 / TF2 tf.keras class
enum class RefMovingVariance { automatic, biased, unbiased }; // library extension (A.9)

struct RefConfig {
  std::vector<int> axes{-1};
  double momentum = 0.99;
  double epsilon = 1e-3;
  bool center = true;
  bool scale = true;
  RefFused fused = RefFused::automatic;
  RefRules rules = RefRules::v1;
  bool trainable = true;
  RefMovingVariance moving_variance = RefMovingVariance::automatic;
  bool cumulative_average = false;
  bool reject_single_value = false;  // PyTorch's m == 1 policy (A.5)
  RefDtype dtype = RefDtype::f32;
};

std::string describe(const RefConfig& cfg);
std::string describe_shape(const std::vector<int64_t>& shape);

// Keras (or the library, for its documented limits) refuses the configuration.
class KerasRefusal : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// A training call the layer must refuse (single value per feature under REJECT).
class ShapeRefusal : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Keras tf_utils.validate_axis: the axes resolved to 0..rank-1 (order kept).
// Throws KerasRefusal when an axis is out of range or repeated.
std::vector<int> validate_axes(const std::vector<int>& axes, int rank);

// What Keras 2 decides for `fused` on an input of this rank: __init__ then build().
struct FusedDecision {
  bool refused = false;  // Keras raises ValueError
  bool fused = false;
  std::string reason;
};
FusedDecision keras_fused_decision(const RefConfig& cfg, int rank);

constexpr double kFusedMinEpsilon = 1.001e-5;  // tf.nn.fused_batch_norm's min_epsilon

// Forward result plus, per element, the magnitude of the terms that were summed
// (used to scale tolerances: the rounding error of any implementation is relative to it).
struct RefForward {
  std::vector<double> y;
  std::vector<double> y_mag;
};
struct RefGrads {
  std::vector<double> dx, dx_mag;
  std::vector<double> dgamma, dgamma_mag;
  std::vector<double> dbeta, dbeta_mag;
};

class RefLayer {
 public:
  // Throws KerasRefusal for what Keras (or bn_create) refuses.
  RefLayer(const RefConfig& cfg, const std::vector<int64_t>& input_shape);

  int64_t num_features() const { return features_; }
  bool fused() const { return fused_; }
  double effective_epsilon() const { return fused_ ? std::max(cfg_.epsilon, kFusedMinEpsilon) : cfg_.epsilon; }
  const RefConfig& config() const { return cfg_; }

  void set_training(bool training) { training_ = training; }
  void set_trainable(bool trainable) { cfg_.trainable = trainable; }
  void set_momentum(double momentum) { cfg_.momentum = momentum; }
  // Keras V2 / Keras 3: a frozen layer runs in inference mode (B.5).
  bool uses_batch_statistics() const;

  // Parameters (size num_features); stored rounded to the parameter dtype.
  const std::vector<double>& gamma() const { return gamma_; }
  const std::vector<double>& beta() const { return beta_; }
  const std::vector<double>& moving_mean() const { return moving_mean_; }
  const std::vector<double>& moving_variance() const { return moving_variance_; }
  void set_gamma(const std::vector<double>& v);
  void set_beta(const std::vector<double>& v);
  void set_moving_mean(const std::vector<double>& v);
  void set_moving_variance(const std::vector<double>& v);

  // Statistics of the last non-empty training forward (biased variance, unrounded).
  const std::vector<double>& batch_mean() const { return batch_mean_; }
  const std::vector<double>& batch_variance() const { return batch_variance_; }
  bool has_batch_statistics() const { return has_batch_stats_; }

  // Throws ShapeRefusal (state unchanged) for a refused single-value training call.
  RefForward forward(const std::vector<int64_t>& shape, const std::vector<double>& x);
  // Gradient of the most recent forward (same shape and x); dgamma/dbeta are 0 for a
  // frozen layer and for a parameter the layer does not have.
  RefGrads backward(const std::vector<int64_t>& shape, const std::vector<double>& x,
                    const std::vector<double>& dy) const;

 private:
  double store(double v) const;  // round to the parameter dtype
  std::vector<int64_t> feature_map(const std::vector<int64_t>& shape) const;
  void check_shape(const std::vector<int64_t>& shape) const;

  RefConfig cfg_;
  int rank_ = 0;
  std::vector<bool> kept_;
  std::vector<int64_t> kept_sizes_;
  int64_t features_ = 0;
  bool fused_ = false;
  bool training_ = false;
  int64_t updates_ = 0;
  bool last_forward_batch_ = false;
  bool has_batch_stats_ = false;
  std::vector<double> gamma_, beta_, moving_mean_, moving_variance_;
  std::vector<double> batch_mean_, batch_variance_;
};

// Per-feature two-pass moments in long double: mean and the biased variance.
// `feature` maps each element to its feature; features with no element get 0/0.
void two_pass_moments(const std::vector<double>& x, const std::vector<int64_t>& feature, int64_t features,
                      std::vector<long double>& mean, std::vector<long double>& variance,
                      std::vector<int64_t>& count);

// For each element of a row-major tensor, the index of its feature: row-major over the
// kept dims in input order, by an odometer over all dims.
std::vector<int64_t> feature_index_map(const std::vector<int64_t>& shape, const std::vector<bool>& kept);

int64_t element_count(const std::vector<int64_t>& shape);
double round_to(double v, RefDtype dtype);

}  // namespace bn_test
