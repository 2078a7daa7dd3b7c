#include "twin.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

namespace bn_test {
namespace {

void raise_to(std::vector<double>& mag, const std::vector<double>& values) {
  for (size_t f = 0; f < mag.size() && f < values.size(); ++f) mag[f] = std::max(mag[f], std::fabs(values[f]));
}

}  // namespace

const char* param_name(bn_param p) {
  switch (p) {
    case BN_PARAM_GAMMA: return "gamma";
    case BN_PARAM_BETA: return "beta";
    case BN_PARAM_MOVING_MEAN: return "moving_mean";
    case BN_PARAM_MOVING_VARIANCE: return "moving_variance";
    case BN_PARAM_RENORM_MEAN: return "renorm_mean";
    case BN_PARAM_RENORM_STDDEV: return "renorm_stddev";
    case BN_PARAM_BATCH_MEAN: return "batch_mean";
    case BN_PARAM_BATCH_VARIANCE: return "batch_variance";
    case BN_PARAM_MOVING_STDDEV: return "moving_stddev";
    default: return "?";
  }
}

double tolerance(RefDtype dtype) { return dtype == RefDtype::f64 ? 1e-10 : 1e-6; }

Twin::Twin(const RefConfig& cfg, const std::vector<int64_t>& build_shape) : cfg_(cfg) {
  try {
    ref_ = std::make_unique<RefLayer>(cfg, build_shape);
  } catch (const KerasRefusal& e) {
    refusal_ = e.what();
  }
  created_ = lib_.create(cfg, build_shape);
  if (!ref_) return;
  kept_.assign(build_shape.size(), false);
  for (int a : validate_axes(cfg.axes, static_cast<int>(build_shape.size()))) kept_[static_cast<size_t>(a)] = true;
  const size_t c = features();
  for (auto* m : {&mag_mm_, &mag_mv_, &mag_ms_, &mag_rm_, &mag_rs_}) m->assign(c, 0.0);
  raise_to(mag_mm_, ref_->moving_mean());
  raise_to(mag_mv_, ref_->moving_variance());
  if (cfg.renorm.enabled) {
    raise_to(mag_ms_, ref_->moving_stddev());
    raise_to(mag_rm_, ref_->renorm_mean());
    raise_to(mag_rs_, ref_->renorm_stddev());
  }
}

bool Twin::expect(const Comparison& c) {
  INFO(c.message);
  CHECK(c.ok);
  return c.ok;
}

void Twin::set_training(bool training) {
  REQUIRE(bn_set_training(lib_.get(), training ? 1 : 0) == BN_OK);
  ref_->set_training(training);
}
void Twin::set_trainable(bool trainable) {
  REQUIRE(bn_set_trainable(lib_.get(), trainable ? 1 : 0) == BN_OK);
  ref_->set_trainable(trainable);
}
void Twin::set_mode(int flags) {
  REQUIRE(bn_set_mode(lib_.get(), flags) == BN_OK);
  ref_->set_mode(flags);
}
void Twin::set_momentum(double momentum) {
  REQUIRE(bn_set_momentum(lib_.get(), momentum) == BN_OK);
  ref_->set_momentum(momentum);
}
void Twin::set_renorm_clipping(double rmax, double rmin, double dmax) {
  const bn_status st = bn_set_renorm_clipping(lib_.get(), rmax, rmin, dmax);
  INFO("bn_set_renorm_clipping: " << status_text(st));
  REQUIRE(st == BN_OK);
  ref_->set_renorm_clipping(rmax, rmin, dmax);
}
void Twin::set_renorm_momentum(double momentum) {
  const bn_status st = bn_set_renorm_momentum(lib_.get(), momentum);
  INFO("bn_set_renorm_momentum: " << status_text(st));
  REQUIRE(st == BN_OK);
  ref_->set_renorm_momentum(momentum);
}

void Twin::set_param(bn_param which, const std::vector<double>& values) {
  std::vector<double> v = values;
  for (double& e : v) e = round_to(e, cfg_.dtype);
  const bn_status st = lib_.set_param(which, v);
  INFO("bn_set_param(" << param_name(which) << "): " << status_text(st));
  REQUIRE(st == BN_OK);
  switch (which) {
    case BN_PARAM_GAMMA: ref_->set_gamma(v); break;
    case BN_PARAM_BETA: ref_->set_beta(v); break;
    case BN_PARAM_MOVING_MEAN: ref_->set_moving_mean(v); raise_to(mag_mm_, v); break;
    case BN_PARAM_MOVING_VARIANCE: ref_->set_moving_variance(v); raise_to(mag_mv_, v); break;
    case BN_PARAM_RENORM_MEAN: ref_->set_renorm_mean(v); raise_to(mag_rm_, v); break;
    case BN_PARAM_RENORM_STDDEV: ref_->set_renorm_stddev(v); raise_to(mag_rs_, v); break;
    case BN_PARAM_MOVING_STDDEV: ref_->set_moving_stddev(v); raise_to(mag_ms_, v); break;
    default: FAIL("Twin::set_param: not a settable parameter");
  }
}

void Twin::set_adjustment(const std::vector<double>& scale, const std::vector<double>& bias) {
  lib_.adjustment().scale = scale;
  lib_.adjustment().bias = bias;
  ref_->set_adjustment(scale, bias);
}

bool Twin::compare_state() {
  const double tol = tolerance(cfg_.dtype);
  bool ok = true;
  ok &= expect(compare_exact("gamma", lib_.param(BN_PARAM_GAMMA), ref_->gamma()));
  ok &= expect(compare_exact("beta", lib_.param(BN_PARAM_BETA), ref_->beta()));
  ok &= expect(compare_scaled("moving_mean", lib_.param(BN_PARAM_MOVING_MEAN), ref_->moving_mean(), mag_mm_, tol));
  ok &= expect(
      compare_scaled("moving_variance", lib_.param(BN_PARAM_MOVING_VARIANCE), ref_->moving_variance(), mag_mv_, tol));
  if (cfg_.renorm.enabled) {
    ok &= expect(compare_scaled("renorm_mean", lib_.param(BN_PARAM_RENORM_MEAN), ref_->renorm_mean(), mag_rm_, tol));
    ok &= expect(
        compare_scaled("renorm_stddev", lib_.param(BN_PARAM_RENORM_STDDEV), ref_->renorm_stddev(), mag_rs_, tol));
    ok &= expect(
        compare_scaled("moving_stddev", lib_.param(BN_PARAM_MOVING_STDDEV), ref_->moving_stddev(), mag_ms_, tol));
  }
  return ok;
}

// Values computed from the moving statistics inherit their stored rounding (see
// test_sweep.cpp): an error e in mv changes y - b by about |y - b|*e/(2(mv + eps)), an error
// e in mm changes y by |g|*s*e. `mv` and the magnitudes are those of the statistics the
// forward used (before any update it made).
void Twin::widen_moving(const std::vector<int64_t>& shape, const std::vector<double>& x, const std::vector<double>& mv,
                        const std::vector<double>& mag_mm, const std::vector<double>& mag_mv, RefForward* fw,
                        RefGrads* g, const std::vector<double>& dy) const {
  const std::vector<int64_t> fmap = feature_index_map(shape, kept_);
  const size_t c = features();
  const double eps = ref_->effective_epsilon();
  std::vector<double> cond(c), s(c), sum_abs_dy(c, 0.0);
  for (size_t f = 0; f < c; ++f) {
    cond[f] = 1.0 + mag_mv[f] / (mv[f] + eps);
    s[f] = 1.0 / std::sqrt(mv[f] + eps);
  }
  for (size_t i = 0; i < x.size(); ++i) {
    const auto f = static_cast<size_t>(fmap[i]);
    const double gam = cfg_.scale ? std::fabs(ref_->gamma()[f]) : 1.0;
    if (fw) fw->y_mag[i] = fw->y_mag[i] * cond[f] + gam * s[f] * mag_mm[f];
    if (g) {
      g->dx_mag[i] *= cond[f];
      sum_abs_dy[f] += std::fabs(dy[i]);
    }
  }
  if (g) {
    for (size_t f = 0; f < c; ++f) g->dgamma_mag[f] = g->dgamma_mag[f] * cond[f] + s[f] * mag_mm[f] * sum_abs_dy[f];
  }
}

bool Twin::step(const std::vector<int64_t>& shape, const std::vector<double>& x, const std::vector<double>& dy,
                bool backward) {
  INFO("shape " << describe_shape(shape) << ", mode " << ref_->mode());
  const double tol = tolerance(cfg_.dtype);
  const size_t c = features();
  const int mode = ref_->mode();
  const bool computes = (mode & (kModeBatchStatistics | kModeUpdateMoving)) != 0;
  const bool batch = (mode & kModeBatchStatistics) != 0;
  const bool updates = (mode & kModeUpdateMoving) != 0 && !x.empty();

  // The library's state before the call (bitwise), for a refused call.
  std::vector<bn_param> stored{BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE};
  if (cfg_.renorm.enabled) {
    stored.insert(stored.end(), {BN_PARAM_RENORM_MEAN, BN_PARAM_RENORM_STDDEV, BN_PARAM_MOVING_STDDEV});
  }
  std::vector<std::vector<double>> before;
  for (bn_param p : stored) before.push_back(lib_.param(p));
  // The reference's state before the call: the statistics the forward may use.
  const RefLayer ref_before = *ref_;
  const int calls_before = lib_.adjustment().calls;

  RefForward want;
  bool refused = false;
  try {
    want = ref_->forward(shape, x);
  } catch (const ShapeRefusal& e) {
    refused = true;
    INFO("reference refuses: " << e.what());
  }
  std::vector<double> y;
  const bn_status st = lib_.forward(shape, x, y);
  INFO("bn_forward: " << status_text(st));
  if (refused) {
    CHECK(st == BN_ERR_SHAPE);
    bool ok = st == BN_ERR_SHAPE;
    for (size_t k = 0; k < stored.size(); ++k) {
      ok &= expect(compare_exact(std::string(param_name(stored[k])) + " after a refused call",
                                 lib_.param(stored[k]), before[k]));
    }
    return ok;
  }
  CHECK(st == BN_OK);
  if (st != BN_OK) return false;
  bool ok = true;

  // Adjustment: called once per batch-statistics forward, with x's shape, on 1 and 0.
  if (cfg_.adjustment) {
    const AdjustmentSource& adj = lib_.adjustment();
    INFO("adjustment calls: library " << adj.calls << ", reference " << ref_->adjustment_calls());
    CHECK(adj.calls == ref_->adjustment_calls());
    CHECK(adj.arrived_identity);
    ok &= adj.calls == ref_->adjustment_calls() && adj.arrived_identity;
    if (adj.calls != calls_before) {
      CHECK(adj.last_shape == shape);
      CHECK(adj.last_features == static_cast<int64_t>(c));
      ok &= adj.last_shape == shape && adj.last_features == static_cast<int64_t>(c);
    }
  }

  // y (widened where the moving statistics normalized, which carry earlier rounding).
  const std::vector<double> mm_mag_before = mag_mm_, mv_mag_before = mag_mv_;
  const std::vector<double> mv_used = ref_before.moving_variance();
  if (!batch) widen_moving(shape, x, mv_used, mm_mag_before, mv_mag_before, &want, nullptr, {});
  ok &= expect(compare_scaled("y", y, want.y, want.y_mag, tol));

  // Statistics: magnitudes behind each stored value (old, new and the batch's value).
  if (updates) {
    updated_ = true;
    const RefLayer& r = *ref_;
    const double eps = r.effective_epsilon();
    for (size_t f = 0; f < c; ++f) {
      // A batch mean is as accurate as the data's spread allows (the SIMD kernels sum x - x0 in
      // float), so its scale is |mean| + sqrt(var), as for the BATCH_MEAN check below.
      const double bv = std::fabs(r.batch_variance()[f]);
      const double bm = std::fabs(r.batch_mean()[f]) + std::sqrt(bv);
      const double sd = std::sqrt(bv + eps);
      mag_mm_[f] = std::max(mag_mm_[f], std::fabs(ref_before.moving_mean()[f]) + std::fabs(r.moving_mean()[f]) + bm);
      if (cfg_.renorm.enabled) {
        mag_ms_[f] = std::max(mag_ms_[f], std::fabs(ref_before.moving_stddev()[f]) +
                                              std::fabs(r.moving_stddev()[f]) + 2.0 * sd);
        mag_rm_[f] = std::max(mag_rm_[f], std::fabs(ref_before.renorm_mean()[f]) + std::fabs(r.renorm_mean()[f]) + bm);
        mag_rs_[f] = std::max(mag_rs_[f], std::fabs(ref_before.renorm_stddev()[f]) +
                                              std::fabs(r.renorm_stddev()[f]) + sd);
        // moving_variance = moving_stddev^2 - eps: an error e in moving_stddev moves it by 2*ms*e.
        mag_mv_[f] = std::max(mag_mv_[f], std::fabs(r.moving_variance()[f]) +
                                              2.0 * std::fabs(r.moving_stddev()[f]) * mag_ms_[f] + eps);
      } else {
        mag_mv_[f] = std::max(mag_mv_[f], std::fabs(ref_before.moving_variance()[f]) +
                                              std::fabs(r.moving_variance()[f]) + 2.0 * bv);
      }
    }
  }
  ok &= compare_state();
  // The batch statistics (read-only parameters), once the layer has a training step behind
  // it; with ghost batches the library's choice is not specified.
  if (computes && !x.empty() && updated_ && cfg_.virtual_batch_size == 0) {
    std::vector<double> mag_bm(c);
    for (size_t f = 0; f < c; ++f) {
      mag_bm[f] = std::fabs(ref_->batch_mean()[f]) + std::sqrt(ref_->batch_variance()[f]);
    }
    ok &= expect(compare_scaled("batch_mean", lib_.param(BN_PARAM_BATCH_MEAN), ref_->batch_mean(), mag_bm, tol));
    ok &= expect(compare_rel("batch_variance", lib_.param(BN_PARAM_BATCH_VARIANCE), ref_->batch_variance(), tol,
                             tol * ref_->effective_epsilon()));
  }
  if (!backward) return ok;

  RefGrads g = ref_->backward(shape, x, dy);
  if (!batch) widen_moving(shape, x, mv_used, mm_mag_before, mv_mag_before, nullptr, &g, dy);
  std::vector<double> dx, dgamma, dbeta;
  const bn_status bst = lib_.backward(shape, x, dy, dx, dgamma, dbeta);
  INFO("bn_backward: " << status_text(bst));
  CHECK(bst == BN_OK);
  if (bst != BN_OK) return false;
  ok &= expect(compare_scaled("dx", dx, g.dx, g.dx_mag, tol));
  ok &= expect(compare_scaled("dgamma", dgamma, g.dgamma, g.dgamma_mag, tol));
  ok &= expect(compare_scaled("dbeta", dbeta, g.dbeta, g.dbeta_mag, tol));
  return ok;
}

}  // namespace bn_test
