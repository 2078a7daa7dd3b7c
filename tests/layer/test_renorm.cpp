// Batch renormalization (SEMANTICS B.2, B.7, B.11.4-5): the Keras unit-test scenarios
// recomputed by hand, a randomized sweep against the reference model (clipping that binds,
// live clipping and momentum changes, adjustment, layouts, f32/f64), finite differences
// with r and d frozen, the initial state, and every refusal.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "compare.hpp"
#include "data_gen.hpp"
#include "lib_layer.hpp"
#include "reference.hpp"
#include "twin.hpp"

namespace bn_test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---------------------------------------------------------------------------
// The Keras scenarios (keras/legacy_tf_layers/normalization_test.py: testRenorm,
// testRenormWithAdjustment, testRenormNoClippingSameMomentumGivesSameTestTrain), on (4, 3)
// inputs with axis 1, recomputed here with plain loops in double exactly as the numpy code
// of those tests does (independent of the reference model).
struct KerasRenorm {
  double momentum, renorm_momentum, rmax, rmin, dmax;
  bool adjustment;
};

struct HandState {  // the test's own EMAs, in double as numpy keeps them
  std::vector<double> moving_mean, moving_stddev, renorm_mean, renorm_stddev;
};

constexpr int64_t kN = 4, kC = 3;

// Column statistics of a (4, 3) batch: x.mean(0), x.var(0) (biased).
void column_moments(const std::vector<double>& x, std::vector<double>& mean, std::vector<double>& var) {
  mean.assign(kC, 0.0);
  var.assign(kC, 0.0);
  for (int64_t n = 0; n < kN; ++n) {
    for (int64_t f = 0; f < kC; ++f) mean[f] += x[n * kC + f] / kN;
  }
  for (int64_t n = 0; n < kN; ++n) {
    for (int64_t f = 0; f < kC; ++f) var[f] += (x[n * kC + f] - mean[f]) * (x[n * kC + f] - mean[f]) / kN;
  }
}

double clip(double v, double lo, double hi) { return std::min(std::max(v, lo), hi); }

void run_keras_renorm(const KerasRenorm& k, RefDtype dtype, uint64_t seed) {
  const double gamma = 2.0, beta = 3.0, eps = 0.001;
  RefConfig cfg;
  cfg.axes = {1};
  cfg.epsilon = eps;
  cfg.momentum = k.momentum;
  cfg.dtype = dtype;
  cfg.renorm.enabled = true;
  cfg.renorm.rmax = k.rmax;
  cfg.renorm.rmin = k.rmin;
  cfg.renorm.dmax = k.dmax;
  cfg.renorm.momentum = k.renorm_momentum;
  cfg.adjustment = k.adjustment;
  const std::vector<int64_t> shape{kN, kC};
  LibLayer lib;
  const bn_status st = lib.create(cfg, shape);
  INFO(describe(cfg) << ": " << status_text(st));
  REQUIRE(st == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_GAMMA, std::vector<double>(kC, gamma)) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_BETA, std::vector<double>(kC, beta)) == BN_OK);
  DataGen gen(seed);
  // tf.random.uniform(shape[-1:], 0.5, 1.5) and (-.2, .2), drawn once (the tensors are fixed).
  const std::vector<double> adj_scale = gen.uniform_vector(kC, 0.5, 1.5, RefDtype::f32);
  const std::vector<double> adj_bias = gen.uniform_vector(kC, -0.2, 0.2, RefDtype::f32);
  lib.adjustment().scale = adj_scale;
  lib.adjustment().bias = adj_bias;
  // Keras' assertAllClose atol 1e-5 for float32; f64 keeps everything in double.
  const double atol = dtype == RefDtype::f32 ? 1e-5 : 1e-12;
  const double stat_atol = dtype == RefDtype::f32 ? 1e-6 : 1e-13;

  HandState h{std::vector<double>(kC, 0.0), std::vector<double>(kC, 1.0), std::vector<double>(kC, 0.0),
              std::vector<double>(kC, 1.0)};
  bool r_clipped = false, d_clipped = false;
  for (int step = 0; step < 5; ++step) {
    INFO("step " << step);
    const std::vector<double> x = gen.uniform_vector(kN * kC, 0.0, 1.0, dtype);  // np.random.random
    std::vector<double> mean, var;
    column_moments(x, mean, var);
    std::vector<double> y_train(kN * kC), y_test(kN * kC);
    std::vector<double> stddev(kC);
    for (int64_t f = 0; f < kC; ++f) {
      stddev[f] = std::sqrt(var[f] + eps);
      const double r_raw = stddev[f] / h.renorm_stddev[f];
      const double d_raw = (mean[f] - h.renorm_mean[f]) / h.renorm_stddev[f];
      const double r = clip(r_raw, k.rmin, k.rmax);
      const double d = clip(d_raw, -k.dmax, k.dmax);
      r_clipped = r_clipped || r != r_raw;
      d_clipped = d_clipped || d != d_raw;
      for (int64_t n = 0; n < kN; ++n) {
        const double z = (x[n * kC + f] - mean[f]) / stddev[f] * r + d;
        const double u = k.adjustment ? z * adj_scale[f] + adj_bias[f] : z;
        y_train[n * kC + f] = u * gamma + beta;
      }
    }
    for (int64_t f = 0; f < kC; ++f) {
      h.renorm_mean[f] += (mean[f] - h.renorm_mean[f]) * (1.0 - k.renorm_momentum);
      h.renorm_stddev[f] += (stddev[f] - h.renorm_stddev[f]) * (1.0 - k.renorm_momentum);
      h.moving_mean[f] += (mean[f] - h.moving_mean[f]) * (1.0 - k.momentum);
      h.moving_stddev[f] += (stddev[f] - h.moving_stddev[f]) * (1.0 - k.momentum);
      for (int64_t n = 0; n < kN; ++n) {
        // (moving_stddev * moving_stddev)**0.5: the layer's sqrt(moving_variance + eps).
        y_test[n * kC + f] = (x[n * kC + f] - h.moving_mean[f]) / h.moving_stddev[f] * gamma + beta;
      }
    }
    std::vector<double> y;
    REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
    REQUIRE(lib.forward(shape, x, y) == BN_OK);
    auto expect = [](const Comparison& c) {
      INFO(c.message);
      CHECK(c.ok);
    };
    expect(compare_rel("training y", y, y_train, 0.0, atol));
    REQUIRE(bn_set_training(lib.get(), 0) == BN_OK);
    REQUIRE(lib.forward(shape, x, y) == BN_OK);
    expect(compare_rel("inference y", y, y_test, 0.0, atol));
    expect(compare_rel("renorm_mean", lib.param(BN_PARAM_RENORM_MEAN), h.renorm_mean, 0.0, stat_atol));
    expect(compare_rel("renorm_stddev", lib.param(BN_PARAM_RENORM_STDDEV), h.renorm_stddev, 0.0, stat_atol));
    expect(compare_rel("moving_mean", lib.param(BN_PARAM_MOVING_MEAN), h.moving_mean, 0.0, stat_atol));
    expect(compare_rel("moving_stddev", lib.param(BN_PARAM_MOVING_STDDEV), h.moving_stddev, 0.0, stat_atol));
    std::vector<double> mv(kC);
    for (int64_t f = 0; f < kC; ++f) mv[f] = h.moving_stddev[f] * h.moving_stddev[f] - eps;
    expect(compare_rel("moving_variance = moving_stddev^2 - eps", lib.param(BN_PARAM_MOVING_VARIANCE), mv, 0.0,
                       4 * stat_atol));
  }
  if (k.rmax < kInf) {
    // The clipped scenarios must really clip (the data are U(0, 1): stddev ~0.29, mean ~0.5).
    CHECK(r_clipped);
    CHECK(d_clipped);
  }
}

TEST_CASE("Keras testRenorm: clipped renorm, training and inference by hand", "[layer][renorm]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  run_keras_renorm({0.99, 0.8, 1.1, 0.9, 0.1, false}, dtype, 101);
}

TEST_CASE("Keras testRenormWithAdjustment", "[layer][renorm][adjustment]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  run_keras_renorm({0.99, 0.8, 1.1, 0.9, 0.1, true}, dtype, 202);
}

// testRenormNoClippingSameMomentumGivesSameTestTrain: with momentum == renorm_momentum and no
// clipping, renorm_mean/renorm_stddev and moving_mean/moving_stddev are the same EMA of the
// same values from the same start (0 and sqrt(1)), so r*xhat + d = (x - renorm_mean)/renorm_stddev
// = (x - moving_mean)/moving_stddev: the training output on x equals the inference output on x
// computed just before (moving statistics not yet updated). The inference path divides by
// sqrt(moving_variance + eps) = moving_stddev, which holds once moving_variance has been assigned
// from moving_stddev, i.e. from the second step on; at the first step moving_variance is still
// its initial 1 (Keras: "values may not be identical on the first iteration", atol 1.5*eps).
TEST_CASE("Keras testRenormNoClippingSameMomentumGivesSameTestTrain", "[layer][renorm]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  const double mu = 0.9, gamma = 2.0, beta = 3.0, eps = 0.001;
  RefConfig cfg;
  cfg.axes = {1};
  cfg.epsilon = eps;
  cfg.momentum = mu;
  cfg.dtype = dtype;
  cfg.renorm.enabled = true;
  cfg.renorm.momentum = mu;  // rmax = dmax = inf, rmin = 0: unclipped
  const std::vector<int64_t> shape{kN, kC};
  LibLayer lib;
  REQUIRE(lib.create(cfg, shape) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_GAMMA, std::vector<double>(kC, gamma)) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_BETA, std::vector<double>(kC, beta)) == BN_OK);
  DataGen gen(303);
  HandState h{std::vector<double>(kC, 0.0), std::vector<double>(kC, 1.0), std::vector<double>(kC, 0.0),
              std::vector<double>(kC, 1.0)};
  // Rounding only: y ~ 3 +- 4, computed and rounded once in the layer's type.
  const double tight = dtype == RefDtype::f32 ? 4e-6 : 1e-13;
  auto expect = [](const Comparison& c) {
    INFO(c.message);
    CHECK(c.ok);
  };
  for (int step = 0; step < 6; ++step) {
    INFO("step " << step);
    const std::vector<double> x = gen.uniform_vector(kN * kC, 0.0, 1.0, dtype);
    std::vector<double> mean, var;
    column_moments(x, mean, var);
    std::vector<double> y_train(kN * kC), y_test(kN * kC);
    for (int64_t f = 0; f < kC; ++f) {
      const double stddev = std::sqrt(var[f] + eps);
      const double r = stddev / h.renorm_stddev[f], d = (mean[f] - h.renorm_mean[f]) / h.renorm_stddev[f];
      // The layer's inference divides by sqrt(moving_variance + eps): 1 + eps at the first step.
      const double inference_sd = step == 0 ? std::sqrt(1.0 + eps) : h.moving_stddev[f];
      for (int64_t n = 0; n < kN; ++n) {
        y_train[n * kC + f] = ((x[n * kC + f] - mean[f]) / stddev * r + d) * gamma + beta;
        y_test[n * kC + f] = (x[n * kC + f] - h.moving_mean[f]) / inference_sd * gamma + beta;
      }
      h.renorm_mean[f] += (mean[f] - h.renorm_mean[f]) * (1.0 - mu);
      h.renorm_stddev[f] += (stddev - h.renorm_stddev[f]) * (1.0 - mu);
      h.moving_mean[f] += (mean[f] - h.moving_mean[f]) * (1.0 - mu);
      h.moving_stddev[f] += (stddev - h.moving_stddev[f]) * (1.0 - mu);
    }
    // Test values first, before the training step updates the moving averages.
    std::vector<double> yt_test, yt_train;
    REQUIRE(bn_set_training(lib.get(), 0) == BN_OK);
    REQUIRE(lib.forward(shape, x, yt_test) == BN_OK);
    REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
    REQUIRE(lib.forward(shape, x, yt_train) == BN_OK);
    expect(compare_rel("training y vs by hand", yt_train, y_train, 0.0, tight));
    expect(compare_rel("inference y vs by hand", yt_test, y_test, 0.0, tight));
    if (step == 0) {
      expect(compare_rel("first step: training vs inference (Keras atol 1.5*eps)", yt_train, yt_test, 0.0,
                         1.5 * eps));
    } else {
      expect(compare_rel("training y == inference y", yt_train, yt_test, 0.0, tight));
    }
    // The two pairs of EMAs coincide (a few ulps: same formula, same inputs).
    const double stat_tol = dtype == RefDtype::f32 ? 3e-7 : 1e-15;
    expect(compare_rel("renorm_mean == moving_mean", lib.param(BN_PARAM_RENORM_MEAN), lib.param(BN_PARAM_MOVING_MEAN),
                       stat_tol, 0.0));
    expect(compare_rel("renorm_stddev == moving_stddev", lib.param(BN_PARAM_RENORM_STDDEV),
                       lib.param(BN_PARAM_MOVING_STDDEV), stat_tol, 0.0));
  }
}

// ---------------------------------------------------------------------------
// Initial state (B.2): renorm_mean from the moving mean's initializer, renorm_stddev and
// moving_stddev sqrt of the moving variance's; the Keras defaults give 0, 1, 1.
TEST_CASE("renorm variables start from the moving initializers", "[layer][renorm]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  const std::vector<int64_t> shape{2, 3, 4};
  RefConfig cfg;
  cfg.axes = {1};
  cfg.dtype = dtype;
  cfg.renorm.enabled = true;
  {
    LibLayer lib;
    REQUIRE(lib.create(cfg, shape) == BN_OK);
    CHECK(lib.param(BN_PARAM_RENORM_MEAN) == std::vector<double>(3, 0.0));
    CHECK(lib.param(BN_PARAM_RENORM_STDDEV) == std::vector<double>(3, 1.0));
    CHECK(lib.param(BN_PARAM_MOVING_STDDEV) == std::vector<double>(3, 1.0));
    CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == std::vector<double>(3, 1.0));
  }
  bn_config* c = nullptr;
  REQUIRE(make_config(cfg, &c) == BN_OK);
  REQUIRE(bn_config_set_initializer(c, BN_PARAM_MOVING_MEAN, BN_INITIALIZER_CONSTANT, 0.3, 0.0, 0) == BN_OK);
  REQUIRE(bn_config_set_initializer(c, BN_PARAM_MOVING_VARIANCE, BN_INITIALIZER_CONSTANT, 2.0, 0.0, 0) == BN_OK);
  bn_layer* layer = nullptr;
  REQUIRE(bn_create(c, shape.data(), 3, &layer) == BN_OK);
  bn_config_destroy(c);
  auto read = [&](bn_param p) {
    std::vector<double> out(3);
    if (dtype == RefDtype::f64) {
      REQUIRE(bn_get_param(layer, p, out.data(), 3) == BN_OK);
    } else {
      std::vector<float> f(3);
      REQUIRE(bn_get_param(layer, p, f.data(), 3) == BN_OK);
      for (size_t i = 0; i < 3; ++i) out[i] = f[i];
    }
    return out;
  };
  const double root2 = round_to(std::sqrt(2.0), dtype);
  CHECK(read(BN_PARAM_RENORM_MEAN) == std::vector<double>(3, round_to(0.3, dtype)));
  CHECK(read(BN_PARAM_RENORM_STDDEV) == std::vector<double>(3, root2));
  CHECK(read(BN_PARAM_MOVING_STDDEV) == std::vector<double>(3, root2));
  CHECK(read(BN_PARAM_MOVING_MEAN) == std::vector<double>(3, round_to(0.3, dtype)));
  CHECK(read(BN_PARAM_MOVING_VARIANCE) == std::vector<double>(3, 2.0));
  bn_destroy(layer);
}

// ---------------------------------------------------------------------------
// Randomized sweep against the reference model.
struct Layout {
  const char* name;
  std::vector<int64_t> shape;  // the build shape; axis 0 varies per step
  std::vector<int> axes;
};

const std::vector<Layout>& layouts() {
  static const std::vector<Layout> all{
      {"2D", {8, 3}, {-1}},
      {"NHWC", {3, 2, 3, 4}, {-1}},
      {"NHWC axis 3", {2, 3, 2, 3}, {3}},
      {"NCHW", {3, 4, 2, 3}, {1}},
      {"NCL", {4, 3, 5}, {1}},
      {"NDHWC", {2, 2, 2, 2, 3}, {4}},
      {"multi-axis HC", {3, 2, 4, 2}, {1, 3}},
      {"multi-axis last two", {2, 3, 4}, {-1, -2}},
      {"multi-axis rank 5", {2, 2, 3, 2, 2}, {-4, -2}},
  };
  return all;
}

struct SweepCoverage {
  int configs = 0, f32 = 0, f64 = 0, adjustment = 0, no_renorm = 0, r_clipped = 0, d_clipped = 0,
      rs_clamped = 0, relu_fired = 0, live_clipping = 0, live_momentum = 0, fused_on_v1 = 0;
};

RefConfig random_renorm_config(DataGen& gen, const Layout& layout) {
  RefConfig c;
  c.axes = layout.axes;
  c.dtype = gen.coin() ? RefDtype::f32 : RefDtype::f64;
  c.center = gen.coin(0.8);
  c.scale = gen.coin(0.8);
  c.momentum = gen.pick(std::vector<double>{0.0, 0.5, 0.9, 0.99, 1.0, gen.uniform(0.0, 1.0)});
  c.epsilon = gen.pick(std::vector<double>{1e-3, 1e-3, 1e-5, 0.1, gen.uniform(1e-4, 0.5)});
  c.rules = gen.coin() ? RefRules::v1 : RefRules::v2;
  c.fused = c.rules == RefRules::v1 ? gen.pick(std::vector<RefFused>{RefFused::automatic, RefFused::on, RefFused::off})
                                    : gen.pick(std::vector<RefFused>{RefFused::automatic, RefFused::off});
  c.renorm.enabled = gen.coin(0.88);
  c.adjustment = gen.coin(0.4) || !c.renorm.enabled;
  c.renorm.momentum = gen.pick(std::vector<double>{0.0, 0.5, 0.8, 0.99, 1.0, gen.uniform(0.0, 1.0)});
  switch (gen.integer(0, 4)) {
    case 0: break;                                                       // unclipped
    case 1: c.renorm.rmax = 3.0; c.renorm.rmin = 1.0 / 3; c.renorm.dmax = 5.0; break;  // loose
    case 2: c.renorm.rmax = 1.05; c.renorm.rmin = 0.95; c.renorm.dmax = 0.05; break;  // binds
    case 3: c.renorm.rmax = 1.0; c.renorm.rmin = 1.0; c.renorm.dmax = 0.0; break;     // r = 1, d = 0
    default: c.renorm.rmax = gen.uniform(1.0, 2.0); c.renorm.rmin = gen.uniform(0.0, 1.0);
             c.renorm.dmax = gen.uniform(0.0, 1.0);
  }
  return c;
}

// One configuration: several training steps with live changes between them, then inference.
bool run_renorm_config(int index, DataGen& gen, SweepCoverage& cov) {
  const Layout& layout = gen.pick(layouts());
  const RefConfig cfg = random_renorm_config(gen, layout);
  INFO("config #" << index << " (" << layout.name << "): " << describe(cfg));
  Twin t(cfg, layout.shape);
  INFO("library: " << status_text(t.created()) << "; reference: " << t.refusal());
  REQUIRE(t.ok());
  ++cov.configs;
  (cfg.dtype == RefDtype::f32 ? cov.f32 : cov.f64) += 1;
  cov.adjustment += cfg.adjustment ? 1 : 0;
  cov.no_renorm += cfg.renorm.enabled ? 0 : 1;
  cov.fused_on_v1 += cfg.fused == RefFused::on ? 1 : 0;
  CHECK(t.lib().fused() == 0);  // renorm and adjustment force the non-fused path (B.1)
  const size_t c = t.features();
  std::vector<bool> kept(layout.shape.size(), false);
  for (int a : validate_axes(cfg.axes, static_cast<int>(layout.shape.size()))) kept[static_cast<size_t>(a)] = true;

  if (cfg.adjustment) {
    std::vector<double> scale = gen.uniform_vector(c, 0.5, 1.5, RefDtype::f64);
    if (gen.coin(0.3)) scale[0] = -scale[0];  // a negative scale is allowed
    t.set_adjustment(scale, gen.uniform_vector(c, -0.5, 0.5, RefDtype::f64));
  }
  t.set_training(true);
  const double sqrt_eps = std::sqrt(cfg.epsilon);
  bool ok = true;
  const int steps = static_cast<int>(gen.integer(3, 5));
  for (int step = 0; step <= steps && ok; ++step) {
    const bool inference = step == steps;
    INFO("step " << step << (inference ? " (inference)" : ""));
    if (inference) t.set_training(false);
    if (cfg.scale && gen.coin(0.5)) t.set_param(BN_PARAM_GAMMA, gen.uniform_vector(c, -2.0, 2.0, RefDtype::f64));
    if (cfg.center && gen.coin(0.5)) t.set_param(BN_PARAM_BETA, gen.uniform_vector(c, -2.0, 2.0, RefDtype::f64));
    if (cfg.renorm.enabled) {
      if (gen.coin(0.2)) {  // below sqrt(eps): r and d divide by the clamp max(renorm_stddev, sqrt(eps))
        t.set_param(BN_PARAM_RENORM_STDDEV, gen.uniform_vector(c, 0.0, 0.9 * sqrt_eps, RefDtype::f64));
        ++cov.rs_clamped;
      } else if (gen.coin(0.2)) {
        t.set_param(BN_PARAM_RENORM_STDDEV, gen.uniform_vector(c, 0.3, 3.0, RefDtype::f64));
      }
      if (gen.coin(0.25)) t.set_param(BN_PARAM_RENORM_MEAN, gen.uniform_vector(c, -2.0, 2.0, RefDtype::f64));
      if (gen.coin(0.15)) {  // below sqrt(eps): moving_variance = relu(ms^2 - eps) can clamp at 0
        t.set_param(BN_PARAM_MOVING_STDDEV, gen.uniform_vector(c, 0.0, 0.5 * sqrt_eps, RefDtype::f64));
      }
      if (gen.coin(0.2)) {  // live clipping (the paper relaxes rmax/dmax on a schedule)
        const double rmax = gen.pick(std::vector<double>{kInf, 1.0, 1.1, gen.uniform(1.0, 3.0)});
        const double rmin = gen.pick(std::vector<double>{0.0, 1.0 / rmax, gen.uniform(0.0, 1.0)});
        const double dmax = gen.pick(std::vector<double>{kInf, 0.0, 0.1, gen.uniform(0.0, 2.0)});
        t.set_renorm_clipping(rmax, std::min(rmin, rmax), dmax);
        ++cov.live_clipping;
      }
      if (gen.coin(0.2)) {
        t.set_renorm_momentum(gen.pick(std::vector<double>{0.0, 1.0, gen.uniform(0.0, 1.0)}));
        ++cov.live_momentum;
      }
    }
    if (gen.coin(0.1)) t.set_momentum(gen.uniform(0.0, 1.0));
    if (gen.coin(0.1)) {  // by hand: overwritten at the next training step under renorm (B.11.4)
      t.set_param(BN_PARAM_MOVING_VARIANCE, gen.uniform_vector(c, 0.1, 3.0, RefDtype::f64));
    }
    std::vector<int64_t> shape = layout.shape;
    shape[0] = gen.integer(2, 6);
    const std::vector<double> x = gen.per_feature(shape, kept, 2.0, 0.3, 2.5, cfg.dtype);
    const std::vector<double> dy = gen.normal(x.size(), 0.0, 1.0, cfg.dtype);
    ok = t.step(shape, x, dy);
    if (!inference && cfg.renorm.enabled) {
      const RefRenorm& rn = t.ref().config().renorm;
      for (size_t f = 0; f < c; ++f) {
        const double r = t.ref().last_r()[f], d = t.ref().last_d()[f];
        if ((r == rn.rmax || r == rn.rmin) && rn.rmin != rn.rmax) ++cov.r_clipped;
        if (std::fabs(d) == rn.dmax && rn.dmax > 0) ++cov.d_clipped;
        if (t.ref().moving_variance()[f] == 0.0) ++cov.relu_fired;
      }
    }
  }
  return ok;
}

TEST_CASE("renorm sweep against the reference model", "[layer][renorm][sweep]") {
  DataGen gen(0x7e707e70ULL);
  SweepCoverage cov;
  int failures = 0;
  for (int i = 0; i < 300; ++i) {
    if (!run_renorm_config(i, gen, cov)) ++failures;
  }
  INFO("configs " << cov.configs << ", f32 " << cov.f32 << ", f64 " << cov.f64 << ", adjustment " << cov.adjustment
                  << ", adjustment without renorm " << cov.no_renorm << ", r clipped " << cov.r_clipped
                  << ", d clipped " << cov.d_clipped << ", renorm_stddev under sqrt(eps) " << cov.rs_clamped
                  << ", relu fired " << cov.relu_fired << ", live clipping " << cov.live_clipping
                  << ", live renorm momentum " << cov.live_momentum << ", fused ON (V1) " << cov.fused_on_v1
                  << ", failing configs " << failures);
  CHECK(cov.f32 >= 100);
  CHECK(cov.f64 >= 100);
  CHECK(cov.adjustment >= 100);
  CHECK(cov.no_renorm >= 20);
  CHECK(cov.r_clipped >= 100);
  CHECK(cov.d_clipped >= 100);
  CHECK(cov.rs_clamped >= 50);
  CHECK(cov.relu_fired >= 20);
  CHECK(cov.live_clipping >= 50);
  CHECK(cov.live_momentum >= 50);
  CHECK(cov.fused_on_v1 >= 30);
  CHECK(failures == 0);
}

// ---------------------------------------------------------------------------
// Finite differences (f64). The library differentiates y = g*(a_s*(r*xhat + d) + a_b) + b
// with r and d constants (Keras stop_gradient); r and d are functions of x's statistics, so a
// finite difference of the full forward would differ. Differentiate instead the forward
// with r and d frozen at the values of the unperturbed input, computed here by hand.
struct FdCase {
  const char* name;
  std::vector<int64_t> shape;
  std::vector<int> axes;
  bool clipped;
  bool adjustment;
  bool center = true;
  bool scale = true;
};


TEST_CASE("renorm finite differences with r and d frozen", "[layer][renorm][gradients]") {
  const std::vector<FdCase> cases{
      {"2D unclipped", {6, 3}, {-1}, false, false},
      {"2D clipped", {6, 3}, {-1}, true, false},
      {"NCHW clipped + adjustment", {3, 2, 2, 2}, {1}, true, true},
      {"NHWC unclipped + adjustment", {2, 2, 2, 3}, {-1}, false, true},
      {"multi-axis", {3, 2, 2, 3}, {1, 3}, true, true},
      {"no beta", {5, 2}, {-1}, false, true, false, true},
      {"no gamma", {4, 3, 2}, {1}, true, false, true, false},
  };
  const size_t which = GENERATE(range(size_t{0}, size_t{7}));
  const FdCase& fc = cases[which];
  INFO(fc.name);
  RefConfig cfg;
  cfg.axes = fc.axes;
  cfg.dtype = RefDtype::f64;
  cfg.epsilon = 1e-3;
  cfg.center = fc.center;
  cfg.scale = fc.scale;
  cfg.renorm.enabled = true;
  cfg.renorm.momentum = 0.7;
  if (fc.clipped) {
    cfg.renorm.rmax = 1.2;
    cfg.renorm.rmin = 0.8;
    cfg.renorm.dmax = 0.3;
  }
  cfg.adjustment = fc.adjustment;
  LibLayer lib;
  REQUIRE(lib.create(cfg, fc.shape) == BN_OK);
  const size_t c = static_cast<size_t>(lib.features());
  const size_t n = static_cast<size_t>(element_count(fc.shape));
  std::vector<bool> kept(fc.shape.size(), false);
  for (int a : validate_axes(cfg.axes, static_cast<int>(fc.shape.size()))) kept[static_cast<size_t>(a)] = true;
  const std::vector<int64_t> fmap = feature_index_map(fc.shape, kept);

  DataGen gen(4242 + which);
  std::vector<double> x = gen.per_feature(fc.shape, kept, 1.0, 0.5, 1.5, RefDtype::f64);
  const std::vector<double> w = gen.normal(n, 0.0, 1.0, RefDtype::f64);
  std::vector<double> gamma = gen.uniform_vector(c, 0.5, 2.0, RefDtype::f64);
  std::vector<double> beta = gen.uniform_vector(c, -1.0, 1.0, RefDtype::f64);
  const std::vector<double> rm = gen.uniform_vector(c, -0.5, 0.5, RefDtype::f64);
  const std::vector<double> rs = gen.uniform_vector(c, 0.4, 2.5, RefDtype::f64);
  std::vector<double> as(c, 1.0), ab(c, 0.0);
  if (fc.adjustment) {
    as = gen.uniform_vector(c, 0.5, 1.5, RefDtype::f64);
    ab = gen.uniform_vector(c, -0.3, 0.3, RefDtype::f64);
    lib.adjustment().scale = as;
    lib.adjustment().bias = ab;
  }
  if (fc.scale) REQUIRE(lib.set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
  if (fc.center) REQUIRE(lib.set_param(BN_PARAM_BETA, beta) == BN_OK);
  if (!fc.scale) gamma.assign(c, 1.0);
  if (!fc.center) beta.assign(c, 0.0);
  REQUIRE(lib.set_param(BN_PARAM_RENORM_MEAN, rm) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_RENORM_STDDEV, rs) == BN_OK);
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);

  // Per-feature batch moments of v (plain two-pass loops).
  auto moments = [&](const std::vector<double>& v, std::vector<double>& mean, std::vector<double>& var) {
    mean.assign(c, 0.0);
    var.assign(c, 0.0);
    std::vector<double> cnt(c, 0.0);
    for (size_t i = 0; i < n; ++i) {
      mean[fmap[i]] += v[i];
      cnt[fmap[i]] += 1.0;
    }
    for (size_t f = 0; f < c; ++f) mean[f] /= cnt[f];
    for (size_t i = 0; i < n; ++i) var[fmap[i]] += (v[i] - mean[fmap[i]]) * (v[i] - mean[fmap[i]]);
    for (size_t f = 0; f < c; ++f) var[f] /= cnt[f];
  };
  // r and d of the unperturbed input from the renorm statistics before the step (B.2).
  std::vector<double> mean0, var0, r(c), d(c);
  moments(x, mean0, var0);
  int clipped = 0;
  for (size_t f = 0; f < c; ++f) {
    const double s = std::max(rs[f], std::sqrt(cfg.epsilon));
    const double r_raw = std::sqrt(var0[f] + cfg.epsilon) / s, d_raw = (mean0[f] - rm[f]) / s;
    r[f] = clip(r_raw, cfg.renorm.rmin, cfg.renorm.rmax);
    d[f] = clip(d_raw, -cfg.renorm.dmax, cfg.renorm.dmax);
    clipped += (r[f] != r_raw) + (d[f] != d_raw);
  }
  if (fc.clipped) CHECK(clipped > 0);
  auto frozen_loss = [&]() {
    std::vector<double> mean, var;
    moments(x, mean, var);
    double loss = 0.0;
    for (size_t i = 0; i < n; ++i) {
      const size_t f = static_cast<size_t>(fmap[i]);
      const double xhat = (x[i] - mean[f]) / std::sqrt(var[f] + cfg.epsilon);
      loss += w[i] * (gamma[f] * (as[f] * (r[f] * xhat + d[f]) + ab[f]) + beta[f]);
    }
    return loss;
  };

  std::vector<double> y, dx, dgamma, dbeta;
  REQUIRE(lib.forward(fc.shape, x, y) == BN_OK);
  REQUIRE(lib.backward(fc.shape, x, w, dx, dgamma, dbeta) == BN_OK);
  // The frozen function is the layer's forward at the unperturbed point.
  double lib_loss = 0.0;
  for (size_t i = 0; i < n; ++i) lib_loss += w[i] * y[i];
  CHECK(std::fabs(lib_loss - frozen_loss()) <= 1e-12 * (1.0 + std::fabs(lib_loss)));

  std::vector<double> fd_dx(n), fd_dg(c, 0.0), fd_db(c, 0.0);
  for (size_t i = 0; i < n; ++i) fd_dx[i] = central_difference(x, i, frozen_loss);
  for (size_t f = 0; f < c && fc.scale; ++f) fd_dg[f] = central_difference(gamma, f, frozen_loss);
  for (size_t f = 0; f < c && fc.center; ++f) fd_db[f] = central_difference(beta, f, frozen_loss);
  auto expect = [](const Comparison& cmp) {
    INFO(cmp.message);
    CHECK(cmp.ok);
  };
  const double rel = 1e-6;
  expect(compare_rel("dx vs finite differences", dx, fd_dx, rel, rel));
  expect(compare_rel("dgamma vs finite differences", dgamma, fd_dg, rel, rel));
  expect(compare_rel("dbeta vs finite differences", dbeta, fd_db, rel, rel));
}

// ---------------------------------------------------------------------------
// Refusals and what is accepted.
bn_status create_raw(const RefConfig& cfg, const std::vector<int64_t>& shape, bn_layer** out) {
  bn_config* c = nullptr;
  AdjustmentSource adj;  // never called: the layers below are only created
  bn_status st = make_config(cfg, &c, &adj);
  if (st != BN_OK) return st;
  st = bn_create(c, shape.data(), static_cast<int32_t>(shape.size()), out);
  bn_config_destroy(c);
  return st;
}

TEST_CASE("renorm and adjustment: fused ON is refused under V2 and falls back under V1", "[layer][renorm]") {
  const std::vector<int64_t> nhwc{2, 3, 3, 4};
  for (const bool renorm : {true, false}) {
    INFO((renorm ? "renorm" : "adjustment"));
    RefConfig cfg;
    cfg.renorm.enabled = renorm;
    cfg.adjustment = !renorm;
    bn_layer* layer = nullptr;
    int fused = -1;

    cfg.rules = RefRules::v2;
    cfg.fused = RefFused::on;
    bn_status st = create_raw(cfg, nhwc, &layer);
    INFO(status_text(st));
    CHECK(st == BN_ERR_INVALID_ARGUMENT);
    CHECK(std::string(bn_last_error()).find("bn_create") != std::string::npos);
    CHECK(layer == nullptr);
    bn_destroy(layer);
    layer = nullptr;

    for (const RefRules rules : {RefRules::v1, RefRules::v2}) {
      for (const RefFused f : {RefFused::automatic, RefFused::on, RefFused::off}) {
        if (rules == RefRules::v2 && f == RefFused::on) continue;
        cfg.rules = rules;
        cfg.fused = f;
        st = create_raw(cfg, nhwc, &layer);
        INFO("rules " << (rules == RefRules::v1 ? "V1" : "V2") << " fused " << static_cast<int>(f) << ": "
                      << status_text(st));
        REQUIRE(st == BN_OK);
        REQUIRE(bn_get_fused(layer, &fused) == BN_OK);
        CHECK(fused == 0);
        bn_destroy(layer);
        layer = nullptr;
      }
    }
    // Control: the same shape without renorm/adjustment is fused, so the 0 above is theirs.
    RefConfig plain;
    plain.fused = RefFused::on;
    REQUIRE(create_raw(plain, nhwc, &layer) == BN_OK);
    REQUIRE(bn_get_fused(layer, &fused) == BN_OK);
    CHECK(fused == 1);
    bn_destroy(layer);
  }
}

TEST_CASE("renorm parameters and setters on a layer without renorm", "[layer][renorm]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  RefConfig cfg;
  cfg.dtype = dtype;
  LibLayer lib;
  REQUIRE(lib.create(cfg, {4, 3}) == BN_OK);
  const std::vector<double> mm = lib.param(BN_PARAM_MOVING_MEAN), mv = lib.param(BN_PARAM_MOVING_VARIANCE);
  for (const bn_param p : {BN_PARAM_RENORM_MEAN, BN_PARAM_RENORM_STDDEV, BN_PARAM_MOVING_STDDEV}) {
    INFO("param " << p);
    std::vector<double> out;
    bn_status st = lib.get_param(p, out);
    INFO(status_text(st));
    CHECK(st == BN_ERR_INVALID_ARGUMENT);
    st = lib.set_param(p, std::vector<double>(3, 1.0));
    CHECK(st == BN_ERR_INVALID_ARGUMENT);
  }
  bn_status st = bn_set_renorm_clipping(lib.get(), 2.0, 0.5, 1.0);
  INFO(status_text(st));
  CHECK(st == BN_ERR_STATE);
  CHECK(std::string(bn_last_error()).find("bn_set_renorm_clipping") != std::string::npos);
  st = bn_set_renorm_momentum(lib.get(), 0.5);
  CHECK(st == BN_ERR_STATE);
  CHECK(std::string(bn_last_error()).find("bn_set_renorm_momentum") != std::string::npos);
  CHECK(lib.param(BN_PARAM_MOVING_MEAN) == mm);
  CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == mv);
  // The layer still behaves as a plain one (a twin that never saw the calls).
  Twin t(cfg, {4, 3});
  REQUIRE(t.ok());
  t.set_training(true);
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
  DataGen gen(77);
  const std::vector<double> x = gen.normal(12, 0.3, 1.2, dtype), dy = gen.normal(12, 0.0, 1.0, dtype);
  std::vector<double> y1, y2;
  REQUIRE(lib.forward({4, 3}, x, y1) == BN_OK);
  REQUIRE(t.lib().forward({4, 3}, x, y2) == BN_OK);
  CHECK(y1 == y2);
  CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == t.lib().param(BN_PARAM_MOVING_VARIANCE));
}

// Bad clipping or momentum on a live layer or a config: BN_ERR_INVALID_ARGUMENT, and the
// layer goes on exactly as a twin that never saw the call (the clipping binds on this data,
// so a changed clipping would show in y).
TEST_CASE("bad renorm clipping and momentum are refused and change nothing", "[layer][renorm]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  RefConfig cfg;
  cfg.axes = {1};
  cfg.dtype = dtype;
  cfg.renorm = {true, 1.2, 0.8, 0.2, 0.7};
  const std::vector<int64_t> shape{5, 3, 2};
  LibLayer a, b;
  REQUIRE(a.create(cfg, shape) == BN_OK);
  REQUIRE(b.create(cfg, shape) == BN_OK);
  struct Clip {
    double rmax, rmin, dmax;
  };
  const std::vector<Clip> bad_clipping{
      {1.0, -0.1, 1.0}, {1.0, kNaN, 1.0}, {kInf, kInf, 1.0}, {0.4, 0.5, 1.0}, {kNaN, 0.5, 1.0},
      {2.0, 0.5, -1.0}, {2.0, 0.5, kNaN}, {2.0, -kInf, 1.0}, {-1.0, 0.0, 1.0}, {2.0, 0.5, -kInf},
  };
  const std::vector<double> bad_momentum{-0.1, 1.0000001, kNaN, kInf, -kInf};
  REQUIRE(bn_set_training(a.get(), 1) == BN_OK);
  REQUIRE(bn_set_training(b.get(), 1) == BN_OK);
  DataGen gen(88);
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    for (const Clip& k : bad_clipping) {
      INFO("rmax " << k.rmax << " rmin " << k.rmin << " dmax " << k.dmax);
      const bn_status st = bn_set_renorm_clipping(a.get(), k.rmax, k.rmin, k.dmax);
      INFO(status_text(st));
      CHECK(st == BN_ERR_INVALID_ARGUMENT);
      CHECK(std::string(bn_last_error()).find("bn_set_renorm_clipping") != std::string::npos);
    }
    for (const double m : bad_momentum) {
      INFO("renorm_momentum " << m);
      CHECK(bn_set_renorm_momentum(a.get(), m) == BN_ERR_INVALID_ARGUMENT);
    }
    const std::vector<double> x = gen.per_feature(shape, {false, true, false}, 2.0, 0.2, 3.0, dtype);
    const std::vector<double> dy = gen.normal(x.size(), 0.0, 1.0, dtype);
    std::vector<double> ya, yb, dxa, dxb, dga, dgb, dba, dbb;
    REQUIRE(a.forward(shape, x, ya) == BN_OK);
    REQUIRE(b.forward(shape, x, yb) == BN_OK);
    CHECK(ya == yb);
    for (const bn_param p : {BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE, BN_PARAM_RENORM_MEAN,
                             BN_PARAM_RENORM_STDDEV, BN_PARAM_MOVING_STDDEV}) {
      CHECK(a.param(p) == b.param(p));
    }
    REQUIRE(a.backward(shape, x, dy, dxa, dga, dba) == BN_OK);
    REQUIRE(b.backward(shape, x, dy, dxb, dgb, dbb) == BN_OK);
    CHECK(dxa == dxb);
    CHECK(dga == dgb);
  }
  // The edges are accepted: rmin == rmax, dmax 0, infinite rmax/dmax, momentum 0 and 1.
  CHECK(bn_set_renorm_clipping(a.get(), 1.0, 1.0, 0.0) == BN_OK);
  CHECK(bn_set_renorm_clipping(a.get(), kInf, 0.0, kInf) == BN_OK);
  CHECK(bn_set_renorm_momentum(a.get(), 0.0) == BN_OK);
  CHECK(bn_set_renorm_momentum(a.get(), 1.0) == BN_OK);

  // The config setter: refused, and the config keeps its previous renorm setting.
  for (const Clip& k : bad_clipping) {
    bn_config* c = nullptr;
    REQUIRE(make_config(cfg, &c) == BN_OK);
    const bn_status st = bn_config_set_renorm(c, 1, k.rmax, k.rmin, k.dmax, 0.5);
    CHECK(st == BN_ERR_INVALID_ARGUMENT);
    CHECK(bn_config_set_renorm(c, 1, 1.2, 0.8, 0.2, 1.5) == BN_ERR_INVALID_ARGUMENT);
    bn_layer* layer = nullptr;
    REQUIRE(bn_create(c, shape.data(), 3, &layer) == BN_OK);
    bn_config_destroy(c);
    REQUIRE(bn_set_training(layer, 1) == BN_OK);
    LibLayer twin;
    REQUIRE(twin.create(cfg, shape) == BN_OK);
    REQUIRE(bn_set_training(twin.get(), 1) == BN_OK);
    const std::vector<double> x = gen.per_feature(shape, {false, true, false}, 2.0, 0.2, 3.0, dtype);
    std::vector<double> yt;
    REQUIRE(twin.forward(shape, x, yt) == BN_OK);
    std::vector<double> y(x.size());
    if (dtype == RefDtype::f64) {
      REQUIRE(bn_forward(layer, shape.data(), 3, x.data(), y.data()) == BN_OK);
    } else {
      std::vector<float> xf(x.begin(), x.end()), yf(x.size());
      REQUIRE(bn_forward(layer, shape.data(), 3, xf.data(), yf.data()) == BN_OK);
      y.assign(yf.begin(), yf.end());
    }
    CHECK(y == yt);
    bn_destroy(layer);
  }
  // Renorm off ignores the other arguments.
  bn_config* c = nullptr;
  REQUIRE(bn_config_create(&c) == BN_OK);
  CHECK(bn_config_set_renorm(c, 0, kNaN, -1.0, -1.0, 7.0) == BN_OK);
  bn_config_destroy(c);
}

// Live clipping reaches the next step: rmax = rmin = 1 and dmax = 0 make r = 1 and d = 0, so
// the output is plain batch normalization, while the renorm statistics still move; then
// renorm momentum 0 makes renorm_mean the batch mean and momentum 1 freezes it.
TEST_CASE("live renorm clipping and momentum take effect at the next step", "[layer][renorm]") {
  RefConfig cfg;
  cfg.axes = {-1};
  cfg.dtype = RefDtype::f64;
  cfg.renorm = {true, 1.1, 0.9, 0.1, 0.9};
  const std::vector<int64_t> shape{6, 2};
  LibLayer lib;
  REQUIRE(lib.create(cfg, shape) == BN_OK);
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
  DataGen gen(99);
  const std::vector<double> x = gen.per_feature(shape, {false, true}, 3.0, 2.0, 3.0, RefDtype::f64);
  std::vector<double> mean(2, 0.0), var(2, 0.0);
  for (size_t i = 0; i < x.size(); ++i) mean[i % 2] += x[i] / 6;
  for (size_t i = 0; i < x.size(); ++i) var[i % 2] += (x[i] - mean[i % 2]) * (x[i] - mean[i % 2]) / 6;
  std::vector<double> plain(x.size());
  for (size_t i = 0; i < x.size(); ++i) plain[i] = (x[i] - mean[i % 2]) / std::sqrt(var[i % 2] + 1e-3);

  std::vector<double> y;
  REQUIRE(lib.forward(shape, x, y) == BN_OK);
  CHECK_FALSE(compare_rel("clipped renorm differs from plain", y, plain, 1e-3).ok);
  REQUIRE(bn_set_renorm_clipping(lib.get(), 1.0, 1.0, 0.0) == BN_OK);
  const std::vector<double> rm_before = lib.param(BN_PARAM_RENORM_MEAN);
  REQUIRE(lib.forward(shape, x, y) == BN_OK);
  const Comparison same = compare_rel("r = 1, d = 0 gives plain batch norm", y, plain, 1e-13, 1e-13);
  INFO(same.message);
  CHECK(same.ok);
  CHECK(lib.param(BN_PARAM_RENORM_MEAN) != rm_before);

  REQUIRE(bn_set_renorm_momentum(lib.get(), 0.0) == BN_OK);
  REQUIRE(lib.forward(shape, x, y) == BN_OK);
  const Comparison rm = compare_rel("renorm momentum 0: renorm_mean = batch mean", lib.param(BN_PARAM_RENORM_MEAN),
                                    mean, 1e-14, 1e-14);
  INFO(rm.message);
  CHECK(rm.ok);
  REQUIRE(bn_set_renorm_momentum(lib.get(), 1.0) == BN_OK);
  const std::vector<double> frozen = lib.param(BN_PARAM_RENORM_MEAN), frozen_sd = lib.param(BN_PARAM_RENORM_STDDEV);
  const std::vector<double> x2 = gen.per_feature(shape, {false, true}, 3.0, 2.0, 3.0, RefDtype::f64);
  REQUIRE(lib.forward(shape, x2, y) == BN_OK);
  CHECK(lib.param(BN_PARAM_RENORM_MEAN) == frozen);
  CHECK(lib.param(BN_PARAM_RENORM_STDDEV) == frozen_sd);
}

}  // namespace
}  // namespace bn_test
