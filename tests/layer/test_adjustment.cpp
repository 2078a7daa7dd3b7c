// Keras `adjustment` (SEMANTICS B.4, B.5, B.7): the Keras testAdjustment scenario by hand,
// the callback protocol (once per batch-statistics forward, with the input's shape, on 1 and
// 0; never in inference, nor for a frozen V2 layer), failure (BN_ERR_CALLBACK and nothing
// changed, the previous forward still differentiable) and finite differences.
// The sweep of adjustment with and without renorm over layouts is in test_renorm.cpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "compare.hpp"
#include "data_gen.hpp"
#include "lib_layer.hpp"
#include "reference.hpp"
#include "twin.hpp"

namespace bn_test {
namespace {

void expect(const Comparison& c) {
  INFO(c.message);
  CHECK(c.ok);
}

// keras/legacy_tf_layers/normalization_test.py testAdjustment: shape (4, 3), axis 1,
// momentum 0.99, gamma 2, beta 3, adj_scale ~ U(0.5, 1.5), adj_bias ~ U(-0.2, 0.2);
//   y_train = ((x - mean)/(variance + eps)**0.5 * adj_scale + adj_bias) * gamma + beta
//   y_test  = ((x - moving_mean)/(moving_variance + eps)**0.5 * gamma) + beta
// with the biased variance in the EMA (adjustment forces the non-fused path).
TEST_CASE("Keras testAdjustment", "[layer][adjustment]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  const double mu = 0.99, gamma = 2.0, beta = 3.0, eps = 0.001;
  const int64_t n_rows = 4, c = 3;
  RefConfig cfg;
  cfg.axes = {1};
  cfg.momentum = mu;
  cfg.epsilon = eps;
  cfg.dtype = dtype;
  cfg.adjustment = true;
  const std::vector<int64_t> shape{n_rows, c};
  LibLayer lib;
  REQUIRE(lib.create(cfg, shape) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_GAMMA, std::vector<double>(c, gamma)) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_BETA, std::vector<double>(c, beta)) == BN_OK);
  DataGen gen(505);
  const std::vector<double> as = gen.uniform_vector(c, 0.5, 1.5, RefDtype::f64);
  const std::vector<double> ab = gen.uniform_vector(c, -0.2, 0.2, RefDtype::f64);
  lib.adjustment().scale = as;
  lib.adjustment().bias = ab;
  const double atol = dtype == RefDtype::f32 ? 1e-5 : 1e-12;
  std::vector<double> mm(c, 0.0), mv(c, 1.0);
  for (int step = 0; step < 5; ++step) {
    INFO("step " << step);
    const std::vector<double> x = gen.uniform_vector(n_rows * c, 0.0, 1.0, dtype);
    std::vector<double> mean(c, 0.0), var(c, 0.0);
    for (int64_t n = 0; n < n_rows; ++n) {
      for (int64_t f = 0; f < c; ++f) mean[f] += x[n * c + f] / n_rows;
    }
    for (int64_t n = 0; n < n_rows; ++n) {
      for (int64_t f = 0; f < c; ++f) var[f] += (x[n * c + f] - mean[f]) * (x[n * c + f] - mean[f]) / n_rows;
    }
    std::vector<double> y_train(n_rows * c), y_test(n_rows * c);
    for (int64_t f = 0; f < c; ++f) {
      mm[f] += (mean[f] - mm[f]) * (1.0 - mu);
      mv[f] += (var[f] - mv[f]) * (1.0 - mu);
      for (int64_t n = 0; n < n_rows; ++n) {
        const double xv = x[n * c + f];
        y_train[n * c + f] = ((xv - mean[f]) / std::sqrt(var[f] + eps) * as[f] + ab[f]) * gamma + beta;
        y_test[n * c + f] = (xv - mm[f]) / std::sqrt(mv[f] + eps) * gamma + beta;
      }
    }
    std::vector<double> y;
    REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
    REQUIRE(lib.forward(shape, x, y) == BN_OK);
    expect(compare_rel("training y", y, y_train, 0.0, atol));
    REQUIRE(bn_set_training(lib.get(), 0) == BN_OK);
    REQUIRE(lib.forward(shape, x, y) == BN_OK);
    expect(compare_rel("inference y", y, y_test, 0.0, atol));
    expect(compare_rel("moving_mean", lib.param(BN_PARAM_MOVING_MEAN), mm, 0.0, atol / 10));
    expect(compare_rel("moving_variance", lib.param(BN_PARAM_MOVING_VARIANCE), mv, 0.0, atol / 10));
  }
  CHECK(lib.adjustment().calls == 5);  // the training forwards only
}

// The protocol: once per forward that normalizes with the batch statistics, with x's shape
// and the number of features, scale and bias arriving as 1 and 0. Keras skips the whole
// adjustment block when training is False, which is also what a frozen V2 layer runs.
TEST_CASE("adjustment is called once per training forward, never in inference", "[layer][adjustment]") {
  const RefRules rules = GENERATE(RefRules::v1, RefRules::v2);
  INFO((rules == RefRules::v1 ? "V1" : "V2"));
  RefConfig cfg;
  cfg.axes = {1, 3};
  cfg.rules = rules;
  cfg.adjustment = true;
  const std::vector<int64_t> shape{2, 3, 2, 2};
  LibLayer lib;
  REQUIRE(lib.create(cfg, shape) == BN_OK);
  AdjustmentSource& adj = lib.adjustment();
  adj.scale = {0.5, 0.6, 0.7, 0.8, 0.9, 1.0};
  DataGen gen(606);
  std::vector<double> y, dx, dg, db;
  const std::vector<double> x = gen.normal(24, 0.0, 1.0, RefDtype::f32), dy = gen.normal(24, 0.0, 1.0, RefDtype::f32);

  REQUIRE(lib.forward(shape, x, y) == BN_OK);  // a new layer is in inference mode
  REQUIRE(lib.backward(shape, x, dy, dx, dg, db) == BN_OK);
  CHECK(adj.calls == 0);
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
  for (int64_t n : {2, 5, 1}) {
    const std::vector<int64_t> s{n, 3, 2, 2};
    const std::vector<double> xs = gen.normal(static_cast<size_t>(n) * 12, 0.0, 1.0, RefDtype::f32);
    const int before = adj.calls;
    REQUIRE(lib.forward(s, xs, y) == BN_OK);
    CHECK(adj.calls == before + 1);
    CHECK(adj.last_shape == s);
    CHECK(adj.last_features == 6);
    REQUIRE(lib.backward(s, xs, std::vector<double>(xs.size(), 1.0), dx, dg, db) == BN_OK);
    CHECK(adj.calls == before + 1);  // the backward uses the saved values
  }
  CHECK(adj.arrived_identity);
  const int trained = adj.calls;
  REQUIRE(bn_set_training(lib.get(), 0) == BN_OK);
  REQUIRE(lib.forward(shape, x, y) == BN_OK);
  CHECK(adj.calls == trained);

  // trainable = 0 in training mode: a frozen V2 layer runs in inference (no call); V1 trains.
  REQUIRE(bn_set_trainable(lib.get(), 0) == BN_OK);
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
  REQUIRE(lib.forward(shape, x, y) == BN_OK);
  CHECK(adj.calls == trained + (rules == RefRules::v1 ? 1 : 0));
  // The mode flags: called exactly when BN_MODE_BATCH_STATISTICS is set.
  for (int flags = 0; flags < 8; ++flags) {
    INFO("flags " << flags);
    REQUIRE(bn_set_mode(lib.get(), flags) == BN_OK);
    const int before = adj.calls;
    REQUIRE(lib.forward(shape, x, y) == BN_OK);
    CHECK(adj.calls == before + ((flags & BN_MODE_BATCH_STATISTICS) ? 1 : 0));
  }
}

// ---------------------------------------------------------------------------
// Failure: BN_ERR_CALLBACK naming bn_forward; y, every parameter and statistic bitwise
// unchanged; the previous forward's backward equals that of a twin that never saw the call.
template <class T>
void check_failure(bool renorm, bool nonfinite, bn_status result) {
  const RefDtype dtype = std::is_same<T, double>::value ? RefDtype::f64 : RefDtype::f32;
  RefConfig cfg;
  cfg.axes = {1};
  cfg.dtype = dtype;
  cfg.momentum = 0.5;
  cfg.adjustment = true;
  cfg.renorm.enabled = renorm;
  cfg.renorm.rmax = 1.5;
  cfg.renorm.rmin = 0.5;
  cfg.renorm.dmax = 0.5;
  const std::vector<int64_t> shape{4, 3, 5};
  LibLayer a, b;
  REQUIRE(a.create(cfg, shape) == BN_OK);
  REQUIRE(b.create(cfg, shape) == BN_OK);
  for (LibLayer* l : {&a, &b}) {
    l->adjustment().scale = {0.7, 1.3, -0.9};
    l->adjustment().bias = {0.1, -0.2, 0.3};
    REQUIRE(bn_set_training(l->get(), 1) == BN_OK);
  }
  DataGen gen(707);
  const std::vector<bool> kept{false, true, false};
  std::vector<double> y, ya, yb;
  // Two good steps on both, so that every statistic has moved.
  std::vector<double> x;
  for (int step = 0; step < 2; ++step) {
    x = gen.per_feature(shape, kept, 2.0, 0.5, 2.0, dtype);
    REQUIRE(a.forward(shape, x, ya) == BN_OK);
    REQUIRE(b.forward(shape, x, yb) == BN_OK);
  }
  std::vector<bn_param> all{BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE,
                            BN_PARAM_BATCH_MEAN, BN_PARAM_BATCH_VARIANCE};
  if (renorm) all.insert(all.end(), {BN_PARAM_RENORM_MEAN, BN_PARAM_RENORM_STDDEV, BN_PARAM_MOVING_STDDEV});
  std::vector<std::vector<double>> before;
  for (bn_param p : all) before.push_back(a.param(p));

  // The failing call, on another batch size, with a sentinel in y; once out of place and
  // once in place (y == x, which must then still hold x).
  if (nonfinite) {
    a.adjustment().scale = {0.7, std::numeric_limits<double>::quiet_NaN(), -0.9};
  } else {
    a.adjustment().result = result;
  }
  const std::vector<int64_t> other{6, 3, 5};
  const std::vector<double> xo = gen.per_feature(other, kept, 2.0, 0.5, 2.0, dtype);
  std::vector<T> xt(xo.begin(), xo.end()), yt(xo.size());
  for (size_t i = 0; i < yt.size(); ++i) yt[i] = static_cast<T>(-1234.5 - static_cast<double>(i));
  const auto y_bytes = bytes_of(yt), x_bytes = bytes_of(xt);
  const int calls = a.adjustment().calls;
  bn_status st = bn_forward(a.get(), other.data(), 3, xt.data(), yt.data());
  INFO(status_text(st));
  if (nonfinite) {
    CHECK((st == BN_ERR_CALLBACK || st == BN_ERR_NONFINITE));
  } else {
    CHECK(st == BN_ERR_CALLBACK);
  }
  CHECK(std::string(bn_last_error()).find("bn_forward") != std::string::npos);
  CHECK(a.adjustment().calls == calls + 1);
  CHECK(bytes_of(yt) == y_bytes);
  CHECK(bytes_of(xt) == x_bytes);
  st = bn_forward(a.get(), other.data(), 3, xt.data(), xt.data());
  CHECK(st != BN_OK);
  CHECK(bytes_of(xt) == x_bytes);
  for (size_t k = 0; k < all.size(); ++k) {
    INFO("param " << all[k]);
    CHECK(bytes_of(a.param(all[k])) == bytes_of(before[k]));
  }

  // The previous forward is still the one bn_backward differentiates.
  const std::vector<double> dy = gen.normal(x.size(), 0.0, 1.0, dtype);
  std::vector<double> dxa, dga, dba, dxb, dgb, dbb;
  st = a.backward(shape, x, dy, dxa, dga, dba);
  INFO("backward after the failure: " << status_text(st));
  REQUIRE(st == BN_OK);
  REQUIRE(b.backward(shape, x, dy, dxb, dgb, dbb) == BN_OK);
  CHECK(bytes_of(dxa) == bytes_of(dxb));
  CHECK(bytes_of(dga) == bytes_of(dgb));
  CHECK(bytes_of(dba) == bytes_of(dbb));
  // And a backward for the failed call's shape is refused (it was never saved).
  std::vector<double> dxo, dgo, dbo;
  CHECK(a.backward(other, xo, std::vector<double>(xo.size(), 1.0), dxo, dgo, dbo) == BN_ERR_STATE);

  // Once the callback works again, the layer goes on exactly as the twin.
  a.adjustment().result = BN_OK;
  a.adjustment().scale = b.adjustment().scale;
  x = gen.per_feature(shape, kept, 2.0, 0.5, 2.0, dtype);
  REQUIRE(a.forward(shape, x, ya) == BN_OK);
  REQUIRE(b.forward(shape, x, yb) == BN_OK);
  CHECK(bytes_of(ya) == bytes_of(yb));
  for (bn_param p : all) CHECK(bytes_of(a.param(p)) == bytes_of(b.param(p)));
}

TEST_CASE("a failing adjustment callback fails the forward and changes nothing", "[layer][adjustment]") {
  const bool renorm = GENERATE(false, true);
  const bn_status result = GENERATE(BN_ERR_INTERNAL, BN_ERR_INVALID_ARGUMENT, 42, -1);
  INFO((renorm ? "with renorm" : "without renorm") << ", callback returns " << result);
  check_failure<float>(renorm, false, result);
  check_failure<double>(renorm, false, result);
}

// The header promises only that a non-BN_OK return fails; a NaN scale must not be used
// either (the library reports it as a callback failure; BN_ERR_NONFINITE would do as well).
TEST_CASE("a non-finite adjustment fails the forward and changes nothing", "[layer][adjustment]") {
  const bool renorm = GENERATE(false, true);
  INFO((renorm ? "with renorm" : "without renorm"));
  check_failure<float>(renorm, true, BN_OK);
  check_failure<double>(renorm, true, BN_OK);
}

// ---------------------------------------------------------------------------
// Finite differences (f64): the adjustment does not depend on x (it gets only the shape), so
// the layer's own training forward is differentiated, through the batch mean and variance.
// dL/dgamma = sum dy*(a_s*xhat + a_b) and dx scales with g*a_s (B.7).

TEST_CASE("adjustment finite differences", "[layer][adjustment][gradients]") {
  struct Case {
    std::vector<int64_t> shape;
    std::vector<int> axes;
    bool center, scale;
  };
  const std::vector<Case> cases{
      {{5, 3}, {-1}, true, true},      {{3, 2, 2, 2}, {1}, true, true},  {{2, 2, 2, 3}, {-1}, true, true},
      {{3, 2, 2, 3}, {1, 3}, true, true}, {{4, 3}, {0}, true, true},     {{6, 2}, {-1}, false, true},
      {{3, 2, 2}, {1}, true, false},
  };
  const size_t which = GENERATE(range(size_t{0}, size_t{7}));
  const Case& gc = cases[which];
  INFO("case " << which << " shape " << describe_shape(gc.shape));
  RefConfig cfg;
  cfg.axes = gc.axes;
  cfg.center = gc.center;
  cfg.scale = gc.scale;
  cfg.dtype = RefDtype::f64;
  cfg.adjustment = true;
  LibLayer lib;
  REQUIRE(lib.create(cfg, gc.shape) == BN_OK);
  const size_t c = static_cast<size_t>(lib.features());
  const size_t n = static_cast<size_t>(element_count(gc.shape));
  DataGen gen(808 + which);
  std::vector<double> x = gen.normal(n, 0.5, 1.0, RefDtype::f64);
  const std::vector<double> w = gen.normal(n, 0.0, 1.0, RefDtype::f64);
  std::vector<double> gamma = gen.uniform_vector(c, 0.5, 2.0, RefDtype::f64);
  std::vector<double> beta = gen.uniform_vector(c, -1.0, 1.0, RefDtype::f64);
  std::vector<double> as = gen.uniform_vector(c, -1.5, 1.5, RefDtype::f64);
  lib.adjustment().scale = as;
  lib.adjustment().bias = gen.uniform_vector(c, -0.5, 0.5, RefDtype::f64);
  if (gc.scale) REQUIRE(lib.set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
  if (gc.center) REQUIRE(lib.set_param(BN_PARAM_BETA, beta) == BN_OK);
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);

  std::vector<double> y, dx, dgamma, dbeta;
  REQUIRE(lib.forward(gc.shape, x, y) == BN_OK);
  REQUIRE(lib.backward(gc.shape, x, w, dx, dgamma, dbeta) == BN_OK);
  auto lib_loss = [&]() {
    std::vector<double> yy;
    REQUIRE(lib.forward(gc.shape, x, yy) == BN_OK);
    double l = 0.0;
    for (size_t i = 0; i < n; ++i) l += w[i] * yy[i];
    return l;
  };
  std::vector<double> fd_dx(n), fd_dg(c, 0.0), fd_db(c, 0.0);
  for (size_t i = 0; i < n; ++i) fd_dx[i] = central_difference(x, i, lib_loss);
  for (size_t f = 0; f < c && gc.scale; ++f) {
    fd_dg[f] = central_difference(gamma, f, [&]() {
      REQUIRE(lib.set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
      return lib_loss();
    });
  }
  if (gc.scale) REQUIRE(lib.set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
  for (size_t f = 0; f < c && gc.center; ++f) {
    fd_db[f] = central_difference(beta, f, [&]() {
      REQUIRE(lib.set_param(BN_PARAM_BETA, beta) == BN_OK);
      return lib_loss();
    });
  }
  const double rel = 1e-6;
  expect(compare_rel("dx vs finite differences", dx, fd_dx, rel, rel));
  expect(compare_rel("dgamma vs finite differences", dgamma, fd_dg, rel, rel));
  expect(compare_rel("dbeta vs finite differences", dbeta, fd_db, rel, rel));

  // The reference model agrees (a second, independent analytic gradient).
  RefLayer ref(cfg, gc.shape);
  if (gc.scale) ref.set_gamma(gamma);
  if (gc.center) ref.set_beta(beta);
  ref.set_adjustment(as, lib.adjustment().bias);
  ref.set_training(true);
  ref.forward(gc.shape, x);
  const RefGrads rg = ref.backward(gc.shape, x, w);
  expect(compare_rel("reference dx vs finite differences", rg.dx, fd_dx, rel, rel));
  expect(compare_rel("reference dgamma vs finite differences", rg.dgamma, fd_dg, rel, rel));
}

}  // namespace
}  // namespace bn_test
