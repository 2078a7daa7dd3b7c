#include "layer/layer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "kernels/kernels.hpp"
#include "layer/error.hpp"
#include "layer/keras_params.hpp"

namespace bn {
namespace {

constexpr int32_t kMaxThreads = 4096;
constexpr int64_t kFeaturesPerTask = 256;  // per-feature work is split in chunks of this size
// Outputs of at least this many bytes are written with non-temporal stores (saves reading
// them in first), when every row starts on the same 64-byte phase: mixing streaming and
// ordinary stores on one cache line (rows of 49 floats) measured much slower than either.
constexpr int64_t kStreamBytes = int64_t{4} << 20;

template <class T>
bool stream_output(const ShapePlan& plan) {
  const kernels::Geometry& g = plan.geometry;
  if (!g.identity() || plan.elements * static_cast<int64_t>(sizeof(T)) < kStreamBytes) return false;
  const int64_t row_bytes = (g.inner > 1 ? g.inner : g.span) * static_cast<int64_t>(sizeof(T));
  return row_bytes % 64 == 0;
}

std::string shape_text(const int64_t* shape, int32_t ndim) {
  std::string s = "(";
  for (int32_t i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (ndim == 1 ? ",)" : ")");
}

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

// Calls fn with a value of the kernels' element type E for `dtype`: double for f64, the
// 16-bit tags for bf16 and f16, float for f32. Parameters, statistics and the per-feature
// kernel constants are double for f64 and float otherwise (kernels::Compute<E>).
template <class Fn>
void with_element(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f64: return fn(double{});
    case DType::bf16: return fn(kernels::bf16{});
    case DType::f16: return fn(kernels::f16{});
    case DType::f32: break;
  }
  fn(float{});
}

// The normalization y = (x - mean)*k + t, folded for kernels computing
// fma(x - center, k1, k2) in T (the compute type): center = T(mean) makes x - center exact
// near the mean (Sterbenz), and the shift absorbs the rounding of the mean. 16-bit elements
// are exact in float, so this holds for them too.
template <class T>
void fold_normalize(PerFeature<T>& out, size_t f, double mean, double k, double t) {
  const T center = static_cast<T>(mean);
  out.center[f] = center;
  out.k1[f] = static_cast<T>(k);
  out.k2[f] = static_cast<T>(t - (mean - static_cast<double>(center)) * k);
}

// The member of the kernels' element type T.
template <class T>
PerFeature<T>& of_type(PerFeature<float>& f32, PerFeature<double>& f64) {
  if constexpr (std::is_same_v<T, float>) {
    return f32;
  } else {
    return f64;
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Access guard: many concurrent readers (inference forwards, get_param) or one writer.
// Misuse is reported, never raced.
class Layer::Access {
 public:
  Access(std::atomic<int32_t>& users, bool exclusive) : users_(users), exclusive_(exclusive) {
    if (exclusive) {
      int32_t expected = 0;
      if (!users.compare_exchange_strong(expected, -1, std::memory_order_acquire)) busy();
      return;
    }
    int32_t v = users.load(std::memory_order_relaxed);
    do {
      if (v < 0) busy();
    } while (!users.compare_exchange_weak(v, v + 1, std::memory_order_acquire));
  }
  ~Access() {
    if (exclusive_) {
      users_.store(0, std::memory_order_release);
    } else {
      users_.fetch_sub(1, std::memory_order_release);
    }
  }
  Access(const Access&) = delete;
  Access& operator=(const Access&) = delete;

 private:
  [[noreturn]] static void busy() {
    fail(Status::state,
         "the layer is in use by another thread; only inference-mode bn_forward and bn_get_param may run "
         "concurrently on one layer");
  }
  std::atomic<int32_t>& users_;
  bool exclusive_;
};

// ---------------------------------------------------------------------------
Layer::Layer(const Config& config, const int64_t* input_shape, int32_t ndim) : config_(config) {
  check_momentum(config.momentum);
  if (!std::isfinite(config.epsilon) || config.epsilon < 0) {
    fail(Status::invalid_argument, "epsilon=" + std::to_string(config.epsilon) + " but it must be finite and >= 0");
  }
  if (config.dtype != DType::f32 && config.dtype != DType::f64 && config.dtype != DType::bf16 &&
      config.dtype != DType::f16) {
    fail(Status::invalid_argument, "dtype " + std::to_string(static_cast<int>(config.dtype)) + " is not a known dtype");
  }
  axes_ = resolve_axes(config.axes, input_shape, ndim);
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
  if (config.fused == Fused::off) {
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

double Layer::round_param(double v) const {
  return config_.dtype == DType::f64 ? v : static_cast<double>(static_cast<float>(v));
}

template <class T>
PerFeature<T>& Layer::inference_constants() {
  if constexpr (std::is_same_v<T, float>) return infer_f32_; else return infer_f64_;
}
template <class T>
const PerFeature<T>& Layer::inference_constants() const {
  if constexpr (std::is_same_v<T, float>) return infer_f32_; else return infer_f64_;
}
template <class T>
PerFeature<T>& Layer::call_constants() {
  if constexpr (std::is_same_v<T, float>) return call_f32_; else return call_f64_;
}
template <class T>
PerFeature<T>& Layer::relu_constants() {
  if constexpr (std::is_same_v<T, float>) return relu_f32_; else return relu_f64_;
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
// Forward
// 16-bit layers (SEMANTICS A.7, B.9) compute in float from the widened inputs, with the
// statistics accumulated in double and float parameters, and round y once to the 16-bit type.
void Layer::forward(const int64_t* shape, int32_t ndim, const ForwardIo& io) {
  {
    Access shared(users_, false);
    if (!computes_batch_statistics()) {
      const ShapePlan plan = plan_shape(axes_, shape, ndim);
      with_element(config_.dtype, [&](auto e) { forward_inference<decltype(e)>(plan, io); });
      std::lock_guard<std::mutex> lock(saved_mutex_);
      saved_.valid = true;
      saved_.batch_statistics = false;
      saved_.training_forward = false;
      saved_.residual = io.residual != nullptr;
      saved_.ghost = false;
      saved_.ndim = ndim;
      std::copy(shape, shape + ndim, saved_.shape);
      return;
    }
  }
  Access exclusive(users_, true);
  if (!computes_batch_statistics()) {
    fail(Status::state, "the layer left training mode while this call started; call again");
  }
  check_shape(axes_, shape, ndim);
  if (config_.virtual_batch_size > 0 && element_count(shape, ndim) > 0) {
    Ghost& gh = ghost_for(shape, ndim);
    with_element(config_.dtype, [&](auto e) { forward_ghost<decltype(e)>(gh, io); });
    return;
  }
  const ShapePlan& plan = plan_for(shape, ndim);
  with_element(config_.dtype, [&](auto e) { forward_training<decltype(e)>(plan, io); });
}

template <class T>
void Layer::forward_inference(const ShapePlan& plan, const ForwardIo& io) const {
  const auto& k = kernels::selected<T>();
  const PerFeature<kernels::Compute<T>>& pf = inference_constants<kernels::Compute<T>>();
  const kernels::NormalizeArgs<T> args{plan.geometry,
                                       static_cast<const T*>(io.x),
                                       static_cast<T*>(io.y),
                                       pf.center.data(),
                                       pf.k1.data(),
                                       pf.k2.data(),
                                       static_cast<const T*>(io.residual),
                                       config_.relu,
                                       stream_output<T>(plan)};
  const BlockGrid& sg = plan.stream_grid;
  executor_.for_blocks(sg.count(), [&](int64_t b) { k.normalize(args, sg.block(plan.geometry, b)); });
}

template <class T>
void Layer::forward_training(const ShapePlan& plan, const ForwardIo& io) {
  const T* x = static_cast<const T*>(io.x);
  const int64_t m = plan.per_feature;
  if (m == 1 && config_.single_value == SingleValue::reject) {
    fail(Status::shape, "training needs more than one value per feature (single-value policy REJECT); shape " +
                            shape_text(plan.shape, plan.ndim) + " has 1");
  }
  const bool batch = uses_batch_statistics();
  const bool renorm = batch && config_.renorm.enabled;
  const bool adjust = batch && static_cast<bool>(config_.adjustment);
  const int64_t c = axes_.features;
  if (adjust) {
    // Keras calls adjustment(tf.shape(inputs)) in training; a failure changes nothing.
    std::fill(call_adj_scale_.begin(), call_adj_scale_.end(), 1.0);
    std::fill(call_adj_bias_.begin(), call_adj_bias_.end(), 0.0);
    if (!config_.adjustment(plan.shape, plan.ndim, call_adj_scale_.data(), call_adj_bias_.data(), c)) {
      fail(Status::callback, "the adjustment callback reported failure");
    }
    for (int64_t f = 0; f < c; ++f) {
      if (!std::isfinite(call_adj_scale_[f]) || !std::isfinite(call_adj_bias_[f])) {
        fail(Status::callback, "the adjustment callback returned a non-finite scale or bias for feature " +
                                   std::to_string(f));
      }
    }
  }
  const kernels::Geometry& g = plan.geometry;
  const BlockGrid& grid = plan.grid;
  const auto& k = kernels::selected<T>();
  using C = kernels::Compute<T>;
  PerFeature<C>& pf = call_constants<C>();
  // Per feature: keep mean, biased variance and 1/sqrt(var + eps); with the batch statistics,
  // fold y = g*(a_s*(r*xhat + d) + a_b) + b (SEMANTICS B.2, B.4): r, d the renorm correction
  // from the pre-update renorm statistics (constants for the gradient), a_s, a_b the
  // adjustment; k = g*a_s*r/sqrt(var + eps), t = g*(a_s*d + a_b) + b.
  auto transform = [&](int64_t f, double mean, double var) {
    work_a_[f] = mean;
    work_b_[f] = var;
    const double inv = 1.0 / std::sqrt(var + epsilon_);
    work_d_[f] = inv;
    if (!batch) return;
    double r = 1.0, d = 0.0;
    if (renorm) renorm_correction(static_cast<size_t>(f), mean, var, r, d);
    call_r_[f] = r;
    call_d_[f] = d;
    const double as = adjust ? call_adj_scale_[f] : 1.0, ab = adjust ? call_adj_bias_[f] : 0.0;
    fold_normalize(pf, static_cast<size_t>(f), mean, gamma_[f] * as * r * inv, gamma_[f] * (as * d + ab) + beta_[f]);
  };
  // Without the batch statistics (mode flags), normalize with the moving ones as they were.
  if (!batch) refresh_inference_transform();
  const PerFeature<C>& used = batch ? pf : inference_constants<C>();
  const kernels::NormalizeArgs<T> norm{g,
                                       x,
                                       static_cast<T*>(io.y),
                                       used.center.data(),
                                       used.k1.data(),
                                       used.k2.data(),
                                       static_cast<const T*>(io.residual),
                                       config_.relu,
                                       stream_output<T>(plan)};

  if (plan.elements > 0) {
    if (grid.o_blocks == 1) {
      // Every block holds all rows of its features, so its statistics are final: normalize
      // it right away, while it is still in cache (x is read from memory once).
      executor_.for_blocks(grid.count(), [&](int64_t b) {
        const kernels::Block block = grid.block(g, b);
        k.stats(kernels::StatsArgs<T>{g, x, partial_a_.data(), partial_b_.data()}, block);
        const double count = grid.count_per_feature(g, 0);
        int64_t f0, f1;
        kernels::block_features(g, block, f0, f1);
        for (int64_t f = f0; f < f1; ++f) transform(f, partial_a_[f], std::max(0.0, partial_b_[f] / count));
        k.normalize(norm, block);
      });
    } else {
      // Per-block two-pass moments, Chan's merge in block order per feature, then normalize.
      executor_.for_blocks(grid.count(), [&](int64_t b) {
        const int64_t bo = b / grid.s_blocks;
        k.stats(kernels::StatsArgs<T>{g, x, partial_a_.data() + bo * c, partial_b_.data() + bo * c},
                grid.block(g, b));
      });
      executor_.for_blocks((c + kFeaturesPerTask - 1) / kFeaturesPerTask, [&](int64_t t) {
        const int64_t f1 = std::min(c, (t + 1) * kFeaturesPerTask);
        for (int64_t f = t * kFeaturesPerTask; f < f1; ++f) {
          kernels::Moments acc;
          for (int64_t bo = 0; bo < grid.o_blocks; ++bo) {
            kernels::merge_into(acc, grid.count_per_feature(g, bo), partial_a_[bo * c + f], partial_b_[bo * c + f]);
          }
          transform(f, acc.mean, std::max(0.0, acc.m2 / acc.count));
        }
      });
      const BlockGrid& sg = plan.stream_grid;
      executor_.for_blocks(sg.count(), [&](int64_t b) { k.normalize(norm, sg.block(g, b)); });
    }

    // Commit: nothing below can fail.
    if (!batch) {
      // The forward normalized with the moving statistics as they were: its backward needs
      // them, not the ones the update below writes.
      for (int64_t f = 0; f < c; ++f) {
        saved_center_[f] = moving_mean_[f];
        work_d_[f] = 1.0 / std::sqrt(moving_variance_[f] + epsilon_);
      }
    }
    if (mode_ & kUpdateMoving) update_moving_statistics(m);
    batch_mean_.swap(work_a_);
    batch_variance_.swap(work_b_);
    saved_inv_std_.swap(work_d_);
    have_batch_statistics_ = true;
    if (batch) {
      saved_r_.swap(call_r_);
      saved_d_.swap(call_d_);
      if (adjust) {
        saved_adj_scale_.swap(call_adj_scale_);
        saved_adj_bias_.swap(call_adj_bias_);
      } else {
        std::fill(saved_adj_scale_.begin(), saved_adj_scale_.end(), 1.0);
        std::fill(saved_adj_bias_.begin(), saved_adj_bias_.end(), 0.0);
      }
    }
    if (config_.relu) relu_constants<C>() = used;  // sizes match: copies, no allocation
  }
  // An empty batch normalizes nothing and leaves the statistics alone (Keras' rule for
  // zero-size inputs); it still has a (zero) gradient.
  saved_.valid = true;
  saved_.batch_statistics = batch;
  saved_.training_forward = true;
  saved_.residual = io.residual != nullptr;
  saved_.ghost = false;
  saved_.ndim = plan.ndim;
  std::copy(plan.shape, plan.shape + plan.ndim, saved_.shape);
}

// Moving statistics (SEMANTICS B.1/B.2) from the batch mean work_a_ and biased variance
// work_b_ over m values per feature: the fused path feeds the Bessel-corrected variance
// m/max(m-1,1) (TF's kernel form mu*v + (1-mu)*x); the non-fused path the biased one (Keras'
// v - (v - x)(1 - mu)). With renorm, renorm_mean/renorm_stddev follow renorm_momentum,
// moving_stddev follows momentum and moving_variance = relu(moving_stddev^2 - eps) is
// assigned. The variance override and the cumulative average (PyTorch momentum=None) are
// options beyond Keras. Each value is rounded to the parameter type, as Keras stores it.
void Layer::update_moving_statistics(int64_t m) {
  const bool bessel = config_.moving_variance == MovingVariance::unbiased ||
                      (config_.moving_variance == MovingVariance::automatic && fused_);
  const double correction = bessel ? static_cast<double>(m) / static_cast<double>(std::max<int64_t>(m - 1, 1)) : 1.0;
  ++updates_;
  const double mu = config_.momentum;
  const double wc = 1.0 / static_cast<double>(updates_);
  auto ema = [&](double& v, double value) {
    if (config_.cumulative_average) {
      v = round_param((1.0 - wc) * v + wc * value);
    } else if (fused_) {
      v = round_param(mu * v + (1.0 - mu) * value);  // TF's kernel form
    } else {
      v = round_param(v - (v - value) * (1.0 - mu));  // Keras' _assign_moving_average
    }
  };
  const double wr = 1.0 - config_.renorm.momentum;
  for (size_t f = 0; f < moving_mean_.size(); ++f) {
    const double mean = work_a_[f];
    const double var = work_b_[f] * correction;
    ema(moving_mean_[f], mean);
    if (config_.renorm.enabled) {
      const double stddev = std::sqrt(work_b_[f] + epsilon_);
      renorm_mean_[f] = round_param(renorm_mean_[f] - (renorm_mean_[f] - mean) * wr);
      renorm_stddev_[f] = round_param(renorm_stddev_[f] - (renorm_stddev_[f] - stddev) * wr);
      ema(moving_stddev_[f], std::sqrt(var + epsilon_));
      moving_variance_[f] = round_param(std::max(0.0, moving_stddev_[f] * moving_stddev_[f] - epsilon_));
    } else {
      ema(moving_variance_[f], var);
    }
  }
  inference_stale_ = true;
}

// ---------------------------------------------------------------------------
// Backward
//
// Training (per feature, m reduced elements, s = 1/sqrt(var_B + eps), xhat = (x - mean)*s,
// y = g*xhat + b; mean and var are differentiated through):
//   dx = g*s * (dy - mean(dy) - xhat * mean(dy*xhat))
//      = (g*s)*dy  +  (-g*s^3 * Sxc / m)*(x - mean)  +  (-g*s * Sdy / m)
//   with Sdy = sum dy and Sxc = sum dy*(x - mean);  dgamma = s*Sxc;  dbeta = Sdy.
// Inference (moving statistics are constants): dx = (g*s_mv)*dy, dgamma = s_mv * sum dy*(x - mm).
// Mixed precision (bf16/f16 x, dy): everything above is computed in float from the widened
// 16-bit values, and dx is rounded once to the 16-bit type; dgamma and dbeta are float.
// The kernels take the sums around c = C(mean) (C = Compute<T>: double for f64, float
// otherwise) and compute x - c in C; with delta = mean - c:
//   Sxc = sum dy*(x - c) - delta*Sdy,   k_x*(x - mean) + k_c = k_x*(x - c) + (k_c - k_x*delta).
void Layer::backward(const int64_t* shape, int32_t ndim, const BackwardIo& io) {
  Access exclusive(users_, true);
  check_shape(axes_, shape, ndim);
  if (!saved_.valid) {
    fail(Status::state, "there is no forward to differentiate: call bn_forward first (a bn_set_param since the "
                        "last forward also clears it)");
  }
  if (saved_.ndim != ndim || !std::equal(shape, shape + ndim, saved_.shape)) {
    fail(Status::state, "shape " + shape_text(shape, ndim) + " differs from the shape " +
                            shape_text(saved_.shape, saved_.ndim) + " of the most recent bn_forward");
  }
  if (config_.relu && saved_.residual && !io.y) {
    fail(Status::state, "the forward added a residual before the ReLU, so its mask needs that forward's output: "
                        "pass y to bn_backward_residual");
  }
  const bool param_grads = (io.dgamma || io.dbeta) && (mode_ & kParamGradients) && (config_.scale || config_.center);
  if (saved_.ghost) {
    with_element(config_.dtype, [&](auto e) { backward_ghost<decltype(e)>(ghost_, io, param_grads); });
  } else {
    const ShapePlan& plan = plan_for(shape, ndim);
    with_element(config_.dtype, [&](auto e) { backward_impl<decltype(e)>(plan, io, param_grads); });
  }
  // work_c_ holds dgamma, work_d_ dbeta (zero where the parameter is absent or frozen).
  std::vector<double>& dg = work_c_;
  std::vector<double>& db = work_d_;
  if (param_grads) {  // Keras adds the regularizers' gradients (B.8); absent parameters are zeroed below
    add_regularizer_gradient(config_.keras.gamma_regularizer, gamma_, dg);
    add_regularizer_gradient(config_.keras.beta_regularizer, beta_, db);
  }
  for (size_t f = 0; f < dg.size(); ++f) {
    dg[f] = param_grads && config_.scale ? round_param(dg[f]) : 0.0;
    db[f] = param_grads && config_.center ? round_param(db[f]) : 0.0;
  }
  if (io.dgamma) write_params(dg, io.dgamma);
  if (io.dbeta) write_params(db, io.dbeta);
}

// The ReLU mask of the saved forward: from its output when the caller passes it, else
// recomputed from x with the transform that forward used.
template <class T>
kernels::Gate<T> Layer::relu_gate(const BackwardIo& io) {
  kernels::Gate<T> gate;
  if (!config_.relu) return gate;
  if (io.y) {
    gate.y = static_cast<const T*>(io.y);
    return gate;
  }
  using C = kernels::Compute<T>;
  const PerFeature<C>& pf = saved_.training_forward ? relu_constants<C>() : inference_constants<C>();
  gate.z_center = pf.center.data();
  gate.z_scale = pf.k1.data();
  gate.z_shift = pf.k2.data();
  return gate;
}

template <class T>
void Layer::backward_impl(const ShapePlan& plan, const BackwardIo& io, bool param_grads) {
  const T* x = static_cast<const T*>(io.x);
  const T* dy = static_cast<const T*>(io.dy);
  T* dx = static_cast<T*>(io.dx);
  T* dresidual = static_cast<T*>(io.dresidual);
  const kernels::Gate<T> gate = relu_gate<T>(io);
  const int64_t c = axes_.features;
  const kernels::Geometry& g = plan.geometry;
  const BlockGrid& grid = plan.grid;
  const auto& k = kernels::selected<T>();
  const bool batch = saved_.batch_statistics;
  // Moving statistics saved by a training-path forward that normalized with them (mode flags).
  const bool snapshot = !batch && saved_.training_forward;
  const std::vector<double>& center = batch ? batch_mean_ : snapshot ? saved_center_ : moving_mean_;
  std::vector<double>& inv = work_b_;
  std::vector<double>& dgamma = work_c_;
  std::vector<double>& dbeta = work_d_;
  using C = kernels::Compute<T>;
  PerFeature<C>& pf = call_constants<C>();
  for (int64_t f = 0; f < c; ++f) {
    inv[f] = batch || snapshot ? saved_inv_std_[f] : 1.0 / std::sqrt(moving_variance_[f] + epsilon_);
    pf.center[f] = static_cast<C>(center[f]);
    dgamma[f] = 0.0;
    dbeta[f] = 0.0;
  }
  if (plan.elements == 0) return;
  const double m = static_cast<double>(plan.per_feature);
  // From the sums of feature f (taken around pf.center): parameter gradients and dx constants.
  // With the batch statistics, y = g*(a_s*(r*xhat + d) + a_b) + b with r, d, a_s, a_b constants:
  // dx as above with g*a_s*r for g; dgamma = a_s*r*s*Sxc + (a_s*d + a_b)*Sdy.
  auto coefficients = [&](int64_t f, double sdy, double sxc_c) {
    const double delta = center[f] - static_cast<double>(pf.center[f]);
    const double sxc = sxc_c - delta * sdy;
    const double r = batch ? saved_r_[f] : 1.0, d = batch ? saved_d_[f] : 0.0;
    const double as = batch ? saved_adj_scale_[f] : 1.0, ab = batch ? saved_adj_bias_[f] : 0.0;
    dgamma[f] = as * r * inv[f] * sxc + (as * d + ab) * sdy;
    dbeta[f] = sdy;
    const double k_dy = gamma_[f] * as * r * inv[f];
    const double k_x = batch ? -(k_dy * inv[f] * inv[f] * sxc) / m : 0.0;
    const double k_c = batch ? -(k_dy * sdy) / m : 0.0;
    pf.k1[f] = static_cast<C>(k_dy);
    pf.k2[f] = static_cast<C>(k_x);
    pf.k3[f] = static_cast<C>(k_c - k_x * delta);
  };
  const kernels::BackwardSumsArgs<T> sums{g, x, dy, pf.center.data(), partial_a_.data(), partial_b_.data(), gate};
  const kernels::BackwardDxArgs<T> dx_args{g,           x,           dy,          dx,   pf.center.data(),
                                           pf.k1.data(), pf.k2.data(), pf.k3.data(), gate, dresidual,
                                           stream_output<T>(plan)};
  const bool elementwise = dx || dresidual;

  if (!batch && !param_grads) {
    // Inference without parameter gradients: dx = (g*s_mv)*dy needs no reduction.
    for (int64_t f = 0; f < c; ++f) coefficients(f, 0.0, 0.0);
    const BlockGrid& sg = plan.stream_grid;
    if (elementwise) executor_.for_blocks(sg.count(), [&](int64_t b) { k.backward_dx(dx_args, sg.block(g, b)); });
    return;
  }
  if (grid.o_blocks == 1) {
    // Blocks hold all rows of their features: sums, constants and dx while x and dy are in cache.
    executor_.for_blocks(grid.count(), [&](int64_t b) {
      const kernels::Block block = grid.block(g, b);
      k.backward_sums(sums, block);
      int64_t f0, f1;
      kernels::block_features(g, block, f0, f1);
      for (int64_t f = f0; f < f1; ++f) coefficients(f, partial_a_[f], partial_b_[f]);
      if (elementwise) k.backward_dx(dx_args, block);
    });
    return;
  }
  executor_.for_blocks(grid.count(), [&](int64_t b) {
    const int64_t bo = b / grid.s_blocks;
    kernels::BackwardSumsArgs<T> args = sums;
    args.sum_dy = partial_a_.data() + bo * c;
    args.sum_dyxc = partial_b_.data() + bo * c;
    k.backward_sums(args, grid.block(g, b));
  });
  executor_.for_blocks((c + kFeaturesPerTask - 1) / kFeaturesPerTask, [&](int64_t t) {
    const int64_t f1 = std::min(c, (t + 1) * kFeaturesPerTask);
    for (int64_t f = t * kFeaturesPerTask; f < f1; ++f) {
      double a = 0.0, b = 0.0;
      for (int64_t bo = 0; bo < grid.o_blocks; ++bo) {
        a += partial_a_[bo * c + f];
        b += partial_b_[bo * c + f];
      }
      coefficients(f, a, b);
    }
  });
  const BlockGrid& sg = plan.stream_grid;
  if (elementwise) executor_.for_blocks(sg.count(), [&](int64_t b) { k.backward_dx(dx_args, sg.block(g, b)); });
}

// ---------------------------------------------------------------------------
// Ghost batches (SEMANTICS B.3)
//
// Keras reshapes a training batch of N = vbs*G samples to (vbs, G, ...) and reduces over axis 0
// and the other reduced axes: ghost j is samples {j, j+G, j+2G, ...}. That reshape is a view
// of the same memory, so the kernels run on it with G as one more kept axis (features G*C,
// f' = j*C + f): per-ghost statistics normalize each ghost; the moving statistics (and renorm's
// r, d) use the plain average over ghosts of their means and biased variances; the backward
// reduces per ghost and sums the parameter gradients over ghosts.
Layer::Ghost& Layer::ghost_for(const int64_t* shape, int32_t ndim) {
  const int64_t n = shape[0], vbs = config_.virtual_batch_size;
  if (n % vbs != 0) {
    fail(Status::shape, "virtual_batch_size=" + std::to_string(vbs) + " does not divide the batch size shape[0]=" +
                            std::to_string(n));
  }
  if (ghost_.valid && ghost_.ndim == ndim && std::equal(shape, shape + ndim, ghost_.shape)) return ghost_;
  int64_t vshape[kMaxRank];
  vshape[0] = vbs;
  vshape[1] = n / vbs;
  std::copy(shape + 1, shape + ndim, vshape + 2);
  std::vector<int32_t> vaxes{1};
  for (int32_t d = 1; d < ndim; ++d) {
    if (axes_.kept[d]) vaxes.push_back(d + 1);
  }
  Ghost gh;
  const AxisPlan vplan = resolve_axes(vaxes, vshape, ndim + 1);
  gh.plan = plan_shape(vplan, vshape, ndim + 1);
  const auto f = static_cast<size_t>(gh.plan.geometry.features);
  const size_t rows = static_cast<size_t>(gh.plan.grid.o_blocks) * f;
  for (auto* v : {&gh.mean, &gh.var, &gh.inv, &gh.sum_dy, &gh.sum_dyxc}) v->assign(f, 0.0);
  gh.partial_a.assign(rows, 0.0);
  gh.partial_b.assign(rows, 0.0);
  if (config_.dtype == DType::f64) {
    gh.fwd_f64.resize(f);
    gh.call_f64.resize(f);
  } else {
    gh.fwd_f32.resize(f);
    gh.call_f32.resize(f);
  }
  gh.ndim = ndim;
  std::copy(shape, shape + ndim, gh.shape);
  gh.valid = true;
  // Replacing the plan drops the saved forward's ghost statistics: invalidate it if it was
  // a ghost forward (this call will save its own).
  if (saved_.ghost) saved_.valid = false;
  ghost_ = std::move(gh);
  return ghost_;
}

template <class T>
void Layer::forward_ghost(Ghost& gh, const ForwardIo& io) {
  const ShapePlan& plan = gh.plan;
  const int64_t m = plan.per_feature;  // values per ghost and feature
  if (m == 1 && config_.single_value == SingleValue::reject) {
    fail(Status::shape, "training needs more than one value per feature and ghost batch (single-value policy "
                        "REJECT); each ghost batch has 1");
  }
  const kernels::Geometry& g = plan.geometry;
  const BlockGrid& grid = plan.grid;
  const int64_t fv = g.features, c = axes_.features, ghosts = fv / c;
  const auto& k = kernels::selected<T>();
  const T* x = static_cast<const T*>(io.x);
  using C = kernels::Compute<T>;
  PerFeature<C>& pf = of_type<C>(gh.fwd_f32, gh.fwd_f64);
  // Per-ghost moments, merged over blocks in block order.
  executor_.for_blocks(grid.count(), [&](int64_t b) {
    const int64_t bo = b / grid.s_blocks;
    k.stats(kernels::StatsArgs<T>{g, x, gh.partial_a.data() + bo * fv, gh.partial_b.data() + bo * fv}, grid.block(g, b));
  });
  for (int64_t f = 0; f < fv; ++f) {
    kernels::Moments acc;
    for (int64_t bo = 0; bo < grid.o_blocks; ++bo) {
      kernels::merge_into(acc, grid.count_per_feature(g, bo), gh.partial_a[bo * fv + f], gh.partial_b[bo * fv + f]);
    }
    gh.mean[f] = acc.mean;
    gh.var[f] = std::max(0.0, acc.m2 / acc.count);
    gh.inv[f] = 1.0 / std::sqrt(gh.var[f] + epsilon_);
  }
  // The plain average over ghosts (B.3), for the moving statistics and renorm.
  for (int64_t f = 0; f < c; ++f) {
    double mean = 0.0, var = 0.0;
    for (int64_t j = 0; j < ghosts; ++j) {
      mean += gh.mean[j * c + f];
      var += gh.var[j * c + f];
    }
    work_a_[f] = mean / static_cast<double>(ghosts);
    work_b_[f] = var / static_cast<double>(ghosts);
    work_d_[f] = 1.0 / std::sqrt(work_b_[f] + epsilon_);
    double r = 1.0, d = 0.0;
    if (config_.renorm.enabled) renorm_correction(static_cast<size_t>(f), work_a_[f], work_b_[f], r, d);
    call_r_[f] = r;
    call_d_[f] = d;
  }
  // Normalize each ghost with its own statistics (r, d shared), or, without the batch
  // statistics (mode flags), every ghost with the moving statistics as they were.
  const bool batch = uses_batch_statistics();
  if (!batch) refresh_inference_transform();
  const PerFeature<C>& infer = inference_constants<C>();
  for (int64_t j = 0; j < ghosts; ++j) {
    for (int64_t f = 0; f < c; ++f) {
      const auto v = static_cast<size_t>(j * c + f);
      if (batch) {
        fold_normalize(pf, v, gh.mean[v], gamma_[f] * call_r_[f] * gh.inv[v], gamma_[f] * call_d_[f] + beta_[f]);
      } else {
        pf.center[v] = infer.center[f];
        pf.k1[v] = infer.k1[f];
        pf.k2[v] = infer.k2[f];
      }
    }
  }
  const kernels::NormalizeArgs<T> norm{g,           x,           static_cast<T*>(io.y), pf.center.data(),
                                       pf.k1.data(), pf.k2.data(), static_cast<const T*>(io.residual),
                                       config_.relu, stream_output<T>(plan)};
  executor_.for_blocks(grid.count(), [&](int64_t b) { k.normalize(norm, grid.block(g, b)); });

  // Commit: nothing below can fail.
  if (!batch) {
    // Normalized with the moving statistics as they were: the plain backward (inference
    // formula) differentiates it, with these.
    for (int64_t f = 0; f < c; ++f) {
      saved_center_[f] = moving_mean_[f];
      saved_inv_std_[f] = 1.0 / std::sqrt(moving_variance_[f] + epsilon_);
    }
  }
  if (mode_ & kUpdateMoving) update_moving_statistics(m);
  std::copy(work_a_.begin(), work_a_.end(), batch_mean_.begin());
  std::copy(work_b_.begin(), work_b_.end(), batch_variance_.begin());
  have_batch_statistics_ = true;
  if (batch) {
    saved_r_.swap(call_r_);
    saved_d_.swap(call_d_);
    std::fill(saved_adj_scale_.begin(), saved_adj_scale_.end(), 1.0);
    std::fill(saved_adj_bias_.begin(), saved_adj_bias_.end(), 0.0);
  }
  if (config_.relu && !batch) relu_constants<C>() = infer;
  saved_.valid = true;
  saved_.batch_statistics = batch;
  saved_.training_forward = true;
  saved_.residual = io.residual != nullptr;
  saved_.ghost = batch;
  saved_.ndim = gh.ndim;
  std::copy(gh.shape, gh.shape + gh.ndim, saved_.shape);
}

template <class T>
void Layer::backward_ghost(Ghost& gh, const BackwardIo& io, bool param_grads) {
  (void)param_grads;
  const ShapePlan& plan = gh.plan;
  const kernels::Geometry& g = plan.geometry;
  const BlockGrid& grid = plan.grid;
  const int64_t fv = g.features, c = axes_.features, ghosts = fv / c;
  const auto& k = kernels::selected<T>();
  const T* x = static_cast<const T*>(io.x);
  const T* dy = static_cast<const T*>(io.dy);
  using C = kernels::Compute<T>;
  PerFeature<C>& fwd = of_type<C>(gh.fwd_f32, gh.fwd_f64);
  PerFeature<C>& pf = of_type<C>(gh.call_f32, gh.call_f64);
  kernels::Gate<T> gate;
  if (config_.relu) {
    if (io.y) {
      gate.y = static_cast<const T*>(io.y);
    } else {
      gate.z_center = fwd.center.data();
      gate.z_scale = fwd.k1.data();
      gate.z_shift = fwd.k2.data();
    }
  }
  for (int64_t v = 0; v < fv; ++v) pf.center[v] = static_cast<C>(gh.mean[v]);
  executor_.for_blocks(grid.count(), [&](int64_t b) {
    const int64_t bo = b / grid.s_blocks;
    kernels::BackwardSumsArgs<T> args{g, x, dy, pf.center.data(), gh.partial_a.data() + bo * fv,
                                      gh.partial_b.data() + bo * fv, gate};
    k.backward_sums(args, grid.block(g, b));
  });
  const double m = static_cast<double>(plan.per_feature);
  std::fill(work_c_.begin(), work_c_.end(), 0.0);
  std::fill(work_d_.begin(), work_d_.end(), 0.0);
  // Per ghost and feature as backward_impl, with g*r for g; parameter gradients summed over
  // ghosts in ghost order: dgamma = sum_j (r*s_j*Sxc_j + d*Sdy_j), dbeta = sum_j Sdy_j.
  for (int64_t j = 0; j < ghosts; ++j) {
    for (int64_t f = 0; f < c; ++f) {
      const int64_t v = j * c + f;
      double sdy = 0.0, sxc_c = 0.0;
      for (int64_t bo = 0; bo < grid.o_blocks; ++bo) {
        sdy += gh.partial_a[bo * fv + v];
        sxc_c += gh.partial_b[bo * fv + v];
      }
      const double delta = gh.mean[v] - static_cast<double>(pf.center[v]);
      const double sxc = sxc_c - delta * sdy;
      const double inv = gh.inv[v], r = saved_r_[f], d = saved_d_[f];
      work_c_[f] += r * inv * sxc + d * sdy;
      work_d_[f] += sdy;
      const double k_dy = gamma_[f] * r * inv;
      const double k_x = -(k_dy * inv * inv * sxc) / m;
      const double k_c = -(k_dy * sdy) / m;
      pf.k1[v] = static_cast<C>(k_dy);
      pf.k2[v] = static_cast<C>(k_x);
      pf.k3[v] = static_cast<C>(k_c - k_x * delta);
    }
  }
  T* dx = static_cast<T*>(io.dx);
  T* dresidual = static_cast<T*>(io.dresidual);
  if (dx || dresidual) {
    const kernels::BackwardDxArgs<T> args{g,           x,           dy,          dx,   pf.center.data(),
                                          pf.k1.data(), pf.k2.data(), pf.k3.data(), gate, dresidual,
                                          stream_output<T>(plan)};
    executor_.for_blocks(grid.count(), [&](int64_t b) { k.backward_dx(args, grid.block(g, b)); });
  }
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
