// Gradients by central finite differences (SEMANTICS B.7), in f64, through the C API.
// Loss L = sum(w * y) with random w, so dL/dy = w is the dy passed to bn_backward.
// In training mode y depends on x through the batch mean and variance; the finite
// differences re-run the training forward, so they differentiate through them too.
//
// Tolerance: |fd - analytic| <= 1e-6 * (1 + |analytic|). With h = 1e-5 the central
// difference has truncation error ~h^2 * |d3L| ~ 1e-9 (the data have unit-scale variance,
// so the third derivatives are O(1)..O(10)) and rounding error ~1e-16 * |L| / h ~ 1e-10;
// a missing or wrong gradient term is O(1/m) of the gradient, i.e. >= 1e-2.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "compare.hpp"
#include "data_gen.hpp"
#include "lib_layer.hpp"
#include "reference.hpp"

namespace bn_test {
namespace {

struct GradCase {
  std::vector<int64_t> shape;
  std::vector<int> axes;
  bool center = true;
  bool scale = true;
};

std::string describe(const GradCase& c) {
  RefConfig cfg;
  cfg.axes = c.axes;
  cfg.center = c.center;
  cfg.scale = c.scale;
  return describe(cfg) + " shape " + describe_shape(c.shape);
}

double loss(const std::vector<double>& w, const std::vector<double>& y) {
  double l = 0.0;
  for (size_t i = 0; i < w.size(); ++i) l += w[i] * y[i];
  return l;
}

// Central difference of f along one coordinate of v (v is restored afterwards).

void check_gradients(const GradCase& gc, bool training) {
  INFO(describe(gc) << (training ? " training" : " inference"));
  RefConfig cfg;
  cfg.axes = gc.axes;
  cfg.center = gc.center;
  cfg.scale = gc.scale;
  cfg.dtype = RefDtype::f64;
  cfg.epsilon = 1e-3;
  LibLayer lib;
  const bn_status st = lib.create(cfg, gc.shape);
  INFO(status_text(st));
  REQUIRE(st == BN_OK);
  const size_t c = static_cast<size_t>(lib.features());
  const size_t n = static_cast<size_t>(element_count(gc.shape));

  DataGen gen(1234 + n + c);
  std::vector<double> x = gen.normal(n, 0.5, 1.0, RefDtype::f64);
  const std::vector<double> w = gen.normal(n, 0.0, 1.0, RefDtype::f64);
  std::vector<double> gamma = gen.uniform_vector(c, 0.5, 2.0, RefDtype::f64);
  std::vector<double> beta = gen.uniform_vector(c, -1.0, 1.0, RefDtype::f64);
  const std::vector<double> mm = gen.uniform_vector(c, -0.5, 0.5, RefDtype::f64);
  const std::vector<double> mv = gen.uniform_vector(c, 0.5, 2.0, RefDtype::f64);
  if (gc.scale) REQUIRE(lib.set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
  if (gc.center) REQUIRE(lib.set_param(BN_PARAM_BETA, beta) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_MOVING_MEAN, mm) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_MOVING_VARIANCE, mv) == BN_OK);
  // Inference forwards change nothing, so every inference loss sees the same moving
  // statistics; training forwards move them, but training y does not depend on them.
  REQUIRE(bn_set_training(lib.get(), training ? 1 : 0) == BN_OK);

  // Analytic gradients: the library, and the reference model as a second opinion.
  std::vector<double> y, dx, dgamma, dbeta;
  REQUIRE(lib.forward(gc.shape, x, y) == BN_OK);
  REQUIRE(lib.backward(gc.shape, x, w, dx, dgamma, dbeta) == BN_OK);
  RefLayer ref(cfg, gc.shape);
  if (gc.scale) ref.set_gamma(gamma);
  if (gc.center) ref.set_beta(beta);
  ref.set_moving_mean(mm);
  ref.set_moving_variance(mv);
  ref.set_training(training);
  ref.forward(gc.shape, x);
  const RefGrads rg = ref.backward(gc.shape, x, w);

  auto lib_loss = [&]() {
    std::vector<double> yy;
    REQUIRE(lib.forward(gc.shape, x, yy) == BN_OK);
    return loss(w, yy);
  };
  std::vector<double> fd_dx(n), fd_dg(c, 0.0), fd_db(c, 0.0);
  for (size_t i = 0; i < n; ++i) fd_dx[i] = central_difference(x, i, lib_loss);
  if (gc.scale) {
    for (size_t f = 0; f < c; ++f) {
      fd_dg[f] = central_difference(gamma, f, [&]() {
        REQUIRE(lib.set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
        return lib_loss();
      });
    }
    REQUIRE(lib.set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
  }
  if (gc.center) {
    for (size_t f = 0; f < c; ++f) {
      fd_db[f] = central_difference(beta, f, [&]() {
        REQUIRE(lib.set_param(BN_PARAM_BETA, beta) == BN_OK);
        return lib_loss();
      });
    }
  }
  // A layer without gamma (beta) has no such variable: its gradient is reported as 0,
  // and the finite difference above is 0 too.
  const double rel = 1e-6;
  auto expect = [&](const Comparison& cmp) {
    INFO(cmp.message);
    CHECK(cmp.ok);
  };
  expect(compare_rel("library dx vs finite differences", dx, fd_dx, rel, rel));
  expect(compare_rel("library dgamma vs finite differences", dgamma, fd_dg, rel, rel));
  expect(compare_rel("library dbeta vs finite differences", dbeta, fd_db, rel, rel));
  expect(compare_rel("reference dx vs finite differences", rg.dx, fd_dx, rel, rel));
  expect(compare_rel("reference dgamma vs finite differences", rg.dgamma, fd_dg, rel, rel));
  expect(compare_rel("reference dbeta vs finite differences", rg.dbeta, fd_db, rel, rel));
}

const std::vector<GradCase>& cases() {
  static const std::vector<GradCase> all{
      {{5, 3}, {-1}},                      // dense
      {{3, 4}, {0}},                       // the batch axis kept: features along N
      {{4, 3, 2}, {1}},                    // NCL
      {{2, 3, 2, 2}, {1}},                 // NCHW
      {{2, 2, 2, 3}, {-1}},                // NHWC
      {{3, 2, 2, 3}, {1, 3}},              // two non-adjacent axes
      {{2, 3, 4}, {0, 2}},                 // the first and last axes
      {{4, 2, 3}, {-1, -2}},               // two adjacent axes, negative, reversed
      {{2, 2, 3, 2, 2}, {-4, -2}},         // rank 5, several axes
      {{6, 2}, {-1}, false, true},         // no beta
      {{3, 2, 2}, {1}, true, false},       // no gamma
      {{2, 1, 3}, {1}, false, false},      // neither
  };
  return all;
}

TEST_CASE("finite differences: training mode", "[layer][gradients]") {
  const size_t index = GENERATE(range(size_t{0}, cases().size()));
  check_gradients(cases().at(index), true);
}

TEST_CASE("finite differences: inference mode", "[layer][gradients]") {
  const size_t index = GENERATE(range(size_t{0}, cases().size()));
  check_gradients(cases().at(index), false);
}

}  // namespace
}  // namespace bn_test
