// Randomized sweep: hundreds of seeded configurations (ranks 1..6, single and several
// axes, negative and non-adjacent, every option of the plain layer) run through the C API
// and through the independent reference model (tests/support/reference.hpp), step by step.
//
// Tolerances (relative to the magnitude of the terms behind each value, RefForward::y_mag
// etc., so cancellation does not make them meaningless):
//  * f64: 1e-10. Both sides compute in double or wider from the same inputs; the library's
//    blocked two-pass/Chan statistics and folded coefficients differ from the reference's
//    long double loops by a few ulps of double (~1e-16 each), far below 1e-10 (the sweep
//    passes at 1e-12 too; 1e-10 leaves room for other kernels' summation orders). A wrong
//    formula (Bessel factor, epsilon clamp, EMA, gradient term) is off by >= 1e-3.
//  * f32: 1e-6 (about 8 float ulps). The library computes in double and rounds once
//    (0.5 ulp = 6e-8); parameters and moving statistics are stored as float after every
//    step on both sides, and a double-vs-long-double difference at a rounding tie can leave
//    them one ulp apart, which a few steps of EMA can carry along but never amplify.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>

#include "compare.hpp"
#include "data_gen.hpp"
#include "lib_layer.hpp"
#include "reference.hpp"

namespace bn_test {
namespace {

constexpr int kConfigs = 1500;
constexpr int64_t kMaxElements = 1500;

double tolerance(RefDtype dtype) { return dtype == RefDtype::f64 ? 1e-10 : 1e-6; }

int random_size(DataGen& gen) {
  if (gen.coin(0.1)) return static_cast<int>(gen.integer(5, 9));  // odd and tail sizes
  return static_cast<int>(gen.pick(std::vector<int64_t>{1, 2, 2, 3, 3, 4}));
}

void shrink(std::vector<int64_t>& shape, const std::vector<bool>& keep_fixed) {
  while (element_count(shape) > kMaxElements) {
    size_t big = shape.size();
    for (size_t d = 0; d < shape.size(); ++d) {
      if (!keep_fixed[d] && shape[d] > 1 && (big == shape.size() || shape[d] > shape[big])) big = d;
    }
    if (big == shape.size()) break;
    --shape[big];
  }
}

RefConfig random_config(DataGen& gen, int rank) {
  RefConfig c;
  c.axes.clear();
  const int nkept = std::min(rank, gen.coin(0.55) ? 1 : gen.coin(0.65) ? 2 : 3);
  std::vector<int> dims(static_cast<size_t>(rank));
  std::iota(dims.begin(), dims.end(), 0);
  std::shuffle(dims.begin(), dims.end(), gen.engine());  // random order, often non-adjacent
  for (int k = 0; k < nkept; ++k) c.axes.push_back(gen.coin() ? dims[k] - rank : dims[k]);
  if ((rank == 4 || rank == 5) && gen.coin(0.4)) {  // the axes Keras' fused path knows (and -4)
    c.axes = {gen.pick(rank == 4 ? std::vector<int>{1, 3, -1, -3, -4} : std::vector<int>{1, 4, -1, -4, 3})};
  }
  if (gen.coin(0.04)) {  // the same axis twice (as -r and r): Keras' validate_axis refuses
    const int a = c.axes[0];
    c.axes.push_back(a < 0 ? a + rank : a - rank);
  }
  c.momentum = gen.pick(std::vector<double>{0.0, 0.5, 0.9, 0.99, 1.0, gen.uniform(0.0, 1.0)});
  c.epsilon = gen.pick(std::vector<double>{0.0, 1e-8, 1e-5, 1e-3, 0.1, gen.uniform(1e-4, 0.5)});
  c.center = gen.coin(0.75);
  c.scale = gen.coin(0.75);
  c.fused = gen.pick(std::vector<RefFused>{RefFused::automatic, RefFused::on, RefFused::off});
  c.rules = gen.coin() ? RefRules::v1 : RefRules::v2;
  c.trainable = gen.coin(0.85);
  const double u = gen.uniform(0.0, 1.0);
  c.moving_variance = u < 0.6 ? RefMovingVariance::automatic
                      : u < 0.8 ? RefMovingVariance::biased
                                : RefMovingVariance::unbiased;
  c.cumulative_average = gen.coin(0.15);
  c.reject_single_value = gen.coin(0.1);
  c.dtype = gen.coin() ? RefDtype::f32 : RefDtype::f64;
  return c;
}

// With the moving statistics (inference, frozen V2), y = g*(x - mm)*s + b with
// s = 1/sqrt(mv + eps) inherits the moving statistics' own rounding error (a few ulps of
// mag_m/mag_v, see run_config): an absolute error e in mv changes y - b by about
// |y - b| * e / (2(mv + eps)), an error e in mm changes y by |g|*s*e. The magnitudes are
// widened by exactly these factors so that the relative budget stays meaningful.
double conditioning(const RefLayer& ref, const std::vector<double>& mag_v, size_t f) {
  return 1.0 + mag_v[f] / (ref.moving_variance()[f] + ref.effective_epsilon());
}
double inv_std(const RefLayer& ref, size_t f) {
  return 1.0 / std::sqrt(ref.moving_variance()[f] + ref.effective_epsilon());
}

void widen_forward(const RefLayer& ref, const std::vector<int64_t>& shape, const std::vector<bool>& kept,
                   const std::vector<double>& mag_m, const std::vector<double>& mag_v, RefForward& fw) {
  const std::vector<int64_t> fmap = feature_index_map(shape, kept);
  const RefConfig& cfg = ref.config();
  for (size_t i = 0; i < fw.y.size(); ++i) {
    const auto f = static_cast<size_t>(fmap[i]);
    const double g = cfg.scale ? std::fabs(ref.gamma()[f]) : 1.0;
    fw.y_mag[i] = fw.y_mag[i] * conditioning(ref, mag_v, f) + g * inv_std(ref, f) * mag_m[f];
  }
}

void widen_backward(const RefLayer& ref, const std::vector<int64_t>& shape, const std::vector<bool>& kept,
                    const std::vector<double>& dy, const std::vector<double>& mag_m,
                    const std::vector<double>& mag_v, RefGrads& g) {
  const std::vector<int64_t> fmap = feature_index_map(shape, kept);
  std::vector<double> sum_abs_dy(g.dgamma.size(), 0.0);
  for (size_t i = 0; i < g.dx.size(); ++i) {
    const auto f = static_cast<size_t>(fmap[i]);
    g.dx_mag[i] *= conditioning(ref, mag_v, f);
    sum_abs_dy[f] += std::fabs(dy[i]);
  }
  for (size_t f = 0; f < g.dgamma.size(); ++f) {
    g.dgamma_mag[f] = g.dgamma_mag[f] * conditioning(ref, mag_v, f) + inv_std(ref, f) * mag_m[f] * sum_abs_dy[f];
  }
}

struct Coverage {
  int created = 0, refused = 0, fused = 0, multi_axis = 0, f32 = 0, f64 = 0, empty_batches = 0,
      single_value_refusals = 0, frozen_v2 = 0;
};

// One configuration: build, several training steps, then inference. Returns false on the
// first mismatch (so that one broken config does not flood the log).
bool run_config(int index, DataGen& gen, Coverage& cov) {
  const int rank = static_cast<int>(gen.pick(std::vector<int64_t>{1, 2, 2, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6}));
  RefConfig cfg = random_config(gen, rank);
  std::vector<int64_t> build(static_cast<size_t>(rank));
  for (auto& s : build) s = random_size(gen);
  shrink(build, std::vector<bool>(static_cast<size_t>(rank), false));

  // Which dims are kept (only when the axes are valid; otherwise the build fails anyway).
  std::vector<bool> kept(static_cast<size_t>(rank), false);
  bool axes_valid = true;
  try {
    for (int a : validate_axes(cfg.axes, rank)) kept[static_cast<size_t>(a)] = true;
  } catch (const KerasRefusal&) {
    axes_valid = false;
  }

  // The batch shapes of the training steps (reduced dims change; sometimes empty).
  const int steps = static_cast<int>(gen.integer(2, 4));
  std::vector<std::vector<int64_t>> shapes{build};
  for (int s = 1; s <= steps; ++s) {  // the last one is for inference
    std::vector<int64_t> shape = build;
    std::vector<size_t> reduced;
    for (size_t d = 0; d < shape.size(); ++d) {
      if (!kept[d]) {
        shape[d] = random_size(gen);
        reduced.push_back(d);
      }
    }
    if (!reduced.empty() && gen.coin(0.05)) shape[gen.pick(reduced)] = 0;
    shrink(shape, kept);
    shapes.push_back(shape);
  }
  // epsilon 0 only where every training batch has two or more values per feature
  // (with one value, var + eps = 0 and Keras itself divides by zero).
  if (cfg.epsilon == 0.0 && axes_valid) {
    int64_t features = 1;
    for (size_t d = 0; d < build.size(); ++d) features *= kept[d] ? build[d] : 1;
    for (const auto& sh : shapes) {
      const int64_t n = element_count(sh);
      if (n > 0 && n / features < 2) cfg.epsilon = 1e-3;
    }
  }

  INFO("config #" << index << ": " << describe(cfg) << " build shape " << describe_shape(build));
  const double tol = tolerance(cfg.dtype);
  bool ok = true;
  auto expect = [&](const Comparison& c) {
    INFO(c.message);
    CHECK(c.ok);
    ok = ok && c.ok;
  };

  std::unique_ptr<RefLayer> ref;
  std::string refusal;
  try {
    ref = std::make_unique<RefLayer>(cfg, build);
  } catch (const KerasRefusal& e) {
    refusal = e.what();
  }
  LibLayer lib;
  const bn_status created = lib.create(cfg, build);
  if (!ref) {
    INFO("reference refuses: " << refusal << "; library: " << status_text(created));
    CHECK(created == BN_ERR_INVALID_ARGUMENT);
    ++cov.refused;
    return created == BN_ERR_INVALID_ARGUMENT;
  }
  INFO("library: " << status_text(created));
  CHECK(created == BN_OK);
  if (created != BN_OK) return false;
  ++cov.created;
  cov.fused += ref->fused() ? 1 : 0;
  cov.multi_axis += cfg.axes.size() > 1 ? 1 : 0;
  (cfg.dtype == RefDtype::f32 ? cov.f32 : cov.f64) += 1;
  cov.frozen_v2 += (cfg.rules == RefRules::v2 && !cfg.trainable) ? 1 : 0;
  CHECK(lib.fused() == (ref->fused() ? 1 : 0));
  REQUIRE(lib.features() == ref->num_features());
  const size_t c = static_cast<size_t>(ref->num_features());

  // Defaults (Keras initializers), then random parameters and moving statistics.
  expect(compare_exact("initial gamma", lib.param(BN_PARAM_GAMMA), ref->gamma()));
  expect(compare_exact("initial moving_variance", lib.param(BN_PARAM_MOVING_VARIANCE), ref->moving_variance()));
  if (gen.coin(0.6)) {
    const auto mm = gen.uniform_vector(c, -1.0, 1.0, cfg.dtype);
    const auto mv = gen.uniform_vector(c, 0.2, 2.0, cfg.dtype);
    REQUIRE(lib.set_param(BN_PARAM_MOVING_MEAN, mm) == BN_OK);
    REQUIRE(lib.set_param(BN_PARAM_MOVING_VARIANCE, mv) == BN_OK);
    ref->set_moving_mean(mm);
    ref->set_moving_variance(mv);
  }
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
  ref->set_training(true);
  // Tolerance scale of each moving statistic: an update v - (v - value)(1 - mu) commits an
  // absolute error of a few ulps of max(|v|, |value|), and later steps carry it along (an EMA
  // never amplifies it), so the scale is the largest magnitude seen so far.
  std::vector<double> mag_m(c, 0.0), mag_v(c, 0.0);

  for (size_t step = 0; step <= static_cast<size_t>(steps) && ok; ++step) {
    const bool inference = step == static_cast<size_t>(steps);
    const std::vector<int64_t>& shape = shapes[step];
    INFO("step " << step << (inference ? " (inference)" : " (training)") << " shape " << describe_shape(shape));
    if (inference) {
      REQUIRE(bn_set_training(lib.get(), 0) == BN_OK);
      ref->set_training(false);
    }
    if (cfg.scale && gen.coin(0.6)) {
      const auto g = gen.uniform_vector(c, -2.0, 2.0, cfg.dtype);
      REQUIRE(lib.set_param(BN_PARAM_GAMMA, g) == BN_OK);
      ref->set_gamma(g);
    }
    if (cfg.center && gen.coin(0.6)) {
      const auto b = gen.uniform_vector(c, -2.0, 2.0, cfg.dtype);
      REQUIRE(lib.set_param(BN_PARAM_BETA, b) == BN_OK);
      ref->set_beta(b);
    }
    if (gen.coin(0.1)) {  // scheduled momentum
      const double mu = gen.uniform(0.0, 1.0);
      REQUIRE(bn_set_momentum(lib.get(), mu) == BN_OK);
      ref->set_momentum(mu);
    }
    const std::vector<double> x = gen.per_feature(shape, kept, 3.0, 0.3, 2.0, cfg.dtype);
    const std::vector<double> dy = gen.normal(x.size(), 0.0, 1.0, cfg.dtype);
    if (x.empty()) ++cov.empty_batches;
    const std::vector<double> mm_old = ref->moving_mean(), mv_old = ref->moving_variance();
    const std::vector<double> lib_mm_old = lib.param(BN_PARAM_MOVING_MEAN);
    const std::vector<double> lib_mv_old = lib.param(BN_PARAM_MOVING_VARIANCE);

    RefForward want;
    bool refused = false;
    try {
      want = ref->forward(shape, x);
    } catch (const ShapeRefusal&) {
      refused = true;
    }
    std::vector<double> y;
    const bn_status st = lib.forward(shape, x, y);
    INFO("bn_forward: " << status_text(st));
    if (refused) {
      ++cov.single_value_refusals;
      CHECK(st == BN_ERR_SHAPE);
      ok = ok && st == BN_ERR_SHAPE;
      // A failed call changes nothing (bitwise).
      expect(compare_exact("moving_mean after a refused call", lib.param(BN_PARAM_MOVING_MEAN), lib_mm_old));
      expect(compare_exact("moving_variance after a refused call", lib.param(BN_PARAM_MOVING_VARIANCE), lib_mv_old));
      continue;  // nothing to differentiate (the saved forward is the previous one)
    }
    REQUIRE(st == BN_OK);
    const bool moving = !ref->uses_batch_statistics();
    if (moving) widen_forward(*ref, shape, kept, mag_m, mag_v, want);
    expect(compare_scaled("y", y, want.y, want.y_mag, tol));

    // Moving statistics after every step (unchanged by inference, empty batches, frozen V2).
    const bool trained = ref->uses_batch_statistics() && !x.empty();
    for (size_t f = 0; f < c; ++f) {
      const double bm = trained ? ref->batch_mean()[f] : 0.0, bv = trained ? ref->batch_variance()[f] : 0.0;
      mag_m[f] = std::max(mag_m[f], std::fabs(mm_old[f]) + std::fabs(ref->moving_mean()[f]) + std::fabs(bm));
      mag_v[f] = std::max(mag_v[f], std::fabs(mv_old[f]) + std::fabs(ref->moving_variance()[f]) + 2.0 * std::fabs(bv));
    }
    expect(compare_scaled("moving_mean", lib.param(BN_PARAM_MOVING_MEAN), ref->moving_mean(), mag_m, tol));
    expect(compare_scaled("moving_variance", lib.param(BN_PARAM_MOVING_VARIANCE), ref->moving_variance(), mag_v, tol));
    if (trained) {
      std::vector<double> mag_bm(c);
      for (size_t f = 0; f < c; ++f) {
        mag_bm[f] = std::fabs(ref->batch_mean()[f]) + std::sqrt(ref->batch_variance()[f]);
      }
      expect(compare_scaled("batch_mean", lib.param(BN_PARAM_BATCH_MEAN), ref->batch_mean(), mag_bm, tol));
      expect(compare_rel("batch_variance", lib.param(BN_PARAM_BATCH_VARIANCE), ref->batch_variance(), tol));
    }

    RefGrads g = ref->backward(shape, x, dy);
    if (moving) widen_backward(*ref, shape, kept, dy, mag_m, mag_v, g);
    std::vector<double> dx, dgamma, dbeta;
    const bn_status bst = lib.backward(shape, x, dy, dx, dgamma, dbeta);
    INFO("bn_backward: " << status_text(bst));
    REQUIRE(bst == BN_OK);
    expect(compare_scaled("dx", dx, g.dx, g.dx_mag, tol));
    expect(compare_scaled("dgamma", dgamma, g.dgamma, g.dgamma_mag, tol));
    expect(compare_scaled("dbeta", dbeta, g.dbeta, g.dbeta_mag, tol));
  }
  return ok;
}

TEST_CASE("randomized sweep against the reference model", "[layer][sweep]") {
  DataGen gen(0x5eed5eedULL);
  Coverage cov;
  int failures = 0;
  for (int i = 0; i < kConfigs; ++i) {
    if (!run_config(i, gen, cov)) ++failures;
  }
  INFO("created " << cov.created << ", refused " << cov.refused << ", fused " << cov.fused << ", multi-axis "
                  << cov.multi_axis << ", f32 " << cov.f32 << ", f64 " << cov.f64 << ", empty batches "
                  << cov.empty_batches << ", single-value refusals " << cov.single_value_refusals
                  << ", frozen V2 " << cov.frozen_v2 << ", failing configs " << failures);
  // The sweep must actually reach every branch it is meant to exercise.
  CHECK(cov.created >= kConfigs / 2);
  CHECK(cov.refused >= 50);
  CHECK(cov.fused >= 80);
  CHECK(cov.multi_axis >= 300);
  CHECK(cov.f32 >= 300);
  CHECK(cov.f64 >= 300);
  CHECK(cov.empty_batches >= 20);
  CHECK(cov.single_value_refusals >= 10);
  CHECK(cov.frozen_v2 >= 30);
  CHECK(failures == 0);
}

}  // namespace
}  // namespace bn_test
