// An independent double-precision model of the Keras BatchNormalization layer, used as
// the test oracle. It shares no code with src/: it follows SEMANTICS.md (Part A, B.1-B.7,
// B.11) and the Keras 2 source it cites, written as plainly as
// possible. Scope: the plain layer, batch renormalization (B.2), ghost batches (B.3, with the
// ghost membership spelled out per sample), adjustment (B.4, per-feature scale and bias given
// by the test) and the library's mode flags (A.9).
//
// Tensors are row-major std::vector<double>. For an f32 layer the caller passes values
// that are already representable as float; the model computes in long double, returns
// unrounded outputs, and stores parameters and moving statistics rounded to float after
// every update (as the library does).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace bn_test {

enum class RefDtype { f32, f64 };
enum class RefFused { automatic, on, off };                   // Keras fused=None/True/False
enum class RefRules { v1, v2 };                               // tf.compat.v1 / TF2 tf.keras class
enum class RefMovingVariance { automatic, biased, unbiased }; // library extension (A.9)

// Keras renorm / renorm_clipping / renorm_momentum. rmax = dmax = +inf and rmin = 0 is
// "no clipping" (a missing key in Keras' renorm_clipping dict).
struct RefRenorm {
  bool enabled = false;
  double rmax = std::numeric_limits<double>::infinity();
  double rmin = 0.0;
  double dmax = std::numeric_limits<double>::infinity();
  double momentum = 0.99;
};

// Mode flags (A.9), the same bit values as BN_MODE_*.
constexpr int kModeBatchStatistics = 1;
constexpr int kModeUpdateMoving = 2;
constexpr int kModeParamGradients = 4;

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
  RefRenorm renorm;
  int64_t virtual_batch_size = 0;  // ghost batches; 0 = off
  bool adjustment = false;         // values from RefLayer::set_adjustment
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
// A batch mean counts as |mean| + sqrt(var): it is only as accurate as the data's spread.
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

  void set_training(bool training) {
    training_ = training;
    mode_override_.reset();
  }
  void set_trainable(bool trainable) {
    cfg_.trainable = trainable;
    mode_override_.reset();
  }
  void set_momentum(double momentum) { cfg_.momentum = momentum; }
  // Live renorm changes (bn_set_renorm_clipping, bn_set_renorm_momentum).
  void set_renorm_clipping(double rmax, double rmin, double dmax);
  void set_renorm_momentum(double momentum) { cfg_.renorm.momentum = momentum; }
  // The mode flags: the Keras preset of (training, trainable, rules) unless set_mode
  // overrode it; set_training and set_trainable return to the preset (A.9, B.5).
  int mode() const;
  void set_mode(int flags) { mode_override_ = flags; }
  // Keras V2 / Keras 3: a frozen layer runs in inference mode (B.5).
  bool uses_batch_statistics() const { return (mode() & kModeBatchStatistics) != 0; }

  // The adjustment's per-feature scale and bias (B.4), used by training forwards.
  void set_adjustment(const std::vector<double>& scale, const std::vector<double>& bias);
  // How many times Keras would have called adjustment (once per batch-statistics forward).
  int adjustment_calls() const { return adjustment_calls_; }

  // Parameters (size num_features); stored rounded to the parameter dtype.
  const std::vector<double>& gamma() const { return gamma_; }
  const std::vector<double>& beta() const { return beta_; }
  const std::vector<double>& moving_mean() const { return moving_mean_; }
  const std::vector<double>& moving_variance() const { return moving_variance_; }
  void set_gamma(const std::vector<double>& v);
  void set_beta(const std::vector<double>& v);
  void set_moving_mean(const std::vector<double>& v);
  void set_moving_variance(const std::vector<double>& v);
  // Renorm state (B.2); only with renorm.
  const std::vector<double>& renorm_mean() const { return renorm_mean_; }
  const std::vector<double>& renorm_stddev() const { return renorm_stddev_; }
  const std::vector<double>& moving_stddev() const { return moving_stddev_; }
  void set_renorm_mean(const std::vector<double>& v);
  void set_renorm_stddev(const std::vector<double>& v);
  void set_moving_stddev(const std::vector<double>& v);
  // The renorm correction of the last batch-statistics forward (r = 1, d = 0 without renorm).
  const std::vector<double>& last_r() const { return saved_r_; }
  const std::vector<double>& last_d() const { return saved_d_; }

  // Statistics of the last non-empty forward that computed batch statistics (biased
  // variance, unrounded). With ghost batches: the average of the per-ghost statistics.
  const std::vector<double>& batch_mean() const { return batch_mean_; }
  const std::vector<double>& batch_variance() const { return batch_variance_; }
  bool has_batch_statistics() const { return has_batch_stats_; }

  // Throws ShapeRefusal (state unchanged) for a refused single-value training call and for
  // a batch that ghost batches cannot split (N not a multiple of virtual_batch_size).
  RefForward forward(const std::vector<int64_t>& shape, const std::vector<double>& x);
  // Gradient of the most recent forward (same shape and x); dgamma/dbeta are 0 without
  // BN_MODE_PARAM_GRADIENTS (a frozen layer) and for a parameter the layer does not have.
  RefGrads backward(const std::vector<int64_t>& shape, const std::vector<double>& x,
                    const std::vector<double>& dy) const;

 private:
  double store(double v) const;  // round to the parameter dtype
  std::vector<int64_t> feature_map(const std::vector<int64_t>& shape) const;
  // The group (ghost batch, feature) of each element: ghost*features + feature.
  std::vector<int64_t> group_map(const std::vector<int64_t>& shape, int64_t& ghosts) const;
  void check_shape(const std::vector<int64_t>& shape) const;

  RefConfig cfg_;
  int rank_ = 0;
  std::vector<bool> kept_;
  std::vector<int64_t> kept_sizes_;
  int64_t features_ = 0;
  bool fused_ = false;
  bool training_ = false;
  std::optional<int> mode_override_;
  int64_t updates_ = 0;
  bool last_forward_batch_ = false;
  bool has_batch_stats_ = false;
  int adjustment_calls_ = 0;
  std::vector<double> gamma_, beta_, moving_mean_, moving_variance_;
  std::vector<double> renorm_mean_, renorm_stddev_, moving_stddev_;
  std::vector<double> adj_scale_, adj_bias_;
  std::vector<double> batch_mean_, batch_variance_;
  // What the most recent forward used, for its backward: the renorm correction and
  // adjustment (batch statistics), or the moving statistics as they were (otherwise).
  std::vector<double> saved_r_, saved_d_, saved_d_mag_, saved_adj_scale_, saved_adj_bias_;
  std::vector<double> saved_moving_mean_, saved_moving_variance_;
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
