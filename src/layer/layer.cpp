#include "layer/layer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "kernels/kernels.hpp"
#include "layer/error.hpp"
#include "layer/layer_internal.hpp"

#include "layer/keras_params.hpp"

namespace bn {
using namespace detail;
namespace {

constexpr int32_t kMaxThreads = 4096;

const char* param_name(Param p) {
  switch (p) {
    case Param::gamma: return "GAMMA";
    case Param::beta: return "BETA";
    case Param::moving_mean: return "MOVING_MEAN";
    case Param::moving_variance: return "MOVING_VARIANCE";
    case Param::renorm_mean: return "RENORM_MEAN";
    case Param::renorm_stddev: return "RENORM_STDDEV";
    case Param::batch_mean: return "BATCH_MEAN";
    case Param::batch_variance: return "BATCH_VARIANCE";
    case Param::moving_stddev: return "MOVING_STDDEV";
  }
  return "?";
}

void check_momentum(double momentum) {
  if (!(momentum >= 0.0 && momentum <= 1.0)) {
    fail(Status::invalid_argument, "momentum=" + std::to_string(momentum) + " but it must be in [0, 1]");
  }
}

}  // namespace

// Renorm clipping as Keras 3 validates it (Keras 2 does not): rmin finite >= 0, rmax >= rmin
// (may be +inf), dmax >= 0 (may be +inf), renorm_momentum in [0, 1].
void check_renorm(const Renorm& r) {
  if (!(r.rmin >= 0 && std::isfinite(r.rmin))) {
    fail(Status::invalid_argument, "rmin=" + std::to_string(r.rmin) + " but it must be finite and >= 0");
  }
  if (!(r.rmax >= r.rmin)) {
    fail(Status::invalid_argument, "rmax=" + std::to_string(r.rmax) + " but it must be >= rmin=" + std::to_string(r.rmin));
  }
  if (!(r.dmax >= 0)) fail(Status::invalid_argument, "dmax=" + std::to_string(r.dmax) + " but it must be >= 0");
  if (!(r.momentum >= 0 && r.momentum <= 1)) {
    fail(Status::invalid_argument, "renorm_momentum=" + std::to_string(r.momentum) + " but it must be in [0, 1]");
  }
}

namespace {

// Keras 2 `_raise_if_fused_cannot_be_used`: the reason the fused path cannot be used, or "".
std::string fused_obstacle(const std::vector<int32_t>& axes, DType dtype, const Config& config) {
  if (config.renorm.enabled) return "fused=True is not supported with renorm";
  if (axes.size() > 1) return "fused=True needs a single axis (got " + std::to_string(axes.size()) + " axes)";
  const int32_t a = axes[0];
  if (a != -4 && a != -3 && a != -1 && a != 1 && a != 3 && a != 4) {
    return "fused=True is only supported when axis is 1 or 3 for input rank 4, or 1 or 4 for rank 5 (got axis " +
           std::to_string(a) + ")";
  }
  if (config.virtual_batch_size > 0) return "fused=True is not supported with virtual_batch_size";
  if (config.adjustment) return "fused=True is not supported with adjustment";
  if (dtype == DType::f64) return "fused=True is only supported for 16- and 32-bit floats (got float64)";
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------
Layer::Layer(const Config& config, const int64_t* input_shape, int32_t ndim)
    : config_(config),
      had_adjustment_(static_cast<bool>(config.adjustment)),
      had_allreduce_(static_cast<bool>(config.allreduce)) {
  check_momentum(config.momentum);
  if (!std::isfinite(config.epsilon) || config.epsilon < 0) {
    fail(Status::invalid_argument, "epsilon=" + std::to_string(config.epsilon) + " but it must be finite and >= 0");
  }
  if (config.dtype != DType::f32 && config.dtype != DType::f64 && config.dtype != DType::bf16 &&
      config.dtype != DType::f16) {
    fail(Status::invalid_argument, "dtype " + std::to_string(static_cast<int>(config.dtype)) + " is not a known dtype");
  }
  axes_ = resolve_axes(config.axes, input_shape, ndim);
  input_shape_.assign(input_shape, input_shape + ndim);
  axes_.element_bytes = config.dtype == DType::f64 ? 8 : (config.dtype == DType::f32 ? 4 : 2);
  check_renorm(config.renorm);
  if (config.virtual_batch_size > 0) {
    // Keras 2 build(): ghost batches split axis 0, so it cannot be normalized; no adjustment.
    if (axes_.kept[0]) {
      fail(Status::invalid_argument, "virtual_batch_size=" + std::to_string(config.virtual_batch_size) +
                                         " needs axis 0 (the batch) to be reduced, but the axes include it");
    }
    if (config.adjustment) fail(Status::invalid_argument, "virtual_batch_size cannot be combined with adjustment");
    if (ndim + 1 > kMaxRank) {
      fail(Status::unsupported, "virtual_batch_size needs one more dimension than the input's rank " +
                                    std::to_string(ndim) + "; the largest rank with ghost batches is " +
                                    std::to_string(kMaxRank - 1));
    }
  }

  // Which path's semantics apply (SEMANTICS B.1, Keras 2 __init__ and build).
  std::vector<int32_t> normalized;
  for (int32_t d = 0; d < ndim; ++d) {
    if (axes_.kept[d]) normalized.push_back(d);
  }
  const bool rank45 = ndim == 4 || ndim == 5;
  if (config.fused == Fused::off || (config.fused == Fused::automatic && config.allreduce)) {
    // Keras' synchronized=True forces the non-fused path (and raises on fused=True, which
    // the library honours instead, with the global count in Bessel's factor, as PyTorch's
    // SyncBatchNorm does).
    fused_ = false;
  } else if (config.rules == KerasRules::v1) {
    // V1 decides in build, after the axes were normalized; fused=True is only a preference.
    fused_ = rank45 && fused_obstacle(normalized, config.dtype, config).empty();
  } else {
    // V2 checks the axes as given, in __init__.
    const std::string obstacle = fused_obstacle(config.axes, config.dtype, config);
    if (config.fused == Fused::on) {
      if (!obstacle.empty()) fail(Status::invalid_argument, obstacle + " (Keras V2 rules raise here)");
      if (!rank45) {
        fail(Status::invalid_argument, "fused=True only supports 4D or 5D inputs (got rank " + std::to_string(ndim) +
                                           "; Keras V2 rules raise here)");
      }
      fused_ = true;
    } else {
      fused_ = obstacle.empty() && rank45;
    }
  }
  if (fused_) {
    const int32_t a = normalized[0];
    const bool supported = (ndim == 4 && (a == 1 || a == 3)) || (ndim == 5 && (a == 1 || a == 4));
    if (!supported) {
      if (ndim == 5) {
        fused_ = false;  // Keras: 5D inputs with another axis silently use the non-fused path
      } else {
        fail(Status::invalid_argument,
             "unsupported axis for the fused path: Keras only allows axis 1 or 3 for 4D inputs (axis " +
                 std::to_string(config.axes[0]) + " is " + std::to_string(a) +
                 " here); set fused OFF to normalize over it");
      }
    }
  }
  epsilon_ = fused_ ? std::max(config.epsilon, kFusedMinEpsilon) : config.epsilon;

  const auto c = static_cast<size_t>(axes_.features);
  gamma_.assign(c, 1.0);
  beta_.assign(c, 0.0);
  moving_mean_.assign(c, 0.0);
  moving_variance_.assign(c, 1.0);
  init_keras_params();
  for (auto* v : {&saved_r_, &call_r_}) v->assign(c, 1.0);
  for (auto* v : {&saved_d_, &call_d_, &saved_adj_bias_, &call_adj_bias_}) v->assign(c, 0.0);
  for (auto* v : {&saved_adj_scale_, &call_adj_scale_}) v->assign(c, 1.0);
  batch_mean_.assign(c, 0.0);
  batch_variance_.assign(c, 0.0);
  saved_inv_std_.assign(c, 0.0);
  saved_center_.assign(c, 0.0);
  work_a_.assign(c, 0.0);
  work_b_.assign(c, 0.0);
  work_c_.assign(c, 0.0);
  work_d_.assign(c, 0.0);
  if (config_.allreduce) {
    sync_.resize(c);
    sync_shift_.assign(c, 0.0);
  }
  if (config_.dtype == DType::f64) {
    infer_f64_.resize(c);
    call_f64_.resize(c);
    if (config_.relu) relu_f64_.resize(c);
  } else {
    infer_f32_.resize(c);
    call_f32_.resize(c);
    if (config_.relu) relu_f32_.resize(c);
  }
  apply_keras_preset();
  refresh_inference_transform();
}

// The Keras training/trainable combinations as mode flags (SEMANTICS B.5): training normalizes
// with the batch statistics and updates the moving ones, except that under V2 rules (and in
// Keras 3) a frozen layer runs in inference mode; gamma and beta get gradients when trainable.
void Layer::apply_keras_preset() {
  const bool v2_frozen = config_.rules == KerasRules::v2 && !config_.trainable;
  mode_ = 0;
  if (training_ && !v2_frozen) mode_ |= kBatchStatistics | kUpdateMoving;
  if (config_.trainable) mode_ |= kParamGradients;
}

void Layer::set_mode(int32_t flags) {
  if (flags < 0 || flags > (kBatchStatistics | kUpdateMoving | kParamGradients)) {
    fail(Status::invalid_argument, "flags=" + std::to_string(flags) + " has bits other than BN_MODE_BATCH_STATISTICS, "
                                   "BN_MODE_UPDATE_MOVING and BN_MODE_PARAM_GRADIENTS");
  }
  Access access(users_, true);
  mode_ = flags;
  refresh_inference_transform();
}

int32_t Layer::mode() const {
  Access shared(users_, false);
  return mode_;
}

// Training forwards leave the transform stale (it is needed only once the layer normalizes
// with the moving statistics again); every change into inference mode refreshes it, so
// inference forwards, which may run concurrently, only read it.
void Layer::refresh_inference_transform() {
  if (!inference_stale_) return;
  inference_stale_ = false;
  for (size_t f = 0; f < gamma_.size(); ++f) {
    const double k = gamma_[f] / std::sqrt(moving_variance_[f] + epsilon_);
    if (config_.dtype == DType::f64) {
      fold_normalize(infer_f64_, f, moving_mean_[f], k, beta_[f]);
    } else {
      fold_normalize(infer_f32_, f, moving_mean_[f], k, beta_[f]);
    }
  }
}

void Layer::set_training(bool training) {
  Access access(users_, true);
  training_ = training;
  apply_keras_preset();
  refresh_inference_transform();
}

void Layer::set_trainable(bool trainable) {
  Access access(users_, true);
  config_.trainable = trainable;
  apply_keras_preset();
  refresh_inference_transform();
}

void Layer::set_renorm_clipping(double rmax, double rmin, double dmax) {
  Renorm r = config_.renorm;
  r.rmax = rmax;
  r.rmin = rmin;
  r.dmax = dmax;
  replace_renorm(r);
}

void Layer::set_renorm_momentum(double momentum) {
  Renorm r = config_.renorm;
  r.momentum = momentum;
  replace_renorm(r);
}

void Layer::replace_renorm(const Renorm& renorm) {
  check_renorm(renorm);
  Access access(users_, true);
  if (!config_.renorm.enabled) fail(Status::state, "the layer was built without renorm");
  config_.renorm = renorm;
}

// Renorm's correction for a feature with batch mean and biased variance (SEMANTICS B.2),
// from the renorm statistics before this step's update.
void Layer::renorm_correction(size_t f, double mean, double var, double& r, double& d) const {
  const double rs = std::max(renorm_stddev_[f], std::sqrt(epsilon_));
  r = std::min(std::max(std::sqrt(var + epsilon_) / rs, config_.renorm.rmin), config_.renorm.rmax);
  d = std::min(std::max((mean - renorm_mean_[f]) / rs, -config_.renorm.dmax), config_.renorm.dmax);
}

void Layer::set_nonfinite_policy(NonFinite policy) {
  if (policy != NonFinite::refuse && policy != NonFinite::propagate && policy != NonFinite::skip_update) {
    fail(Status::invalid_argument, "policy=" + std::to_string(static_cast<int>(policy)) + " is not a known value");
  }
  Access access(users_, true);
  config_.nonfinite = policy;
}

void Layer::set_momentum(double momentum) {
  check_momentum(momentum);
  Access access(users_, true);
  config_.momentum = momentum;
}

void Layer::set_num_threads(int32_t max_threads) {
  if (max_threads < 0 || max_threads > kMaxThreads) {
    fail(Status::invalid_argument, "max_threads=" + std::to_string(max_threads) + " but it must be 0 (the caller's "
                                   "arena) or 1 to " + std::to_string(kMaxThreads));
  }
  Access access(users_, true);
  executor_.set_max_threads(max_threads);
}

const ShapePlan& Layer::plan_for(const int64_t* shape, int32_t ndim) {
  if (plan_valid_ && plan_.same_shape(shape, ndim)) return plan_;
  ShapePlan plan = plan_shape(axes_, shape, ndim);
  const size_t rows = static_cast<size_t>(plan.grid.o_blocks) * static_cast<size_t>(axes_.features);
  std::vector<double> a(rows), b(rows);  // may throw bad_alloc: nothing changed yet
  plan_ = plan;
  partial_a_.swap(a);
  partial_b_.swap(b);
  plan_valid_ = true;
  return plan_;
}

// ---------------------------------------------------------------------------
// Parameters
void Layer::write_params(const std::vector<double>& values, void* out) const {
  if (config_.dtype == DType::f64) {
    std::memcpy(out, values.data(), values.size() * sizeof(double));
  } else {
    auto* o = static_cast<float*>(out);
    for (size_t i = 0; i < values.size(); ++i) o[i] = static_cast<float>(values[i]);
  }
}

void Layer::get_param(Param which, void* out, int64_t count) const {
  Access shared(users_, false);
  if (count != axes_.features) {
    fail(Status::shape, "count=" + std::to_string(count) + " but the layer has " + std::to_string(axes_.features) +
                            " features");
  }
  switch (which) {
    case Param::gamma: return write_params(gamma_, out);
    case Param::beta: return write_params(beta_, out);
    case Param::moving_mean: return write_params(moving_mean_, out);
    case Param::moving_variance: return write_params(moving_variance_, out);
    case Param::batch_mean:
    case Param::batch_variance:
      if (!have_batch_statistics_) {
        fail(Status::state, std::string(param_name(which)) + " needs a forward that computed batch statistics first");
      }
      return write_params(which == Param::batch_mean ? batch_mean_ : batch_variance_, out);
    case Param::renorm_mean:
    case Param::renorm_stddev:
    case Param::moving_stddev:
      return write_params(renorm_param(which), out);
  }
  fail(Status::invalid_argument, "which=" + std::to_string(static_cast<int>(which)) + " is not a known parameter");
}

const std::vector<double>& Layer::renorm_param(Param which) const {
  if (!config_.renorm.enabled) {
    fail(Status::invalid_argument, std::string(param_name(which)) + " exists only with renorm, which is off");
  }
  return which == Param::renorm_mean ? renorm_mean_ : which == Param::renorm_stddev ? renorm_stddev_ : moving_stddev_;
}

void Layer::fold(std::vector<double>& scale, std::vector<double>& shift) const {
  Access shared(users_, false);
  scale.resize(gamma_.size());
  shift.resize(gamma_.size());
  for (size_t f = 0; f < gamma_.size(); ++f) {
    scale[f] = gamma_[f] / std::sqrt(moving_variance_[f] + epsilon_);
    shift[f] = beta_[f] - moving_mean_[f] * scale[f];
  }
}

void Layer::set_param(Param which, const void* values, int64_t count) {
  Access exclusive(users_, true);
  if (count != axes_.features) {
    fail(Status::shape, "count=" + std::to_string(count) + " but the layer has " + std::to_string(axes_.features) +
                            " features");
  }
  std::vector<double>* target = nullptr;
  switch (which) {
    case Param::gamma:
      if (!config_.scale) fail(Status::invalid_argument, "the layer has no GAMMA (scale=0)");
      target = &gamma_;
      break;
    case Param::beta:
      if (!config_.center) fail(Status::invalid_argument, "the layer has no BETA (center=0)");
      target = &beta_;
      break;
    case Param::moving_mean: target = &moving_mean_; break;
    case Param::moving_variance: target = &moving_variance_; break;
    case Param::batch_mean:
    case Param::batch_variance:
      fail(Status::invalid_argument, std::string(param_name(which)) + " is read-only");
    case Param::renorm_mean:
    case Param::renorm_stddev:
    case Param::moving_stddev:
      target = const_cast<std::vector<double>*>(&renorm_param(which));
      break;
  }
  if (!target) fail(Status::invalid_argument, "which=" + std::to_string(static_cast<int>(which)) + " is not a known parameter");
  auto value = [&](int64_t i) {
    return config_.dtype == DType::f64 ? static_cast<const double*>(values)[i]
                                       : static_cast<double>(static_cast<const float*>(values)[i]);
  };
  for (int64_t i = 0; i < count; ++i) {
    const double v = value(i);
    const bool nonnegative =
        which == Param::moving_variance || which == Param::renorm_stddev || which == Param::moving_stddev;
    if (!std::isfinite(v) || (nonnegative && v < 0)) {
      fail(Status::invalid_argument, "values[" + std::to_string(i) + "]=" + std::to_string(v) + " but " +
                                         param_name(which) + " must be finite" + (nonnegative ? " and >= 0" : ""));
    }
  }
  for (int64_t i = 0; i < count; ++i) (*target)[static_cast<size_t>(i)] = value(i);
  saved_.valid = false;
  inference_stale_ = true;
  if (!uses_batch_statistics()) refresh_inference_transform();
}

// ---------------------------------------------------------------------------
// Keras initializers, regularizers and constraints (SEMANTICS B.6, B.8; math in keras_params.cpp).
// Options for a parameter the layer does not have (gamma with scale=0, beta with center=0)
// are ignored, as Keras ignores them.
void Layer::init_keras_params() {
  const KerasParamOptions& k = config_.keras;
  const bool f64 = config_.dtype == DType::f64;
  const int64_t c = axes_.features;
  storage_shape_ = storage_shape(config_.axes.size(), axes_, config_.virtual_batch_size > 0);
  if (config_.scale) {
    check_constraint_axes(k.gamma_constraint, storage_shape_, "GAMMA");
    gamma_ = initial_values(k.gamma_init, c, 0, f64, "GAMMA");
  }
  if (config_.center) {
    check_constraint_axes(k.beta_constraint, storage_shape_, "BETA");
    beta_ = initial_values(k.beta_init, c, 0, f64, "BETA");
  }
  moving_mean_ = initial_values(k.moving_mean_init, c, 0, f64, "MOVING_MEAN");
  moving_variance_ = initial_values(k.moving_variance_init, c, 0, f64, "MOVING_VARIANCE");
  if (config_.renorm.enabled) {
    // Keras 2 build(): moving_stddev = sqrt(moving_variance_initializer()), renorm_mean =
    // moving_mean_initializer(), renorm_stddev = sqrt(moving_variance_initializer()), each a
    // further call of the initializer (a separate draw for the random ones).
    auto root = [&](std::vector<double> v) {
      for (double& e : v) e = round_param(std::sqrt(e));
      return v;
    };
    moving_stddev_ = root(initial_values(k.moving_variance_init, c, 1, f64, "MOVING_STDDEV"));
    renorm_mean_ = initial_values(k.moving_mean_init, c, 1, f64, "RENORM_MEAN");
    renorm_stddev_ = root(initial_values(k.moving_variance_init, c, 2, f64, "RENORM_STDDEV"));
  }
}

double Layer::regularization_loss() const {
  Access shared(users_, false);
  double loss = 0.0;
  if (config_.scale) loss += regularizer_loss(config_.keras.gamma_regularizer, gamma_);
  if (config_.center) loss += regularizer_loss(config_.keras.beta_regularizer, beta_);
  return loss;
}

// Keras' optimizer applies constraints to the trainable variables after its update; here the
// caller's update goes through bn_set_param, then this. A frozen layer's gamma and beta are
// not trainable, so nothing happens. Like bn_set_param it invalidates the saved forward
// whenever a constraint acts (configured on a parameter the layer has).
void Layer::apply_constraints() {
  Access exclusive(users_, true);
  const KerasParamOptions& k = config_.keras;
  const bool f64 = config_.dtype == DType::f64;
  const bool on_gamma = config_.trainable && config_.scale && k.gamma_constraint.kind != ConstraintKind::none;
  const bool on_beta = config_.trainable && config_.center && k.beta_constraint.kind != ConstraintKind::none;
  if (!on_gamma && !on_beta) return;
  std::vector<double> gamma, beta;
  if (on_gamma) gamma = constrained(k.gamma_constraint, gamma_, storage_shape_, f64, "GAMMA");
  if (on_beta) beta = constrained(k.beta_constraint, beta_, storage_shape_, f64, "BETA");
  // Commit: nothing below can fail.
  if (on_gamma) gamma_.swap(gamma);
  if (on_beta) beta_.swap(beta);
  saved_.valid = false;
  inference_stale_ = true;
  if (!uses_batch_statistics()) refresh_inference_transform();
}

}  // namespace bn
