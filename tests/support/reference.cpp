// The reference model. Every formula cites the SEMANTICS.md section it comes from; the
// code favours obviousness over speed (plain loops over the whole tensor, long double).
#include "reference.hpp"

#include <cmath>
#include <optional>
#include <sstream>

namespace bn_test {
namespace {

using Real = long double;

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

// Keras 2 `_raise_if_fused_cannot_be_used` restricted to this scope (no renorm, vbs or
// adjustment): "" when fused can be used with this axis list and dtype, else the reason.
// Note it looks at whatever list it is given: the axes as passed to __init__ (V2) or the
// list validate_axis produced in build() (V1).
std::string fused_obstacle(const std::vector<int>& axis, RefDtype dtype) {
  if (axis.size() > 1) return "fused needs a single axis";
  const int a = axis[0];
  if (!(a == -4 || a == -3 || a == -1 || a == 1 || a == 3 || a == 4)) {
    return "axis " + std::to_string(a) + " is not in (-4, -3, -1, 1, 3, 4)";
  }
  if (dtype == RefDtype::f64) return "fused needs float16/bfloat16/float32";
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
    const std::string obstacle = fused_obstacle(cfg.axes, cfg.dtype);  // the axes as given
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
      fused = rank45 && fused_obstacle(axis, cfg.dtype).empty();  // V1: the normalized axes
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
  const FusedDecision d = keras_fused_decision(cfg, rank_);
  if (d.refused) throw KerasRefusal(d.reason);
  fused_ = d.fused;
  const auto c = static_cast<size_t>(features_);
  gamma_.assign(c, 1.0);  // Keras initializers (B.6)
  beta_.assign(c, 0.0);
  moving_mean_.assign(c, 0.0);
  moving_variance_.assign(c, 1.0);
}

bool RefLayer::uses_batch_statistics() const {
  return training_ && !(cfg_.rules == RefRules::v2 && !cfg_.trainable);
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

// B.1: y = g*(x - mean)/sqrt(var + eps_n) + b with the biased batch variance (training)
// or the moving statistics (inference). B.2: EMA of the moving statistics.
RefForward RefLayer::forward(const std::vector<int64_t>& shape, const std::vector<double>& x) {
  const std::vector<int64_t> fmap = feature_map(shape);
  const size_t n = x.size();
  if (static_cast<int64_t>(n) != element_count(shape)) throw std::logic_error("reference: x size");
  const Real eps = effective_epsilon();
  RefForward out;
  out.y.assign(n, 0.0);
  out.y_mag.assign(n, 0.0);
  auto g_of = [&](size_t f) -> Real { return cfg_.scale ? gamma_[f] : 1.0; };
  auto b_of = [&](size_t f) -> Real { return cfg_.center ? beta_[f] : 0.0; };

  if (!uses_batch_statistics()) {
    for (size_t i = 0; i < n; ++i) {
      const auto f = static_cast<size_t>(fmap[i]);
      const Real s = 1.0L / std::sqrt(static_cast<Real>(moving_variance_[f]) + eps);
      out.y[i] = static_cast<double>(g_of(f) * (x[i] - static_cast<Real>(moving_mean_[f])) * s + b_of(f));
      out.y_mag[i] = static_cast<double>(std::fabs(g_of(f)) * s * (std::fabs(x[i]) + std::fabs(moving_mean_[f])) +
                                         std::fabs(b_of(f)));
    }
    last_forward_batch_ = false;
    return out;
  }
  if (n == 0) {  // an empty batch normalizes nothing and changes no statistic
    last_forward_batch_ = true;
    return out;
  }
  const int64_t m = static_cast<int64_t>(n) / features_;
  if (m == 1 && cfg_.reject_single_value) throw ShapeRefusal("one value per feature in training (REJECT)");

  std::vector<Real> mean, var;
  std::vector<int64_t> count;
  two_pass_moments(x, fmap, features_, mean, var, count);
  for (size_t i = 0; i < n; ++i) {
    const auto f = static_cast<size_t>(fmap[i]);
    const Real s = 1.0L / std::sqrt(var[f] + eps);
    out.y[i] = static_cast<double>(g_of(f) * (x[i] - mean[f]) * s + b_of(f));
    out.y_mag[i] =
        static_cast<double>(std::fabs(g_of(f)) * s * (std::fabs(x[i]) + std::fabs(mean[f])) + std::fabs(b_of(f)));
  }

  // The estimator fed to the moving variance: Bessel m/max(m-1,1) on the fused path (TF's
  // kernel) or when the override asks for it; the biased variance otherwise.
  const bool bessel = cfg_.moving_variance == RefMovingVariance::unbiased ||
                      (cfg_.moving_variance == RefMovingVariance::automatic && fused_);
  const Real factor = bessel ? static_cast<Real>(m) / static_cast<Real>(std::max<int64_t>(m - 1, 1)) : 1.0L;
  const Real mu = cfg_.momentum;
  ++updates_;
  auto update = [&](double& v, Real value) {
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
  batch_mean_.assign(static_cast<size_t>(features_), 0.0);
  batch_variance_.assign(static_cast<size_t>(features_), 0.0);
  for (size_t f = 0; f < static_cast<size_t>(features_); ++f) {
    update(moving_mean_[f], mean[f]);
    update(moving_variance_[f], var[f] * factor);
    batch_mean_[f] = static_cast<double>(mean[f]);
    batch_variance_[f] = static_cast<double>(var[f]);
  }
  has_batch_stats_ = true;
  last_forward_batch_ = true;
  return out;
}

// B.7, written in the "dL/dxhat" form (not the library's folded coefficients):
//   gh = dy*g;  dx = s*(gh - mean_R(gh) - xhat*mean_R(gh*xhat));  dg = sum dy*xhat;  db = sum dy.
// Inference: dx = dy*g*s_mv, dg = sum dy*(x - mm)*s_mv, db = sum dy.
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
    std::vector<Real> mean, var;
    std::vector<int64_t> count;
    two_pass_moments(x, fmap, features_, mean, var, count);
    std::vector<Real> s(c), sum_gh(c, 0.0L), sum_ghx(c, 0.0L);
    for (size_t f = 0; f < c; ++f) s[f] = 1.0L / std::sqrt(var[f] + eps);
    for (size_t i = 0; i < n; ++i) {
      const auto f = static_cast<size_t>(fmap[i]);
      const Real xhat = (x[i] - mean[f]) * s[f];
      const Real gh = dy[i] * g_of(f);
      sum_gh[f] += gh;
      sum_ghx[f] += gh * xhat;
      dg[f] += dy[i] * xhat;
      dg_mag[f] += std::fabs(static_cast<Real>(dy[i])) * s[f] * (std::fabs(x[i]) + std::fabs(mean[f]));
      db[f] += dy[i];
      db_mag[f] += std::fabs(static_cast<Real>(dy[i]));
    }
    for (size_t i = 0; i < n; ++i) {
      const auto f = static_cast<size_t>(fmap[i]);
      const Real m = static_cast<Real>(count[f]);
      const Real xhat = (x[i] - mean[f]) * s[f];
      const Real gh = dy[i] * g_of(f);
      r.dx[i] = static_cast<double>(s[f] * (gh - sum_gh[f] / m - xhat * (sum_ghx[f] / m)));
      r.dx_mag[i] = static_cast<double>(
          s[f] * (std::fabs(gh) + std::fabs(sum_gh[f] / m) +
                  s[f] * (std::fabs(x[i]) + std::fabs(mean[f])) * std::fabs(sum_ghx[f] / m)));
    }
  } else if (!last_forward_batch_) {
    for (size_t i = 0; i < n; ++i) {
      const auto f = static_cast<size_t>(fmap[i]);
      const Real s = 1.0L / std::sqrt(static_cast<Real>(moving_variance_[f]) + eps);
      r.dx[i] = static_cast<double>(dy[i] * g_of(f) * s);
      r.dx_mag[i] = std::fabs(r.dx[i]);
      dg[f] += dy[i] * (x[i] - static_cast<Real>(moving_mean_[f])) * s;
      dg_mag[f] += std::fabs(static_cast<Real>(dy[i])) * s * (std::fabs(x[i]) + std::fabs(moving_mean_[f]));
      db[f] += dy[i];
      db_mag[f] += std::fabs(static_cast<Real>(dy[i]));
    }
  }
  // A frozen layer (trainable=False) and a missing variable report zero gradients.
  const bool has_dg = cfg_.trainable && cfg_.scale;
  const bool has_db = cfg_.trainable && cfg_.center;
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
