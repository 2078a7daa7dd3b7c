// The reference model. Every formula cites the SEMANTICS.md section it comes from; the
// code favours obviousness over speed (plain loops over the whole tensor, long double).
#include "reference.hpp"

#include <cmath>
#include <optional>
#include <sstream>

namespace bn_test {
namespace {

using Real = long double;

// The magnitude behind a batch mean in the tolerance budgets: |mean| + sqrt(var). An
// implementation's mean is only as accurate as the data's spread allows (x - mean cancels;
// the SIMD kernels sum x - x0 in float), so x - mean carries an error relative to this, not
// to |mean|, which may be ~0.
Real spread(Real mean, Real var) { return std::fabs(mean) + std::sqrt(var); }

const char* fused_name(RefFused f) {
  switch (f) {
    case RefFused::automatic: return "AUTO";
    case RefFused::on: return "ON";
    case RefFused::off: return "OFF";
  }
  return "?";
}

const char* mv_name(RefMovingVariance v) {
  switch (v) {
    case RefMovingVariance::automatic: return "AUTO";
    case RefMovingVariance::biased: return "BIASED";
    case RefMovingVariance::unbiased: return "UNBIASED";
  }
  return "?";
}

// Keras 2 `_raise_if_fused_cannot_be_used`: "" when fused can be used with this axis list,
// dtype and options, else the reason. Note it looks at whatever list it is given: the axes as
// passed to __init__ (V2) or the list validate_axis produced in build() (V1).
std::string fused_obstacle(const std::vector<int>& axis, const RefConfig& cfg) {
  if (cfg.renorm.enabled) return "fused is not supported with renorm";
  if (axis.size() > 1) return "fused needs a single axis";
  const int a = axis[0];
  if (!(a == -4 || a == -3 || a == -1 || a == 1 || a == 3 || a == 4)) {
    return "axis " + std::to_string(a) + " is not in (-4, -3, -1, 1, 3, 4)";
  }
  if (cfg.virtual_batch_size > 0) return "fused is not supported with virtual_batch_size";
  if (cfg.adjustment) return "fused is not supported with adjustment";
  if (cfg.dtype == RefDtype::f64) return "fused needs float16/bfloat16/float32";
  return "";
}

}  // namespace

std::string describe_shape(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

std::string describe(const RefConfig& c) {
  std::ostringstream s;
  s.precision(17);
  s << "axes={";
  for (size_t i = 0; i < c.axes.size(); ++i) s << (i ? "," : "") << c.axes[i];
  s << "} momentum=" << c.momentum << " epsilon=" << c.epsilon << " center=" << c.center
    << " scale=" << c.scale << " fused=" << fused_name(c.fused)
    << " rules=" << (c.rules == RefRules::v1 ? "V1" : "V2") << " trainable=" << c.trainable
    << " moving_variance=" << mv_name(c.moving_variance) << " cumulative=" << c.cumulative_average
    << " reject_single=" << c.reject_single_value << " dtype=" << (c.dtype == RefDtype::f32 ? "f32" : "f64");
  if (c.renorm.enabled) {
    s << " renorm(rmax=" << c.renorm.rmax << " rmin=" << c.renorm.rmin << " dmax=" << c.renorm.dmax
      << " momentum=" << c.renorm.momentum << ")";
  }
  if (c.virtual_batch_size > 0) s << " virtual_batch_size=" << c.virtual_batch_size;
  if (c.adjustment) s << " adjustment";
  return s.str();
}

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

double round_to(double v, RefDtype dtype) {
  return dtype == RefDtype::f32 ? static_cast<double>(static_cast<float>(v)) : v;
}

std::vector<int> validate_axes(const std::vector<int>& axes, int rank) {
  if (axes.empty()) throw KerasRefusal("no axis given");
  std::vector<int> resolved;
  for (int a : axes) {
    if (a < -rank || a >= rank) {
      throw KerasRefusal("axis " + std::to_string(a) + " out of range for rank " + std::to_string(rank));
    }
    const int r = a < 0 ? a + rank : a;
    for (int seen : resolved) {
      if (seen == r) throw KerasRefusal("duplicate axis " + std::to_string(a));
    }
    resolved.push_back(r);
  }
  return resolved;
}

// SEMANTICS B.1 "How the path is chosen", step by step as Keras 2 runs it.
FusedDecision keras_fused_decision(const RefConfig& cfg, int rank) {
  FusedDecision d;
  auto refuse = [&](const std::string& why) {
    d.refused = true;
    d.fused = false;
    d.reason = why;
    return d;
  };
  const bool v2 = cfg.rules == RefRules::v2;

  // __init__: fused is None, True or False.
  std::optional<bool> fused;
  if (cfg.fused == RefFused::on) fused = true;
  if (cfg.fused == RefFused::off) fused = false;
  if (v2) {
    const std::string obstacle = fused_obstacle(cfg.axes, cfg);  // the axes as given
    if (fused == std::optional<bool>(true)) {
      if (!obstacle.empty()) return refuse("V2 fused=True: " + obstacle);
    } else if (!fused.has_value() && !obstacle.empty()) {
      fused = false;
    }
  } else if (!fused.has_value()) {
    fused = true;  // V1: None means "prefer fused"
  }

  // build(): validate_axis first, then the rank rule.
  std::vector<int> axis;
  try {
    axis = validate_axes(cfg.axes, rank);
  } catch (const KerasRefusal& e) {
    return refuse(e.what());
  }
  const bool rank45 = rank == 4 || rank == 5;
  if (!fused.has_value() || *fused) {
    if (v2) {
      if (!fused.has_value()) {
        fused = rank45;
      } else if (!rank45) {
        return refuse("V2 fused=True needs a 4D or 5D input");
      }
    } else {
      fused = rank45 && fused_obstacle(axis, cfg).empty();  // V1: the normalized axes
    }
  }
  if (*fused) {
    const int a = axis.size() == 1 ? axis[0] : -1;
    if ((a == 1 && rank45) || (a == 3 && rank == 4) || (a == 4 && rank == 5)) {
      d.fused = true;  // NCHW, NCDHW, NHWC, NDHWC
    } else if (rank == 5) {
      d.fused = false;  // unsupported axis on 5D: silently non-fused
    } else {
      return refuse("Unsupported axis for fused on a 4D input");
    }
  }
  return d;
}

// ---------------------------------------------------------------------------
std::vector<int64_t> feature_index_map(const std::vector<int64_t>& shape, const std::vector<bool>& kept) {
  const int64_t n = element_count(shape);
  const size_t rank = shape.size();
  std::vector<int64_t> map(static_cast<size_t>(n));
  std::vector<int64_t> idx(rank, 0);
  for (int64_t e = 0; e < n; ++e) {
    int64_t f = 0;
    for (size_t d = 0; d < rank; ++d) {
      if (kept[d]) f = f * shape[d] + idx[d];
    }
    map[static_cast<size_t>(e)] = f;
    for (size_t d = rank; d-- > 0;) {  // odometer: last dim fastest (row-major)
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return map;
}

void two_pass_moments(const std::vector<double>& x, const std::vector<int64_t>& feature, int64_t features,
                      std::vector<long double>& mean, std::vector<long double>& variance,
                      std::vector<int64_t>& count) {
  const auto c = static_cast<size_t>(features);
  mean.assign(c, 0.0L);
  variance.assign(c, 0.0L);
  count.assign(c, 0);
  for (size_t i = 0; i < x.size(); ++i) {
    const auto f = static_cast<size_t>(feature[i]);
    mean[f] += x[i];
    ++count[f];
  }
  for (size_t f = 0; f < c; ++f) {
    if (count[f] > 0) mean[f] /= static_cast<Real>(count[f]);
  }
  for (size_t i = 0; i < x.size(); ++i) {
    const auto f = static_cast<size_t>(feature[i]);
    const Real d = static_cast<Real>(x[i]) - mean[f];
    variance[f] += d * d;
  }
  for (size_t f = 0; f < c; ++f) {
    if (count[f] > 0) variance[f] /= static_cast<Real>(count[f]);  // biased: divide by m
  }
}


// ---------------------------------------------------------------------------
RefLayer::RefLayer(const RefConfig& cfg, const std::vector<int64_t>& input_shape) : cfg_(cfg) {
  rank_ = static_cast<int>(input_shape.size());
  if (rank_ < 1 || rank_ > 8) throw KerasRefusal("rank must be 1 to 8");
  if (!(cfg.momentum >= 0.0 && cfg.momentum <= 1.0)) throw KerasRefusal("momentum outside [0, 1]");
  if (!std::isfinite(cfg.epsilon) || cfg.epsilon < 0) throw KerasRefusal("epsilon must be finite and >= 0");
  for (int64_t s : input_shape) {
    if (s < 0) throw KerasRefusal("negative size");
  }
  if (cfg.renorm.enabled) {  // Keras 3's checks of renorm_clipping (Keras 2 has none)
    const RefRenorm& r = cfg.renorm;
    if (!(r.rmin >= 0.0 && std::isfinite(r.rmin))) throw KerasRefusal("rmin must be finite and >= 0");
    if (!(r.rmax >= r.rmin)) throw KerasRefusal("rmax must be >= rmin");
    if (!(r.dmax >= 0.0)) throw KerasRefusal("dmax must be >= 0");
    if (!(r.momentum >= 0.0 && r.momentum <= 1.0)) throw KerasRefusal("renorm_momentum outside [0, 1]");
  }
  if (cfg.virtual_batch_size < 0) throw KerasRefusal("virtual_batch_size must be positive");
  const std::vector<int> axis = validate_axes(cfg.axes, rank_);
  kept_.assign(static_cast<size_t>(rank_), false);
  kept_sizes_.assign(static_cast<size_t>(rank_), 0);
  features_ = 1;
  for (int a : axis) {
    if (input_shape[a] < 1) throw KerasRefusal("a kept axis has size 0 (undefined axis dimension)");
    kept_[a] = true;
    kept_sizes_[a] = input_shape[a];
    features_ *= input_shape[a];
  }
  if (cfg.virtual_batch_size > 0) {  // B.3, Keras 2 build()
    if (kept_[0]) throw KerasRefusal("virtual_batch_size cannot be used with axis 0");
    if (cfg.adjustment) throw KerasRefusal("virtual_batch_size cannot be used with adjustment");
  }
  const FusedDecision d = keras_fused_decision(cfg, rank_);
  if (d.refused) throw KerasRefusal(d.reason);
  fused_ = d.fused;
  const auto c = static_cast<size_t>(features_);
  gamma_.assign(c, 1.0);  // Keras initializers (B.6)
  beta_.assign(c, 0.0);
  moving_mean_.assign(c, 0.0);
  moving_variance_.assign(c, 1.0);
  // B.2: the renorm variables start from the moving initializers: renorm_mean at the moving
  // mean's (0), renorm_stddev and moving_stddev at sqrt of the moving variance's (sqrt(1)).
  if (cfg.renorm.enabled) {
    renorm_mean_.assign(c, 0.0);
    renorm_stddev_.assign(c, 1.0);
    moving_stddev_.assign(c, 1.0);
  }
  adj_scale_.assign(c, 1.0);
  adj_bias_.assign(c, 0.0);
  saved_r_.assign(c, 1.0);
  saved_d_.assign(c, 0.0);
  saved_d_mag_.assign(c, 0.0);
  saved_adj_scale_.assign(c, 1.0);
  saved_adj_bias_.assign(c, 0.0);
  saved_moving_mean_ = moving_mean_;
  saved_moving_variance_ = moving_variance_;
}

int RefLayer::mode() const {
  if (mode_override_.has_value()) return *mode_override_;
  // The Keras presets (B.5): training uses and updates the batch statistics, except that a
  // frozen layer under the V2 rules runs in inference mode; gamma/beta train when trainable.
  int m = 0;
  const bool v2_frozen = cfg_.rules == RefRules::v2 && !cfg_.trainable;
  if (training_ && !v2_frozen) m |= kModeBatchStatistics | kModeUpdateMoving;
  if (cfg_.trainable) m |= kModeParamGradients;
  return m;
}

double RefLayer::store(double v) const { return round_to(v, cfg_.dtype); }

void RefLayer::set_gamma(const std::vector<double>& v) {
  if (!cfg_.scale) throw std::logic_error("the layer has no gamma");
  for (size_t i = 0; i < v.size(); ++i) gamma_.at(i) = store(v[i]);
}
void RefLayer::set_beta(const std::vector<double>& v) {
  if (!cfg_.center) throw std::logic_error("the layer has no beta");
  for (size_t i = 0; i < v.size(); ++i) beta_.at(i) = store(v[i]);
}
void RefLayer::set_moving_mean(const std::vector<double>& v) {
  for (size_t i = 0; i < v.size(); ++i) moving_mean_.at(i) = store(v[i]);
}
void RefLayer::set_moving_variance(const std::vector<double>& v) {
  for (size_t i = 0; i < v.size(); ++i) moving_variance_.at(i) = store(v[i]);
}
void RefLayer::set_renorm_mean(const std::vector<double>& v) {
  if (!cfg_.renorm.enabled) throw std::logic_error("the layer has no renorm");
  for (size_t i = 0; i < v.size(); ++i) renorm_mean_.at(i) = store(v[i]);
}
void RefLayer::set_renorm_stddev(const std::vector<double>& v) {
  if (!cfg_.renorm.enabled) throw std::logic_error("the layer has no renorm");
  for (size_t i = 0; i < v.size(); ++i) renorm_stddev_.at(i) = store(v[i]);
}
void RefLayer::set_moving_stddev(const std::vector<double>& v) {
  if (!cfg_.renorm.enabled) throw std::logic_error("the layer has no renorm");
  for (size_t i = 0; i < v.size(); ++i) moving_stddev_.at(i) = store(v[i]);
}

void RefLayer::set_renorm_clipping(double rmax, double rmin, double dmax) {
  cfg_.renorm.rmax = rmax;
  cfg_.renorm.rmin = rmin;
  cfg_.renorm.dmax = dmax;
}

void RefLayer::set_adjustment(const std::vector<double>& scale, const std::vector<double>& bias) {
  if (scale.size() != adj_scale_.size() || bias.size() != adj_bias_.size()) {
    throw std::logic_error("reference: adjustment needs one scale and one bias per feature");
  }
  adj_scale_ = scale;
  adj_bias_ = bias;
}

void RefLayer::check_shape(const std::vector<int64_t>& shape) const {
  if (static_cast<int>(shape.size()) != rank_) throw std::logic_error("reference: rank differs from build");
  for (int d = 0; d < rank_; ++d) {
    if (kept_[d] && shape[d] != kept_sizes_[d]) throw std::logic_error("reference: kept size differs from build");
  }
}

std::vector<int64_t> RefLayer::feature_map(const std::vector<int64_t>& shape) const {
  check_shape(shape);
  return feature_index_map(shape, kept_);
}

// B.3: Keras reshapes x of shape (N, ...) to (vbs, G, ...) with G = N/vbs, so sample n lands
// at [n / G][n % G], and ghost batch j (index j along the new axis 1, the one that is kept)
// holds the samples j, j + G, j + 2G, ...: strided, not contiguous. Without ghost batches the
// whole batch is one group per feature.
std::vector<int64_t> RefLayer::group_map(const std::vector<int64_t>& shape, int64_t& ghosts) const {
  std::vector<int64_t> map = feature_map(shape);
  ghosts = 1;
  if (cfg_.virtual_batch_size <= 0) return map;
  const int64_t vbs = cfg_.virtual_batch_size;
  if (shape[0] % vbs != 0) throw std::logic_error("reference: N is not a multiple of virtual_batch_size");
  ghosts = shape[0] / vbs;
  if (map.empty()) return map;
  const int64_t per_sample = element_count(shape) / shape[0];
  for (size_t e = 0; e < map.size(); ++e) {
    const int64_t sample = static_cast<int64_t>(e) / per_sample;  // index along axis 0
    const int64_t ghost = sample % ghosts;
    map[e] = ghost * features_ + map[e];
  }
  return map;
}

// B.1-B.5 and A.9. With the batch statistics (BN_MODE_BATCH_STATISTICS):
//   y = g*(a_s*(r*xhat + d) + a_b) + b,  xhat = (x - mean_group)/sqrt(var_group + eps_n),
// the group being the (ghost) batch of the element's feature. Otherwise the moving statistics
// as they are now normalize. With BN_MODE_UPDATE_MOVING the moving (and renorm) statistics
// then move towards the batch's (ghost-averaged) statistics.
RefForward RefLayer::forward(const std::vector<int64_t>& shape, const std::vector<double>& x) {
  const std::vector<int64_t> fmap = feature_map(shape);
  const size_t n = x.size();
  if (static_cast<int64_t>(n) != element_count(shape)) throw std::logic_error("reference: x size");
  const Real eps = effective_epsilon();
  const auto c = static_cast<size_t>(features_);
  const int flags = mode();
  const bool batch = (flags & kModeBatchStatistics) != 0;
  const bool update = (flags & kModeUpdateMoving) != 0;
  const bool stats = batch || update;  // the batch statistics are computed
  RefForward out;
  out.y.assign(n, 0.0);
  out.y_mag.assign(n, 0.0);
  auto g_of = [&](size_t f) -> Real { return cfg_.scale ? gamma_[f] : 1.0; };
  auto b_of = [&](size_t f) -> Real { return cfg_.center ? beta_[f] : 0.0; };

  // Refusals first: a refused call changes nothing.
  if (stats && n > 0 && static_cast<int64_t>(n) / features_ == 1 && cfg_.reject_single_value) {
    throw ShapeRefusal("one value per feature in training (REJECT)");
  }
  if (stats && cfg_.virtual_batch_size > 0 && shape[0] % cfg_.virtual_batch_size != 0) {
    throw ShapeRefusal("the batch is not a multiple of virtual_batch_size");
  }
  if (batch && cfg_.adjustment) ++adjustment_calls_;  // Keras calls it on every training call

  last_forward_batch_ = batch;
  saved_moving_mean_ = moving_mean_;
  saved_moving_variance_ = moving_variance_;
  if (!batch) {
    for (size_t i = 0; i < n; ++i) {
      const auto f = static_cast<size_t>(fmap[i]);
      const Real s = 1.0L / std::sqrt(static_cast<Real>(moving_variance_[f]) + eps);
      out.y[i] = static_cast<double>(g_of(f) * (x[i] - static_cast<Real>(moving_mean_[f])) * s + b_of(f));
      out.y_mag[i] = static_cast<double>(std::fabs(g_of(f)) * s * (std::fabs(x[i]) + std::fabs(moving_mean_[f])) +
                                         std::fabs(b_of(f)));
    }
  }
  if (!stats || n == 0) return out;  // an empty batch normalizes nothing and changes no statistic

  int64_t ghosts = 1;
  const std::vector<int64_t> gmap = group_map(shape, ghosts);
  std::vector<Real> gmean, gvar;
  std::vector<int64_t> gcount;
  two_pass_moments(x, gmap, ghosts * features_, gmean, gvar, gcount);
  // The statistics renorm and the moving averages see: the plain average over the ghost
  // batches of their means and biased variances (B.3); one ghost = the whole batch.
  std::vector<Real> mean(c, 0.0L), var(c, 0.0L);
  for (size_t j = 0; j < static_cast<size_t>(ghosts); ++j) {
    for (size_t f = 0; f < c; ++f) {
      mean[f] += gmean[j * c + f];
      var[f] += gvar[j * c + f];
    }
  }
  for (size_t f = 0; f < c; ++f) {
    mean[f] /= static_cast<Real>(ghosts);
    var[f] /= static_cast<Real>(ghosts);
  }

  if (batch) {
    // B.2: r and d from the renorm statistics as they were before this call, clipped.
    std::vector<Real> r(c, 1.0L), d(c, 0.0L), d_mag(c, 0.0L);
    if (cfg_.renorm.enabled) {
      const RefRenorm& rn = cfg_.renorm;
      for (size_t f = 0; f < c; ++f) {
        const Real stddev = std::sqrt(var[f] + eps);  // eps inside
        const Real rs = std::max(static_cast<Real>(renorm_stddev_[f]), std::sqrt(eps));
        Real rr = stddev / rs;
        Real dd = (mean[f] - static_cast<Real>(renorm_mean_[f])) / rs;
        rr = std::max(rr, static_cast<Real>(rn.rmin));
        rr = std::min(rr, static_cast<Real>(rn.rmax));
        dd = std::max(dd, -static_cast<Real>(rn.dmax));
        dd = std::min(dd, static_cast<Real>(rn.dmax));
        r[f] = rr;
        d[f] = dd;
        d_mag[f] = (spread(mean[f], var[f]) + std::fabs(static_cast<Real>(renorm_mean_[f]))) / rs;
      }
    }
    // B.4: the adjustment, inside gamma/beta and outside the renorm correction.
    std::vector<Real> as(c, 1.0L), ab(c, 0.0L);
    if (cfg_.adjustment) {
      for (size_t f = 0; f < c; ++f) {
        as[f] = adj_scale_[f];
        ab[f] = adj_bias_[f];
      }
    }
    for (size_t i = 0; i < n; ++i) {
      const auto f = static_cast<size_t>(fmap[i]);
      const auto k = static_cast<size_t>(gmap[i]);
      const Real s = 1.0L / std::sqrt(gvar[k] + eps);
      const Real xhat = (x[i] - gmean[k]) * s;
      out.y[i] = static_cast<double>(g_of(f) * (as[f] * (r[f] * xhat + d[f]) + ab[f]) + b_of(f));
      out.y_mag[i] = static_cast<double>(
          std::fabs(g_of(f)) *
              (std::fabs(as[f]) * (std::fabs(r[f]) * s * (std::fabs(x[i]) + spread(gmean[k], gvar[k])) + d_mag[f]) +
               std::fabs(ab[f])) +
          std::fabs(b_of(f)));
    }
    for (size_t f = 0; f < c; ++f) {
      saved_r_[f] = static_cast<double>(r[f]);
      saved_d_[f] = static_cast<double>(d[f]);
      saved_d_mag_[f] = static_cast<double>(d_mag[f]);
      saved_adj_scale_[f] = static_cast<double>(as[f]);
      saved_adj_bias_[f] = static_cast<double>(ab[f]);
    }
  }

  batch_mean_.assign(c, 0.0);
  batch_variance_.assign(c, 0.0);
  for (size_t f = 0; f < c; ++f) {
    batch_mean_[f] = static_cast<double>(mean[f]);
    batch_variance_[f] = static_cast<double>(var[f]);
  }
  has_batch_stats_ = true;
  if (!update) return out;

  // The estimator fed to the moving variance: Bessel m/max(m-1,1) on the fused path (TF's
  // kernel) or when the override asks for it; the biased variance otherwise. m counts the
  // values of one (ghost) batch per feature.
  const int64_t m = static_cast<int64_t>(n) / (features_ * ghosts);
  const bool bessel = cfg_.moving_variance == RefMovingVariance::unbiased ||
                      (cfg_.moving_variance == RefMovingVariance::automatic && fused_);
  const Real factor = bessel ? static_cast<Real>(m) / static_cast<Real>(std::max<int64_t>(m - 1, 1)) : 1.0L;
  const Real mu = cfg_.momentum;
  ++updates_;
  auto moving_update = [&](double& v, Real value) {
    const Real old = v;
    Real next;
    if (cfg_.cumulative_average) {
      next = old + (value - old) / static_cast<Real>(updates_);  // running mean of the batches seen
    } else if (fused_) {
      next = mu * old + (1.0L - mu) * value;  // TF fused kernel: exponential_avg_factor = 1 - mu
    } else {
      next = old - (old - value) * (1.0L - mu);  // Keras _assign_moving_average
    }
    v = store(static_cast<double>(next));
  };
  // B.2: renorm_mean and renorm_stddev follow renorm_momentum (Keras' form).
  const Real renorm_decay = 1.0L - static_cast<Real>(cfg_.renorm.momentum);
  auto renorm_update = [&](double& v, Real value) {
    const Real old = v;
    v = store(static_cast<double>(old - (old - value) * renorm_decay));
  };
  for (size_t f = 0; f < c; ++f) {
    moving_update(moving_mean_[f], mean[f]);
    if (cfg_.renorm.enabled) {
      const Real stddev = std::sqrt(var[f] + eps);
      renorm_update(renorm_mean_[f], mean[f]);
      renorm_update(renorm_stddev_[f], stddev);
      // moving_stddev follows `momentum`; moving_variance is assigned from it (not an EMA).
      moving_update(moving_stddev_[f], std::sqrt(var[f] * factor + eps));
      const Real ms = moving_stddev_[f];
      moving_variance_[f] = store(static_cast<double>(std::max(0.0L, ms * ms - eps)));
    } else {
      moving_update(moving_variance_[f], var[f] * factor);
    }
  }
  return out;
}

// B.7, written in the "dL/dxhat" form (not the library's folded coefficients), per group
// (ghost batch and feature), with r, d, a_s, a_b constants:
//   gh = dy*g*a_s*r;  dx = s*(gh - mean_group(gh) - xhat*mean_group(gh*xhat));
//   dg = sum dy*(a_s*(r*xhat + d) + a_b);  db = sum dy   (summed over all ghost batches).
// Moving statistics (inference, or BN_MODE_UPDATE_MOVING alone): the ones the forward used,
// dx = dy*g*s_mv, dg = sum dy*(x - mm)*s_mv, db = sum dy.
RefGrads RefLayer::backward(const std::vector<int64_t>& shape, const std::vector<double>& x,
                            const std::vector<double>& dy) const {
  const std::vector<int64_t> fmap = feature_map(shape);
  const size_t n = x.size();
  const auto c = static_cast<size_t>(features_);
  if (dy.size() != n) throw std::logic_error("reference: dy size");
  const Real eps = effective_epsilon();
  RefGrads r;
  r.dx.assign(n, 0.0);
  r.dx_mag.assign(n, 0.0);
  std::vector<Real> dg(c, 0.0L), dg_mag(c, 0.0L), db(c, 0.0L), db_mag(c, 0.0L);
  auto g_of = [&](size_t f) -> Real { return cfg_.scale ? gamma_[f] : 1.0; };

  if (last_forward_batch_ && n > 0) {
    int64_t ghosts = 1;
    const std::vector<int64_t> gmap = group_map(shape, ghosts);
    const auto groups = static_cast<size_t>(ghosts * features_);
    std::vector<Real> mean, var;
    std::vector<int64_t> count;
    two_pass_moments(x, gmap, ghosts * features_, mean, var, count);
    std::vector<Real> s(groups), sum_gh(groups, 0.0L), sum_ghx(groups, 0.0L);
    for (size_t k = 0; k < groups; ++k) s[k] = 1.0L / std::sqrt(var[k] + eps);
    auto scale_of = [&](size_t f) -> Real {  // dy -> dL/dxhat
      return g_of(f) * static_cast<Real>(saved_adj_scale_[f]) * static_cast<Real>(saved_r_[f]);
    };
    for (size_t i = 0; i < n; ++i) {
      const auto f = static_cast<size_t>(fmap[i]);
      const auto k = static_cast<size_t>(gmap[i]);
      const Real xhat = (x[i] - mean[k]) * s[k];
      const Real gh = dy[i] * scale_of(f);
      sum_gh[k] += gh;
      sum_ghx[k] += gh * xhat;
      const Real as = saved_adj_scale_[f], ab = saved_adj_bias_[f], rr = saved_r_[f], dd = saved_d_[f];
      dg[f] += dy[i] * (as * (rr * xhat + dd) + ab);
      dg_mag[f] += std::fabs(static_cast<Real>(dy[i])) *
                   (std::fabs(as) * (std::fabs(rr) * s[k] * (std::fabs(x[i]) + spread(mean[k], var[k])) +
                                     static_cast<Real>(saved_d_mag_[f])) +
                    std::fabs(ab));
      db[f] += dy[i];
      db_mag[f] += std::fabs(static_cast<Real>(dy[i]));
    }
    for (size_t i = 0; i < n; ++i) {
      const auto f = static_cast<size_t>(fmap[i]);
      const auto k = static_cast<size_t>(gmap[i]);
      const Real m = static_cast<Real>(count[k]);
      const Real xhat = (x[i] - mean[k]) * s[k];
      const Real gh = dy[i] * scale_of(f);
      r.dx[i] = static_cast<double>(s[k] * (gh - sum_gh[k] / m - xhat * (sum_ghx[k] / m)));
      r.dx_mag[i] = static_cast<double>(
          s[k] * (std::fabs(gh) + std::fabs(sum_gh[k] / m) +
                  s[k] * (std::fabs(x[i]) + spread(mean[k], var[k])) * std::fabs(sum_ghx[k] / m)));
    }
  } else if (!last_forward_batch_) {
    for (size_t i = 0; i < n; ++i) {
      const auto f = static_cast<size_t>(fmap[i]);
      const Real mm = saved_moving_mean_[f];
      const Real s = 1.0L / std::sqrt(static_cast<Real>(saved_moving_variance_[f]) + eps);
      r.dx[i] = static_cast<double>(dy[i] * g_of(f) * s);
      r.dx_mag[i] = std::fabs(r.dx[i]);
      dg[f] += dy[i] * (x[i] - mm) * s;
      dg_mag[f] += std::fabs(static_cast<Real>(dy[i])) * s * (std::fabs(x[i]) + std::fabs(mm));
      db[f] += dy[i];
      db_mag[f] += std::fabs(static_cast<Real>(dy[i]));
    }
  }
  // Without BN_MODE_PARAM_GRADIENTS (a frozen layer) and for a missing variable: zeros.
  const bool param_grads = (mode() & kModeParamGradients) != 0;
  const bool has_dg = param_grads && cfg_.scale;
  const bool has_db = param_grads && cfg_.center;
  r.dgamma.assign(c, 0.0);
  r.dgamma_mag.assign(c, 0.0);
  r.dbeta.assign(c, 0.0);
  r.dbeta_mag.assign(c, 0.0);
  for (size_t f = 0; f < c; ++f) {
    if (has_dg) {
      r.dgamma[f] = static_cast<double>(dg[f]);
      r.dgamma_mag[f] = static_cast<double>(dg_mag[f]);
    }
    if (has_db) {
      r.dbeta[f] = static_cast<double>(db[f]);
      r.dbeta_mag[f] = static_cast<double>(db_mag[f]);
    }
  }
  return r;
}

}  // namespace bn_test
