// The Keras behaviours of SEMANTICS B.1, B.2, B.5 and B.11 as concrete scenarios, with
// hand-derived expectations (the numbers are worked out in the comments), plus the
// library's documented options (single-value policy, cumulative average, moving-variance
// override, empty batches).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "compare.hpp"
#include "data_gen.hpp"
#include "lib_layer.hpp"
#include "reference.hpp"

namespace bn_test {
namespace {

constexpr double kClamp = 1.001e-5;

RefConfig config(std::vector<int> axes, double momentum, double epsilon, RefRules rules = RefRules::v1) {
  RefConfig c;
  c.axes = std::move(axes);
  c.momentum = momentum;
  c.epsilon = epsilon;
  c.rules = rules;
  return c;
}

void make(LibLayer& lib, const RefConfig& cfg, const std::vector<int64_t>& shape) {
  const bn_status st = lib.create(cfg, shape);
  INFO(describe(cfg) << " shape " << describe_shape(shape) << ": " << status_text(st));
  REQUIRE(st == BN_OK);
}

void set_all(LibLayer& lib, bn_param which, double value) {
  REQUIRE(lib.set_param(which, std::vector<double>(static_cast<size_t>(lib.features()), value)) == BN_OK);
}

void train(LibLayer& lib, const std::vector<int64_t>& shape, const std::vector<double>& x, std::vector<double>& y) {
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
  const bn_status st = lib.forward(shape, x, y);
  INFO(status_text(st));
  REQUIRE(st == BN_OK);
}

// x of a tensor whose dims are all 2: 0 where the index along `dim` is 0, 2 where it is 1.
// Every feature then sees as many 0s as 2s: batch mean 1, biased variance exactly 1.
std::vector<double> zero_two(const std::vector<int64_t>& shape, int dim) {
  const int64_t n = element_count(shape);
  int64_t stride = 1;
  for (size_t d = static_cast<size_t>(dim) + 1; d < shape.size(); ++d) stride *= shape[d];
  std::vector<double> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] = ((i / stride) % 2) ? 2.0 : 0.0;
  return x;
}

// ---------------------------------------------------------------------------
TEST_CASE("Keras test_bessels_correction: fused 4D and 5D", "[layer][keras]") {
  // x = [0, 2], momentum .5, moving variance initialized to 0. Fused: var_B*m/(m-1) = 1*2/1 = 2,
  // and 0.5*0 + 0.5*2 = 1.0 ("The variance of [0, 2] is 2 with Bessel's correction").
  const RefRules rules = GENERATE(RefRules::v1, RefRules::v2);
  const std::vector<int64_t> shape = GENERATE(std::vector<int64_t>{2, 1, 1, 1}, std::vector<int64_t>{2, 1, 1, 1, 1});
  CAPTURE(rules == RefRules::v1 ? "V1" : "V2", describe_shape(shape));
  LibLayer lib;
  make(lib, config({-1}, 0.5, 1e-3, rules), shape);
  CHECK(lib.fused() == 1);
  set_all(lib, BN_PARAM_MOVING_VARIANCE, 0.0);
  std::vector<double> y;
  train(lib, shape, {0.0, 2.0}, y);
  CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == std::vector<double>{1.0});
  CHECK(lib.param(BN_PARAM_MOVING_MEAN) == std::vector<double>{0.5});  // 0.5*0 + 0.5*1
  CHECK(lib.param(BN_PARAM_BATCH_VARIANCE) == std::vector<double>{1.0});  // normalization: biased
}

TEST_CASE("Keras non-fused 2D: the biased variance feeds the moving variance", "[layer][keras]") {
  // x = [0, 2] of shape (2, 1), momentum .5: 0 - (0 - 1)*(1 - .5) = 0.5.
  const RefRules rules = GENERATE(RefRules::v1, RefRules::v2);
  LibLayer lib;
  make(lib, config({-1}, 0.5, 1e-3, rules), {2, 1});
  CHECK(lib.fused() == 0);
  set_all(lib, BN_PARAM_MOVING_VARIANCE, 0.0);
  std::vector<double> y;
  train(lib, {2, 1}, {0.0, 2.0}, y);
  CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == std::vector<double>{0.5});
  // y = (x - 1)/sqrt(1 + 1e-3) (non-fused: no clamp), in float.
  const double s = 1.0 / std::sqrt(1.0 + 1e-3);
  CHECK(compare_rel("y", y, {-s, s}, 1e-7).ok);
}

// ---------------------------------------------------------------------------
// The fused decision (B.1, B.11 items 1, 2, 10), by hand.
enum class Expect { fused, non_fused, refused };

struct DecisionCase {
  RefRules rules;
  RefFused fused;
  int rank;
  std::vector<int> axes;
  RefDtype dtype;
  Expect expect;
};

std::string describe(const DecisionCase& d) {
  RefConfig c;
  c.axes = d.axes;
  c.rules = d.rules;
  c.fused = d.fused;
  c.dtype = d.dtype;
  return describe(c) + " rank " + std::to_string(d.rank);
}

std::vector<DecisionCase> decision_table() {
  using R = RefRules;
  using F = RefFused;
  const RefDtype f32 = RefDtype::f32, f64 = RefDtype::f64;
  const Expect Y = Expect::fused, N = Expect::non_fused, X = Expect::refused;
  return {
      // V1: fused=None means "prefer fused"; the axes are checked after normalization, so
      // anything unsupported falls back silently.
      {R::v1, F::automatic, 4, {-1}, f32, Y}, {R::v1, F::automatic, 4, {3}, f32, Y},
      {R::v1, F::automatic, 4, {1}, f32, Y},  {R::v1, F::automatic, 4, {-3}, f32, Y},
      {R::v1, F::automatic, 4, {-4}, f32, N}, {R::v1, F::automatic, 4, {0}, f32, N},
      {R::v1, F::automatic, 4, {2}, f32, N},  {R::v1, F::automatic, 4, {-2}, f32, N},
      {R::v1, F::on, 4, {-4}, f32, N},        {R::v1, F::on, 4, {2}, f32, N},
      {R::v1, F::on, 2, {-1}, f32, N},        {R::v1, F::on, 3, {-1}, f32, N},
      {R::v1, F::automatic, 2, {-1}, f32, N}, {R::v1, F::automatic, 3, {-1}, f32, N},
      {R::v1, F::automatic, 5, {-1}, f32, Y}, {R::v1, F::automatic, 5, {4}, f32, Y},
      {R::v1, F::automatic, 5, {1}, f32, Y},  {R::v1, F::automatic, 5, {-4}, f32, Y},
      {R::v1, F::automatic, 5, {3}, f32, N},  {R::v1, F::automatic, 5, {-2}, f32, N},
      {R::v1, F::automatic, 5, {2}, f32, N},  {R::v1, F::automatic, 5, {-5}, f32, N},
      {R::v1, F::off, 4, {-1}, f32, N},       {R::v1, F::automatic, 4, {1, 3}, f32, N},
      {R::v1, F::on, 4, {1, 3}, f32, N},      {R::v1, F::automatic, 4, {-1}, f64, N},
      {R::v1, F::on, 4, {-1}, f64, N},
      // V2: the axes as given are checked in __init__; build() raises for rank 4.
      {R::v2, F::automatic, 4, {-1}, f32, Y}, {R::v2, F::automatic, 4, {3}, f32, Y},
      {R::v2, F::automatic, 4, {1}, f32, Y},  {R::v2, F::automatic, 4, {-3}, f32, Y},
      {R::v2, F::automatic, 4, {-4}, f32, X},  // -4 passes __init__, is axis 0 in build: raises
      {R::v2, F::automatic, 4, {0}, f32, N},   // 0 is not in (-4,-3,-1,1,3,4): fused=False in __init__
      {R::v2, F::automatic, 4, {2}, f32, N},  {R::v2, F::automatic, 4, {-2}, f32, N},
      {R::v2, F::on, 4, {-1}, f32, Y},        {R::v2, F::on, 4, {1}, f32, Y},
      {R::v2, F::on, 4, {-4}, f32, X},        {R::v2, F::on, 4, {0}, f32, X},
      {R::v2, F::on, 4, {2}, f32, X},         {R::v2, F::on, 4, {-2}, f32, X},
      {R::v2, F::on, 2, {-1}, f32, X},        {R::v2, F::on, 3, {-1}, f32, X},
      {R::v2, F::automatic, 2, {-1}, f32, N}, {R::v2, F::automatic, 3, {-1}, f32, N},
      {R::v2, F::automatic, 5, {-1}, f32, Y}, {R::v2, F::automatic, 5, {4}, f32, Y},
      {R::v2, F::automatic, 5, {1}, f32, Y},  {R::v2, F::automatic, 5, {-4}, f32, Y},
      {R::v2, F::automatic, 5, {3}, f32, N},   // rank 5, unsupported axis: silently non-fused
      {R::v2, F::automatic, 5, {-3}, f32, N},  // -3 passes __init__, is axis 2: silent
      {R::v2, F::automatic, 5, {-2}, f32, N}, {R::v2, F::automatic, 5, {2}, f32, N},
      {R::v2, F::on, 5, {3}, f32, N},         {R::v2, F::on, 5, {-3}, f32, N},
      {R::v2, F::on, 5, {-4}, f32, Y},        {R::v2, F::on, 5, {4}, f32, Y},
      {R::v2, F::on, 5, {2}, f32, X},         {R::v2, F::on, 5, {-2}, f32, X},
      {R::v2, F::on, 5, {0}, f32, X},         {R::v2, F::on, 5, {-5}, f32, X},
      {R::v2, F::off, 4, {-4}, f32, N},       {R::v2, F::off, 2, {-1}, f32, N},
      {R::v2, F::automatic, 4, {1, 3}, f32, N}, {R::v2, F::on, 4, {1, 3}, f32, X},
      {R::v2, F::automatic, 4, {-1}, f64, N}, {R::v2, F::on, 4, {-1}, f64, X},
      {R::v2, F::off, 4, {-1}, f64, N},
  };
}

// Observable consequences of the decision on a layer whose dims are all 2:
//  * Bessel: momentum .5, moving variance 0, data 0/2 per feature (biased variance 1):
//    moving variance 0.5*m/(m-1) when fused, 0.5 otherwise.
//  * Clamp: epsilon 1e-8, moving mean 0, moving variance 0, x = 1 in inference:
//    y = 1/sqrt(1.001e-5) when fused, 1/sqrt(1e-8) = 1e4 otherwise.
void check_observables(const RefConfig& base, int rank, bool fused) {
  RefConfig cfg = base;
  cfg.momentum = 0.5;
  cfg.epsilon = 1e-8;
  const std::vector<int64_t> shape(static_cast<size_t>(rank), 2);
  const std::vector<int> kept_dims = validate_axes(cfg.axes, rank);
  int reduced = 0;
  while (std::find(kept_dims.begin(), kept_dims.end(), reduced) != kept_dims.end()) ++reduced;
  const int64_t c = int64_t{1} << kept_dims.size();
  const int64_t m = element_count(shape) / c;

  LibLayer lib;
  make(lib, cfg, shape);
  set_all(lib, BN_PARAM_MOVING_VARIANCE, 0.0);
  std::vector<double> y;
  train(lib, shape, zero_two(shape, reduced), y);
  const double bessel = fused ? static_cast<double>(m) / static_cast<double>(m - 1) : 1.0;
  const double rel = cfg.dtype == RefDtype::f32 ? 1e-6 : 1e-14;
  CHECK(compare_rel("moving_variance", lib.param(BN_PARAM_MOVING_VARIANCE),
                    std::vector<double>(static_cast<size_t>(c), 0.5 * bessel), rel)
            .ok);

  REQUIRE(bn_set_training(lib.get(), 0) == BN_OK);
  set_all(lib, BN_PARAM_MOVING_MEAN, 0.0);
  set_all(lib, BN_PARAM_MOVING_VARIANCE, 0.0);
  std::vector<double> ones(static_cast<size_t>(element_count(shape)), 1.0);
  REQUIRE(lib.forward(shape, ones, y) == BN_OK);
  const double want = 1.0 / std::sqrt(fused ? kClamp : 1e-8);
  CHECK(compare_rel("inference y", y, std::vector<double>(ones.size(), want), rel).ok);
}

TEST_CASE("fused decision table (V1/V2 x AUTO/ON/OFF x rank x axes)", "[layer][keras][fused]") {
  for (const DecisionCase& d : decision_table()) {
    INFO(describe(d));
    RefConfig cfg;
    cfg.axes = d.axes;
    cfg.rules = d.rules;
    cfg.fused = d.fused;
    cfg.dtype = d.dtype;
    // The reference model agrees with the hand table...
    const FusedDecision ref = keras_fused_decision(cfg, d.rank);
    CHECK(ref.refused == (d.expect == Expect::refused));
    CHECK(ref.fused == (d.expect == Expect::fused));
    // ...and so does the library, through bn_create and bn_get_fused.
    LibLayer lib;
    const bn_status st = lib.create(cfg, std::vector<int64_t>(static_cast<size_t>(d.rank), 2));
    INFO(status_text(st));
    if (d.expect == Expect::refused) {
      CHECK(st == BN_ERR_INVALID_ARGUMENT);
      continue;
    }
    REQUIRE(st == BN_OK);
    CHECK(lib.fused() == (d.expect == Expect::fused ? 1 : 0));
    check_observables(cfg, d.rank, d.expect == Expect::fused);
  }
}

TEST_CASE("fused decision: every single axis, library vs reference model", "[layer][keras][fused]") {
  for (RefRules rules : {RefRules::v1, RefRules::v2}) {
    for (RefFused fused : {RefFused::automatic, RefFused::on, RefFused::off}) {
      for (int rank = 2; rank <= 5; ++rank) {
        for (int axis = -rank; axis < rank; ++axis) {
          RefConfig cfg;
          cfg.axes = {axis};
          cfg.rules = rules;
          cfg.fused = fused;
          INFO(describe(cfg) << " rank " << rank);
          const FusedDecision ref = keras_fused_decision(cfg, rank);
          LibLayer lib;
          const bn_status st = lib.create(cfg, std::vector<int64_t>(static_cast<size_t>(rank), 2));
          INFO(status_text(st) << "; reference: " << ref.reason);
          if (ref.refused) {
            CHECK(st == BN_ERR_INVALID_ARGUMENT);
            continue;
          }
          REQUIRE(st == BN_OK);
          CHECK(lib.fused() == (ref.fused ? 1 : 0));
          check_observables(cfg, rank, ref.fused);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
TEST_CASE("epsilon clamp on the fused path, inference and training", "[layer][keras]") {
  // NHWC (1, 2, 2, 1) with epsilon 0: fused (default) clamps to 1.001e-5, fused OFF does not.
  const std::vector<int64_t> shape{1, 2, 2, 1};
  const bool fused = GENERATE(true, false);
  CAPTURE(fused);
  RefConfig cfg = config({-1}, 0.99, 0.0);
  cfg.fused = fused ? RefFused::automatic : RefFused::off;
  LibLayer lib;
  make(lib, cfg, shape);
  REQUIRE(lib.fused() == (fused ? 1 : 0));
  const double eps_n = fused ? kClamp : 0.0;

  // Inference: moving mean 0, moving variance 1e-4, x = [1, -1, 2, 0]:
  // y = x/sqrt(1e-4 + eps_n) = 100*x (OFF) or x/sqrt(1.1001e-4) = 95.342...*x (fused).
  set_all(lib, BN_PARAM_MOVING_VARIANCE, 1e-4);
  const std::vector<double> x{1.0, -1.0, 2.0, 0.0};
  std::vector<double> y;
  REQUIRE(lib.forward(shape, x, y) == BN_OK);
  const double k = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(1e-4)) + eps_n);
  CHECK(compare_rel("inference y", y, {k, -k, 2 * k, 0.0}, 1e-6).ok);

  // Training: x = [0, 2e-3, 0, 2e-3]: mean 1e-3, biased variance 1e-6;
  // y = +-1e-3/sqrt(1e-6 + eps_n) = +-1 (OFF) or +-0.301374... (fused).
  const double two_milli = round_to(2e-3, RefDtype::f32);  // as the f32 layer sees it
  train(lib, shape, {0.0, two_milli, 0.0, two_milli}, y);
  const double d = two_milli / 2;
  const double t = d / std::sqrt(d * d + eps_n);
  CHECK(compare_rel("training y", y, {-t, t, -t, t}, 1e-6).ok);
  CHECK(std::fabs(t - (fused ? 0.30137 : 1.0)) < 1e-4);  // the hand values above
}

// ---------------------------------------------------------------------------
TEST_CASE("trainable=False: V2 freezes into inference, V1 keeps training", "[layer][keras]") {
  const RefRules rules = GENERATE(RefRules::v1, RefRules::v2);
  const bool via_setter = GENERATE(false, true);  // config or bn_set_trainable on a live layer
  CAPTURE(rules == RefRules::v1 ? "V1" : "V2", via_setter);
  const std::vector<int64_t> shape{4, 3};
  RefConfig cfg = config({-1}, 0.75, 1e-3, rules);
  cfg.dtype = RefDtype::f64;
  cfg.trainable = via_setter;
  LibLayer lib;
  make(lib, cfg, shape);
  if (via_setter) REQUIRE(bn_set_trainable(lib.get(), 0) == BN_OK);
  const std::vector<double> gamma{1.5, -0.5, 2.0}, beta{0.25, 0.0, -1.0}, mm{0.1, -0.2, 0.3}, mv{0.5, 2.0, 1.0};
  REQUIRE(lib.set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_BETA, beta) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_MOVING_MEAN, mm) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_MOVING_VARIANCE, mv) == BN_OK);
  DataGen gen(11);
  const auto x = gen.normal(12, 1.0, 2.0, RefDtype::f64);
  const auto dy = gen.normal(12, 0.0, 1.0, RefDtype::f64);

  std::vector<double> y_inf, y_train;
  REQUIRE(lib.forward(shape, x, y_inf) == BN_OK);  // a new layer is in inference mode
  train(lib, shape, x, y_train);
  std::vector<double> dx, dg, db;
  REQUIRE(lib.backward(shape, x, dy, dx, dg, db) == BN_OK);
  // A frozen layer reports zero parameter gradients under both rules.
  CHECK(dg == std::vector<double>(3, 0.0));
  CHECK(db == std::vector<double>(3, 0.0));

  std::vector<double> want_dx(12), want_mm = mm, want_mv = mv;
  if (rules == RefRules::v2) {
    // Inference: identical output, nothing updated, dx = dy*g/sqrt(mv + eps).
    CHECK(y_train == y_inf);
    for (size_t i = 0; i < 12; ++i) want_dx[i] = dy[i] * gamma[i % 3] / std::sqrt(mv[i % 3] + 1e-3);
  } else {
    // Training: batch statistics; moving stats move toward them (biased, non-fused).
    std::vector<long double> mean, var;
    std::vector<int64_t> count;
    two_pass_moments(x, {0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2}, 3, mean, var, count);
    for (size_t f = 0; f < 3; ++f) {
      want_mm[f] = 0.75 * mm[f] + 0.25 * static_cast<double>(mean[f]);
      want_mv[f] = 0.75 * mv[f] + 0.25 * static_cast<double>(var[f]);
    }
    CHECK(y_train != y_inf);
    RefLayer ref(cfg, shape);
    ref.set_trainable(false);
    ref.set_gamma(gamma);
    ref.set_beta(beta);
    ref.set_moving_mean(mm);
    ref.set_moving_variance(mv);
    ref.set_training(true);
    const RefForward fw = ref.forward(shape, x);
    CHECK(compare_scaled("y", y_train, fw.y, fw.y_mag, 1e-12).ok);
    want_dx = ref.backward(shape, x, dy).dx;
  }
  CHECK(compare_rel("dx", dx, want_dx, 1e-12, 1e-14).ok);
  CHECK(compare_rel("moving_mean", lib.param(BN_PARAM_MOVING_MEAN), want_mm, 1e-14).ok);
  CHECK(compare_rel("moving_variance", lib.param(BN_PARAM_MOVING_VARIANCE), want_mv, 1e-14).ok);

  // Unfreezing a V2 layer brings training back.
  if (rules == RefRules::v2) {
    REQUIRE(bn_set_trainable(lib.get(), 1) == BN_OK);
    train(lib, shape, x, y_train);
    CHECK(lib.param(BN_PARAM_MOVING_MEAN) != mm);
  }
}

TEST_CASE("training=false is the default: moving statistics, no update", "[layer][keras]") {
  LibLayer lib;
  make(lib, config({1}, 0.99, 1e-3), {2, 3});
  const std::vector<double> x{1.0, 2.0, 3.0, -1.0, -2.0, 0.5};
  std::vector<double> y;
  REQUIRE(lib.forward({2, 3}, x, y) == BN_OK);
  // gamma 1, beta 0, moving mean 0, moving variance 1: y = x/sqrt(1 + 1e-3).
  std::vector<double> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = x[i] / std::sqrt(1.0 + 1e-3);
  CHECK(compare_rel("y", y, want, 1e-7).ok);
  CHECK(lib.param(BN_PARAM_MOVING_MEAN) == std::vector<double>(3, 0.0));
  CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == std::vector<double>(3, 1.0));
  std::vector<double> out;
  CHECK(lib.get_param(BN_PARAM_BATCH_MEAN, out) == BN_ERR_STATE);  // no training forward yet
}

// ---------------------------------------------------------------------------
TEST_CASE("one value per feature: Keras computes it, REJECT refuses it", "[layer][keras]") {
  // (1, 3) non-fused and (1, 1, 1, 3) fused: variance 0 so y = beta; Bessel factor
  // m/max(m-1,1) = 1, so the moving variance becomes mu*1 + (1-mu)*0 = 0.9 either way.
  const std::vector<int64_t> shape = GENERATE(std::vector<int64_t>{1, 3}, std::vector<int64_t>{1, 1, 1, 3});
  CAPTURE(describe_shape(shape));
  const std::vector<double> x{5.0, -7.0, 0.25}, beta{0.5, -1.5, 2.0};

  LibLayer lib;
  make(lib, config({-1}, 0.9, 1e-3), shape);
  REQUIRE(lib.set_param(BN_PARAM_BETA, beta) == BN_OK);
  std::vector<double> y;
  train(lib, shape, x, y);
  CHECK(y == beta);
  CHECK(compare_rel("moving_variance", lib.param(BN_PARAM_MOVING_VARIANCE), std::vector<double>(3, 0.9), 1e-7).ok);
  CHECK(compare_rel("moving_mean", lib.param(BN_PARAM_MOVING_MEAN), {0.5, -0.7, 0.025}, 1e-6).ok);

  RefConfig reject = config({-1}, 0.9, 1e-3);
  reject.reject_single_value = true;
  LibLayer strict;
  make(strict, reject, shape);
  // A valid forward with two rows first, then the refused one: nothing may change, and
  // the earlier forward can still be differentiated.
  std::vector<int64_t> two = shape;
  two[0] = 2;
  const std::vector<double> x2{1.0, 2.0, 3.0, 3.0, 2.0, 1.0};
  train(strict, two, x2, y);
  const auto mm = strict.param(BN_PARAM_MOVING_MEAN), mv = strict.param(BN_PARAM_MOVING_VARIANCE);
  const auto bm = strict.param(BN_PARAM_BATCH_MEAN);
  CHECK(strict.forward(shape, x, y) == BN_ERR_SHAPE);
  CHECK(strict.param(BN_PARAM_MOVING_MEAN) == mm);
  CHECK(strict.param(BN_PARAM_MOVING_VARIANCE) == mv);
  CHECK(strict.param(BN_PARAM_BATCH_MEAN) == bm);
  std::vector<double> dx, dg, db;
  CHECK(strict.backward(two, x2, std::vector<double>(6, 1.0), dx, dg, db) == BN_OK);
  CHECK(db == std::vector<double>(3, 2.0));
  // Inference with one value is fine under REJECT.
  REQUIRE(bn_set_training(strict.get(), 0) == BN_OK);
  CHECK(strict.forward(shape, x, y) == BN_OK);
}

// ---------------------------------------------------------------------------
TEST_CASE("cumulative average: moving statistics are the mean of the batches seen", "[layer][options]") {
  // Non-fused 2D feeds the biased variance, fused NHWC the Bessel-corrected one.
  const bool fused = GENERATE(false, true);
  CAPTURE(fused);
  RefConfig cfg = config({-1}, 0.3, 1e-3);  // momentum is ignored
  cfg.cumulative_average = true;
  cfg.dtype = fused ? RefDtype::f32 : RefDtype::f64;
  LibLayer lib;
  const std::vector<int64_t> build = fused ? std::vector<int64_t>{2, 2, 1, 3} : std::vector<int64_t>{2, 3};
  make(lib, cfg, build);
  REQUIRE(lib.fused() == (fused ? 1 : 0));
  DataGen gen(5);
  std::vector<double> sum_mean(3, 0.0), sum_var(3, 0.0);
  const int64_t batches[] = {2, 5, 3, 7};
  for (int k = 0; k < 4; ++k) {
    std::vector<int64_t> shape = build;
    shape[0] = batches[k];
    const auto x = gen.normal(static_cast<size_t>(element_count(shape)), 1.0, 2.0, cfg.dtype);
    std::vector<long double> mean, var;
    std::vector<int64_t> count;
    std::vector<int64_t> feature(x.size());
    for (size_t i = 0; i < x.size(); ++i) feature[i] = static_cast<int64_t>(i % 3);
    two_pass_moments(x, feature, 3, mean, var, count);
    const double m = static_cast<double>(count[0]);
    for (size_t f = 0; f < 3; ++f) {
      sum_mean[f] += static_cast<double>(mean[f]);
      sum_var[f] += static_cast<double>(var[f]) * (fused ? m / (m - 1) : 1.0);
    }
    std::vector<double> y;
    train(lib, shape, x, y);
    std::vector<double> want_mean(3), want_var(3);
    for (size_t f = 0; f < 3; ++f) {
      want_mean[f] = sum_mean[f] / (k + 1);
      want_var[f] = sum_var[f] / (k + 1);
    }
    INFO("after batch " << k);
    const double rel = fused ? 2e-6 : 1e-13;
    CHECK(compare_rel("moving_mean", lib.param(BN_PARAM_MOVING_MEAN), want_mean, rel, rel).ok);
    CHECK(compare_rel("moving_variance", lib.param(BN_PARAM_MOVING_VARIANCE), want_var, rel).ok);
  }
}

TEST_CASE("moving variance override: BIASED on the fused path, UNBIASED off it", "[layer][options]") {
  // Fused NHWC (2,2,2,2) with BIASED: 0/2 data, m = 8, momentum .5 from 0: 0.5 (not 0.5*8/7);
  // the fused semantics otherwise stay (the epsilon clamp still applies).
  {
    RefConfig cfg = config({-1}, 0.5, 0.0);
    cfg.moving_variance = RefMovingVariance::biased;
    LibLayer lib;
    const std::vector<int64_t> shape{2, 2, 2, 2};
    make(lib, cfg, shape);
    CHECK(lib.fused() == 1);
    set_all(lib, BN_PARAM_MOVING_VARIANCE, 0.0);
    std::vector<double> y;
    train(lib, shape, zero_two(shape, 0), y);
    CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == std::vector<double>(2, 0.5));
    // y = +-1/sqrt(1 + 1.001e-5) with the clamp.
    const double t = 1.0 / std::sqrt(1.0 + kClamp);
    CHECK(std::fabs(std::fabs(y[0]) - t) < 1e-7);
  }
  // Non-fused (2, 1) with UNBIASED: x = [0, 2], momentum .5 from 0: 0.5 * 2 = 1.0.
  {
    RefConfig cfg = config({-1}, 0.5, 1e-3);
    cfg.moving_variance = RefMovingVariance::unbiased;
    LibLayer lib;
    make(lib, cfg, {2, 1});
    CHECK(lib.fused() == 0);
    set_all(lib, BN_PARAM_MOVING_VARIANCE, 0.0);
    std::vector<double> y;
    train(lib, {2, 1}, {0.0, 2.0}, y);
    CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == std::vector<double>{1.0});
  }
}

// ---------------------------------------------------------------------------
TEST_CASE("empty batch: OK, nothing normalized, no statistic changes", "[layer][keras]") {
  const std::vector<int64_t> build = GENERATE(std::vector<int64_t>{4, 3}, std::vector<int64_t>{2, 2, 2, 3});
  CAPTURE(describe_shape(build));
  LibLayer lib;
  make(lib, config({-1}, 0.5, 1e-3), build);
  const std::vector<double> mm{0.5, 1.5, -2.0}, mv{3.0, 0.25, 1.0};
  REQUIRE(lib.set_param(BN_PARAM_MOVING_MEAN, mm) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_MOVING_VARIANCE, mv) == BN_OK);
  std::vector<int64_t> empty = build;
  empty[0] = 0;
  std::vector<double> y;
  train(lib, empty, {}, y);
  CHECK(lib.param(BN_PARAM_MOVING_MEAN) == mm);
  CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == mv);
  std::vector<double> dx, dg, db;
  REQUIRE(lib.backward(empty, {}, {}, dx, dg, db) == BN_OK);
  CHECK(dg == std::vector<double>(3, 0.0));
  CHECK(db == std::vector<double>(3, 0.0));
  REQUIRE(bn_set_training(lib.get(), 0) == BN_OK);
  CHECK(lib.forward(empty, {}, y) == BN_OK);
}

}  // namespace
}  // namespace bn_test
