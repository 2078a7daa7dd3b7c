// Ghost batch normalization, Keras virtual_batch_size (SEMANTICS A.6, B.3, B.6, B.7,
// B.11.6): the Keras testGhostBN* scenarios by hand (the strided reshape (vbs, N/vbs, ...)
// and the mean over axis 0), vbs = N against the plain layer, a sweep against the reference
// model (with renorm, mode flags, f32/f64, layouts), finite differences per ghost batch,
// inference with any batch size, and every refusal.
//
// Not registered in CMake until ghost batches land (bn_config_set_virtual_batch_size
// returns BN_ERR_UNSUPPORTED for size > 0 in the version this was written against).
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

void expect(const Comparison& c) {
  INFO(c.message);
  CHECK(c.ok);
}

// The Keras tests' ghost statistics, spelled as their numpy code does it: x of shape
// (N, ...) is viewed as sub_batched of shape (vbs, G, ...), G = N/vbs (a row-major reshape,
// so sample n sits at [n / G][n % G]); means and variances are taken over axis 0 and the
// non-kept axes, keeping axis 1 (the ghost batch) and the kept axes.
struct GhostStats {
  int64_t ghosts = 0, features = 0;
  std::vector<int64_t> ghost_of, feature_of;  // per element of x
  std::vector<double> mean, var;              // [ghost][feature], biased
  std::vector<double> avg_mean, avg_var;      // np.mean(..., axis=1): the plain average over ghosts
};

GhostStats ghost_stats(const std::vector<int64_t>& shape, const std::vector<bool>& kept, int64_t vbs,
                       const std::vector<double>& x) {
  GhostStats s;
  const int64_t n_batch = shape[0];
  s.ghosts = n_batch / vbs;
  int64_t per_sample = 1;
  s.features = 1;
  for (size_t d = 1; d < shape.size(); ++d) {
    per_sample *= shape[d];
    if (kept[d]) s.features *= shape[d];
  }
  const size_t total = x.size();
  s.ghost_of.resize(total);
  s.feature_of.resize(total);
  for (size_t e = 0; e < total; ++e) {
    const int64_t n = static_cast<int64_t>(e) / per_sample;
    int64_t rest = static_cast<int64_t>(e) % per_sample;
    const int64_t j = n % s.ghosts;  // sub_batched[n / G][j]
    // The kept multi-index of `rest` (dims 1..rank-1, row-major), flattened row-major.
    int64_t f = 0, stride_f = 1;
    for (size_t d = shape.size(); d-- > 1;) {
      const int64_t i = rest % shape[d];
      rest /= shape[d];
      if (kept[d]) {
        f += i * stride_f;
        stride_f *= shape[d];
      }
    }
    s.ghost_of[e] = j;
    s.feature_of[e] = f;
  }
  const size_t groups = static_cast<size_t>(s.ghosts * s.features);
  std::vector<double> count(groups, 0.0);
  s.mean.assign(groups, 0.0);
  s.var.assign(groups, 0.0);
  for (size_t e = 0; e < total; ++e) {
    const size_t g = static_cast<size_t>(s.ghost_of[e] * s.features + s.feature_of[e]);
    s.mean[g] += x[e];
    count[g] += 1.0;
  }
  for (size_t g = 0; g < groups; ++g) s.mean[g] /= count[g];
  for (size_t e = 0; e < total; ++e) {
    const size_t g = static_cast<size_t>(s.ghost_of[e] * s.features + s.feature_of[e]);
    s.var[g] += (x[e] - s.mean[g]) * (x[e] - s.mean[g]);
  }
  for (size_t g = 0; g < groups; ++g) s.var[g] /= count[g];
  s.avg_mean.assign(static_cast<size_t>(s.features), 0.0);
  s.avg_var.assign(static_cast<size_t>(s.features), 0.0);
  for (int64_t j = 0; j < s.ghosts; ++j) {
    for (int64_t f = 0; f < s.features; ++f) {
      s.avg_mean[f] += s.mean[j * s.features + f] / static_cast<double>(s.ghosts);
      s.avg_var[f] += s.var[j * s.features + f] / static_cast<double>(s.ghosts);
    }
  }
  return s;
}

std::vector<bool> kept_dims(const std::vector<int>& axes, size_t rank) {
  std::vector<bool> kept(rank, false);
  for (int a : validate_axes(axes, static_cast<int>(rank))) kept[static_cast<size_t>(a)] = true;
  return kept;
}

// keras/legacy_tf_layers/normalization_test.py testGhostBN2Dims, testGhostBN4DimsAxis3,
// testGhostBN4DimsAxis1, testGhostBN5DimsMultiAxis14: momentum 0.8, eps 1e-3, beta 2,
// gamma 3, five steps of np.random.random data; training output per ghost batch, moving
// statistics from the ghost-averaged statistics (biased: ghost batches are never fused),
// inference with the moving statistics.
struct KerasGhost {
  const char* name;
  std::vector<int64_t> shape;
  std::vector<int> axes;
  int64_t vbs;
  RefFused fused;
};

TEST_CASE("Keras testGhostBN* scenarios by hand", "[layer][ghost]") {
  const std::vector<KerasGhost> cases{
      {"testGhostBN2Dims", {6, 2}, {-1}, 3, RefFused::automatic},
      {"testGhostBN4DimsAxis3", {6, 10, 10, 3}, {3}, 2, RefFused::automatic},
      {"testGhostBN4DimsAxis1", {6, 3, 10, 10}, {1}, 2, RefFused::off},
      {"testGhostBN5DimsMultiAxis14", {6, 3, 10, 10, 4}, {1, 4}, 3, RefFused::off},
  };
  const size_t which = GENERATE(range(size_t{0}, size_t{4}));
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  const KerasGhost& k = cases[which];
  const double mu = 0.8, eps = 1e-3, gamma = 3.0, beta = 2.0;
  RefConfig cfg;
  cfg.axes = k.axes;
  cfg.momentum = mu;
  cfg.epsilon = eps;
  cfg.fused = k.fused;
  cfg.dtype = dtype;
  cfg.virtual_batch_size = k.vbs;
  INFO(k.name << ": " << describe(cfg));
  LibLayer lib;
  const bn_status st = lib.create(cfg, k.shape);
  INFO(status_text(st));
  REQUIRE(st == BN_OK);
  CHECK(lib.fused() == 0);
  const size_t c = static_cast<size_t>(lib.features());
  REQUIRE(lib.set_param(BN_PARAM_GAMMA, std::vector<double>(c, gamma)) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_BETA, std::vector<double>(c, beta)) == BN_OK);
  const std::vector<bool> kept = kept_dims(k.axes, k.shape.size());
  std::vector<double> mm(c, 0.0), mv(c, 1.0);
  DataGen gen(900 + which);
  const double atol = dtype == RefDtype::f32 ? 1e-5 : 1e-12;
  for (int step = 0; step < 5; ++step) {
    INFO("step " << step);
    const std::vector<double> x = gen.uniform_vector(static_cast<size_t>(element_count(k.shape)), 0.0, 1.0, dtype);
    const GhostStats s = ghost_stats(k.shape, kept, k.vbs, x);
    REQUIRE(static_cast<size_t>(s.features) == c);
    for (size_t f = 0; f < c; ++f) {
      mm[f] = mm[f] * mu + s.avg_mean[f] * (1.0 - mu);
      mv[f] = mv[f] * mu + s.avg_var[f] * (1.0 - mu);
    }
    std::vector<double> y_train(x.size()), y_test(x.size());
    for (size_t e = 0; e < x.size(); ++e) {
      const size_t f = static_cast<size_t>(s.feature_of[e]);
      const size_t g = static_cast<size_t>(s.ghost_of[e] * s.features) + f;
      y_train[e] = (x[e] - s.mean[g]) / std::sqrt(s.var[g] + eps) * gamma + beta;
      y_test[e] = (x[e] - mm[f]) / std::sqrt(mv[f] + eps) * gamma + beta;
    }
    std::vector<double> y;
    REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
    const bn_status fst = lib.forward(k.shape, x, y);
    INFO(status_text(fst));
    REQUIRE(fst == BN_OK);
    expect(compare_rel("training y", y, y_train, 0.0, atol));
    REQUIRE(bn_set_training(lib.get(), 0) == BN_OK);
    REQUIRE(lib.forward(k.shape, x, y) == BN_OK);
    expect(compare_rel("inference y", y, y_test, 0.0, atol));
    expect(compare_rel("moving_mean", lib.param(BN_PARAM_MOVING_MEAN), mm, 0.0, atol / 10));
    expect(compare_rel("moving_variance", lib.param(BN_PARAM_MOVING_VARIANCE), mv, 0.0, atol / 10));
  }
}

// Keras testGhostBNVirtualBatchFull: vbs = N is one ghost batch, the plain layer. Against the
// non-fused plain layer everything matches (y, moving statistics, dx, dgamma, dbeta); the
// default (fused, Bessel) layer gives the same y.
TEST_CASE("virtual_batch_size = N is the plain (non-fused) layer", "[layer][ghost]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  struct Case {
    std::vector<int64_t> shape;
    std::vector<int> axes;
  };
  const std::vector<Case> cases{{{6, 5, 4, 3}, {-1}}, {{6, 3}, {-1}}, {{4, 3, 2, 2}, {1}}, {{5, 2, 3, 2}, {1, 3}}};
  for (const Case& k : cases) {
    INFO("shape " << describe_shape(k.shape));
    RefConfig cfg;
    cfg.axes = k.axes;
    cfg.dtype = dtype;
    cfg.momentum = 0.7;
    RefConfig ghost = cfg, plain = cfg, fused_default = cfg;
    ghost.virtual_batch_size = k.shape[0];
    plain.fused = RefFused::off;
    LibLayer a, b, d;
    REQUIRE(a.create(ghost, k.shape) == BN_OK);
    REQUIRE(b.create(plain, k.shape) == BN_OK);
    REQUIRE(d.create(fused_default, k.shape) == BN_OK);
    const std::vector<bool> kept = kept_dims(k.axes, k.shape.size());
    DataGen gen(1000 + k.shape.size());
    for (LibLayer* l : {&a, &b, &d}) REQUIRE(bn_set_training(l->get(), 1) == BN_OK);
    const double tol = dtype == RefDtype::f32 ? 2e-6 : 1e-12;
    for (int step = 0; step < 3; ++step) {
      INFO("step " << step);
      const std::vector<double> x = gen.per_feature(k.shape, kept, 2.0, 0.5, 2.0, dtype);
      const std::vector<double> dy = gen.normal(x.size(), 0.0, 1.0, dtype);
      std::vector<double> ya, yb, yd, dxa, dxb, dga, dgb, dba, dbb;
      REQUIRE(a.forward(k.shape, x, ya) == BN_OK);
      REQUIRE(b.forward(k.shape, x, yb) == BN_OK);
      REQUIRE(d.forward(k.shape, x, yd) == BN_OK);
      expect(compare_rel("y vs plain", ya, yb, tol, tol));
      expect(compare_rel("y vs default layer", ya, yd, tol, tol));
      expect(compare_rel("moving_mean", a.param(BN_PARAM_MOVING_MEAN), b.param(BN_PARAM_MOVING_MEAN), tol, tol));
      expect(compare_rel("moving_variance", a.param(BN_PARAM_MOVING_VARIANCE), b.param(BN_PARAM_MOVING_VARIANCE), tol,
                         tol));
      REQUIRE(a.backward(k.shape, x, dy, dxa, dga, dba) == BN_OK);
      REQUIRE(b.backward(k.shape, x, dy, dxb, dgb, dbb) == BN_OK);
      expect(compare_rel("dx", dxa, dxb, 10 * tol, 10 * tol));
      expect(compare_rel("dgamma", dga, dgb, 10 * tol, 10 * tol));
      expect(compare_rel("dbeta", dba, dbb, 10 * tol, 10 * tol));
    }
  }
}

// ---------------------------------------------------------------------------
// Sweep against the reference model (whose ghost membership is explicit per sample).
struct GhostLayout {
  const char* name;
  std::vector<int64_t> shape;  // build shape; axis 0 is set per step
  std::vector<int> axes;
};

const std::vector<GhostLayout>& ghost_layouts() {
  static const std::vector<GhostLayout> all{
      {"2D", {6, 3}, {-1}},
      {"NHWC", {4, 2, 3, 3}, {-1}},
      {"NCHW", {4, 3, 2, 2}, {1}},
      {"NCL", {4, 2, 5}, {1}},
      {"multi-axis HC", {4, 2, 3, 2}, {1, 3}},
      {"multi-axis rank 5", {4, 2, 2, 3, 2}, {-4, -2}},
      {"rank 3 last two", {4, 3, 2}, {1, 2}},
  };
  return all;
}

TEST_CASE("ghost batch sweep against the reference model", "[layer][ghost][sweep]") {
  DataGen gen(0x6405ULL);
  int failures = 0, refusals = 0, renorm = 0, with_flags = 0, odd_inference = 0;
  for (int index = 0; index < 150; ++index) {
    const GhostLayout& layout = gen.pick(ghost_layouts());
    RefConfig cfg;
    cfg.axes = layout.axes;
    cfg.dtype = gen.coin() ? RefDtype::f32 : RefDtype::f64;
    cfg.center = gen.coin(0.8);
    cfg.scale = gen.coin(0.8);
    cfg.momentum = gen.pick(std::vector<double>{0.0, 0.5, 0.9, 0.99, gen.uniform(0.0, 1.0)});
    cfg.epsilon = gen.pick(std::vector<double>{1e-3, 1e-5, 0.1});
    cfg.rules = gen.coin() ? RefRules::v1 : RefRules::v2;
    cfg.fused = cfg.rules == RefRules::v1 ? gen.pick(std::vector<RefFused>{RefFused::automatic, RefFused::on})
                                          : gen.pick(std::vector<RefFused>{RefFused::automatic, RefFused::off});
    const int64_t vbs = gen.integer(1, 4);
    cfg.virtual_batch_size = vbs;
    if (gen.coin(0.4)) {
      cfg.renorm.enabled = true;
      cfg.renorm.momentum = gen.pick(std::vector<double>{0.0, 0.5, 0.9, gen.uniform(0.0, 1.0)});
      if (gen.coin()) {
        cfg.renorm.rmax = 1.2;
        cfg.renorm.rmin = 0.8;
        cfg.renorm.dmax = 0.3;
      }
      ++renorm;
    }
    INFO("config #" << index << " (" << layout.name << "): " << describe(cfg));
    std::vector<int64_t> build = layout.shape;
    build[0] = vbs * gen.integer(1, 3);
    Twin t(cfg, build);
    INFO("library: " << status_text(t.created()) << "; reference: " << t.refusal());
    REQUIRE(t.ok());
    CHECK(t.lib().fused() == 0);  // ghost batches are never fused (B.3)
    const size_t c = t.features();
    const std::vector<bool> kept = kept_dims(cfg.axes, build.size());
    t.set_training(true);
    bool ok = true;
    const int steps = static_cast<int>(gen.integer(2, 4));
    for (int step = 0; step <= steps && ok; ++step) {
      const bool last = step == steps;
      INFO("step " << step);
      if (last) t.set_training(false);
      if (!last && gen.coin(0.2)) {
        // Mode flags other than UPDATE_MOVING without BATCH_STATISTICS (tested on its own
        // in test_mode_flags.cpp) so that a failure here is about ghost batches.
        t.set_mode(gen.pick(std::vector<int>{0, 1, 3, 4, 5, 7}));
        ++with_flags;
      }
      if (cfg.scale && gen.coin(0.5)) t.set_param(BN_PARAM_GAMMA, gen.uniform_vector(c, -2.0, 2.0, RefDtype::f64));
      if (cfg.center && gen.coin(0.5)) t.set_param(BN_PARAM_BETA, gen.uniform_vector(c, -2.0, 2.0, RefDtype::f64));
      if (cfg.renorm.enabled && gen.coin(0.3)) {
        t.set_param(BN_PARAM_RENORM_MEAN, gen.uniform_vector(c, -1.0, 1.0, RefDtype::f64));
        t.set_param(BN_PARAM_RENORM_STDDEV, gen.uniform_vector(c, 0.3, 2.0, RefDtype::f64));
      }
      std::vector<int64_t> shape = build;
      if (last || gen.coin(0.2)) {
        shape[0] = gen.integer(1, 9);  // inference: any size; training: refused unless divisible
        if (shape[0] % vbs != 0) {
          if (last) ++odd_inference;
          const int mode = t.ref().mode();
          if (mode & (kModeBatchStatistics | kModeUpdateMoving)) ++refusals;
        }
      } else {
        shape[0] = vbs * gen.integer(1, 4);
      }
      const std::vector<double> x = gen.per_feature(shape, kept, 2.0, 0.3, 2.0, cfg.dtype);
      ok = t.step(shape, x, gen.normal(x.size(), 0.0, 1.0, cfg.dtype));
    }
    if (!ok) ++failures;
  }
  INFO("renorm " << renorm << ", mode flags " << with_flags << ", refused training batches " << refusals
                 << ", inference batches not divisible " << odd_inference << ", failing configs " << failures);
  CHECK(renorm >= 40);
  CHECK(with_flags >= 30);
  CHECK(refusals >= 10);
  CHECK(odd_inference >= 30);
  CHECK(failures == 0);
}

// ---------------------------------------------------------------------------
// Finite differences (f64), per ghost batch: without renorm the layer's own training forward
// is differentiated (through each ghost's mean and variance); with renorm, a forward with r
// and d frozen at the values of the unperturbed input, from the ghost-averaged statistics.

TEST_CASE("ghost batch finite differences", "[layer][ghost][gradients]") {
  struct Case {
    std::vector<int64_t> shape;
    std::vector<int> axes;
    int64_t vbs;
    bool renorm;
  };
  const std::vector<Case> cases{
      {{6, 3}, {-1}, 3, false},       {{6, 3}, {-1}, 2, true},        {{4, 2, 2, 3}, {-1}, 2, false},
      {{6, 2, 2, 2}, {1}, 3, true},   {{4, 2, 3, 2}, {1, 3}, 2, false}, {{4, 3, 2}, {1}, 1, false},
  };
  const size_t which = GENERATE(range(size_t{0}, size_t{6}));
  const Case& k = cases[which];
  INFO("case " << which << " shape " << describe_shape(k.shape) << " vbs " << k.vbs << " renorm " << k.renorm);
  RefConfig cfg;
  cfg.axes = k.axes;
  cfg.dtype = RefDtype::f64;
  cfg.virtual_batch_size = k.vbs;
  cfg.renorm.enabled = k.renorm;
  cfg.renorm.rmax = 1.3;
  cfg.renorm.rmin = 0.7;
  cfg.renorm.dmax = 0.2;
  LibLayer lib;
  REQUIRE(lib.create(cfg, k.shape) == BN_OK);
  const size_t c = static_cast<size_t>(lib.features());
  const size_t n = static_cast<size_t>(element_count(k.shape));
  const std::vector<bool> kept = kept_dims(k.axes, k.shape.size());
  DataGen gen(1100 + which);
  std::vector<double> x = gen.per_feature(k.shape, kept, 1.0, 0.5, 1.5, RefDtype::f64);
  const std::vector<double> w = gen.normal(n, 0.0, 1.0, RefDtype::f64);
  std::vector<double> gamma = gen.uniform_vector(c, 0.5, 2.0, RefDtype::f64);
  std::vector<double> beta = gen.uniform_vector(c, -1.0, 1.0, RefDtype::f64);
  const std::vector<double> rm = gen.uniform_vector(c, -0.5, 0.5, RefDtype::f64);
  const std::vector<double> rs = gen.uniform_vector(c, 0.4, 2.5, RefDtype::f64);
  REQUIRE(lib.set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_BETA, beta) == BN_OK);
  if (k.renorm) {
    REQUIRE(lib.set_param(BN_PARAM_RENORM_MEAN, rm) == BN_OK);
    REQUIRE(lib.set_param(BN_PARAM_RENORM_STDDEV, rs) == BN_OK);
  }
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
  const double eps = cfg.epsilon;

  // r, d of the unperturbed input (B.2 with B.3: from the ghost-averaged statistics).
  std::vector<double> r(c, 1.0), d(c, 0.0);
  if (k.renorm) {
    const GhostStats s0 = ghost_stats(k.shape, kept, k.vbs, x);
    for (size_t f = 0; f < c; ++f) {
      const double sd = std::max(rs[f], std::sqrt(eps));
      r[f] = std::min(std::max(std::sqrt(s0.avg_var[f] + eps) / sd, cfg.renorm.rmin), cfg.renorm.rmax);
      d[f] = std::min(std::max((s0.avg_mean[f] - rm[f]) / sd, -cfg.renorm.dmax), cfg.renorm.dmax);
    }
  }
  auto frozen_loss = [&]() {
    const GhostStats s = ghost_stats(k.shape, kept, k.vbs, x);
    double loss = 0.0;
    for (size_t e = 0; e < n; ++e) {
      const size_t f = static_cast<size_t>(s.feature_of[e]);
      const size_t g = static_cast<size_t>(s.ghost_of[e] * s.features) + f;
      const double xhat = (x[e] - s.mean[g]) / std::sqrt(s.var[g] + eps);
      loss += w[e] * (gamma[f] * (r[f] * xhat + d[f]) + beta[f]);
    }
    return loss;
  };
  std::vector<double> y, dx, dgamma, dbeta;
  const bn_status st = lib.forward(k.shape, x, y);
  INFO(status_text(st));
  REQUIRE(st == BN_OK);
  REQUIRE(lib.backward(k.shape, x, w, dx, dgamma, dbeta) == BN_OK);
  double lib_loss = 0.0;
  for (size_t e = 0; e < n; ++e) lib_loss += w[e] * y[e];
  CHECK(std::fabs(lib_loss - frozen_loss()) <= 1e-12 * (1.0 + std::fabs(lib_loss)));

  std::vector<double> fd_dx(n), fd_dg(c), fd_db(c);
  for (size_t i = 0; i < n; ++i) fd_dx[i] = central_difference(x, i, frozen_loss);
  for (size_t f = 0; f < c; ++f) fd_dg[f] = central_difference(gamma, f, frozen_loss);
  for (size_t f = 0; f < c; ++f) fd_db[f] = central_difference(beta, f, frozen_loss);
  const double rel = 1e-6;
  expect(compare_rel("dx vs finite differences", dx, fd_dx, rel, rel));
  expect(compare_rel("dgamma vs finite differences", dgamma, fd_dg, rel, rel));
  expect(compare_rel("dbeta vs finite differences", dbeta, fd_db, rel, rel));
  if (!k.renorm) {
    // Without renorm the layer's own forward is the function: differentiate it directly.
    auto lib_loss_fn = [&]() {
      std::vector<double> yy;
      REQUIRE(lib.forward(k.shape, x, yy) == BN_OK);
      double l = 0.0;
      for (size_t e = 0; e < n; ++e) l += w[e] * yy[e];
      return l;
    };
    for (size_t i = 0; i < n; ++i) fd_dx[i] = central_difference(x, i, lib_loss_fn);
    expect(compare_rel("dx vs finite differences of the layer", dx, fd_dx, rel, rel));
  }
}

// ---------------------------------------------------------------------------
// Inference uses the moving statistics, so any batch size works (Keras >= 2.11); training
// needs N to be a multiple of vbs: BN_ERR_SHAPE and nothing changed, the previous forward
// still differentiable.
TEST_CASE("ghost batches: inference with any batch size, training only with multiples", "[layer][ghost]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  RefConfig cfg;
  cfg.axes = {1};
  cfg.dtype = dtype;
  cfg.momentum = 0.5;
  cfg.virtual_batch_size = 3;
  cfg.renorm.enabled = true;
  const std::vector<int64_t> build{6, 2, 4};
  const std::vector<bool> kept{false, true, false};
  Twin t(cfg, build);
  REQUIRE(t.ok());
  LibLayer twin;
  REQUIRE(twin.create(cfg, build) == BN_OK);
  DataGen gen(1200);
  t.set_training(true);
  REQUIRE(bn_set_training(twin.get(), 1) == BN_OK);
  const std::vector<double> x = gen.per_feature(build, kept, 2.0, 0.5, 2.0, dtype);
  const std::vector<double> dy = gen.normal(x.size(), 0.0, 1.0, dtype);
  REQUIRE(t.step(build, x, dy, false));
  std::vector<double> yt;
  REQUIRE(twin.forward(build, x, yt) == BN_OK);

  const std::vector<bn_param> all{BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE, BN_PARAM_RENORM_MEAN,
                                  BN_PARAM_RENORM_STDDEV, BN_PARAM_MOVING_STDDEV};
  for (const int flags : {BN_MODE_BATCH_STATISTICS | BN_MODE_UPDATE_MOVING | BN_MODE_PARAM_GRADIENTS,
                          BN_MODE_BATCH_STATISTICS, BN_MODE_UPDATE_MOVING}) {
    REQUIRE(bn_set_mode(t.lib().get(), flags) == BN_OK);
    for (const int64_t n : {int64_t{1}, int64_t{4}, int64_t{5}, int64_t{7}}) {
      INFO("flags " << flags << ", N = " << n);
      const std::vector<int64_t> shape{n, 2, 4};
      const std::vector<double> xo = gen.per_feature(shape, kept, 2.0, 0.5, 2.0, dtype);
      std::vector<std::vector<double>> before;
      for (bn_param p : all) before.push_back(t.lib().param(p));
      std::vector<double> y;
      const bn_status st = t.lib().forward(shape, xo, y);
      INFO(status_text(st));
      CHECK(st == BN_ERR_SHAPE);
      CHECK(std::string(bn_last_error()).find("bn_forward") != std::string::npos);
      for (size_t i = 0; i < all.size(); ++i) CHECK(t.lib().param(all[i]) == before[i]);
    }
  }
  // The first forward is still the one to differentiate.
  std::vector<double> dxa, dga, dba, dxb, dgb, dbb;
  REQUIRE(bn_set_mode(t.lib().get(), BN_MODE_BATCH_STATISTICS | BN_MODE_UPDATE_MOVING | BN_MODE_PARAM_GRADIENTS) ==
          BN_OK);
  REQUIRE(t.lib().backward(build, x, dy, dxa, dga, dba) == BN_OK);
  REQUIRE(twin.backward(build, x, dy, dxb, dgb, dbb) == BN_OK);
  CHECK(dxa == dxb);
  CHECK(dga == dgb);
  CHECK(dba == dbb);

  // Inference: any N, against the reference (moving statistics).
  t.set_training(false);
  for (const int64_t n : {int64_t{1}, int64_t{2}, int64_t{5}, int64_t{7}, int64_t{0}}) {
    INFO("inference N = " << n);
    const std::vector<int64_t> shape{n, 2, 4};
    const std::vector<double> xi = gen.per_feature(shape, kept, 2.0, 0.5, 2.0, dtype);
    CHECK(t.step(shape, xi, gen.normal(xi.size(), 0.0, 1.0, dtype)));
  }
}

// ---------------------------------------------------------------------------
// Refusals at bn_create (Keras 2 build, B.3): axis 0 with ghost batches, adjustment with
// ghost batches, and fused=True under the V2 rules; V1 falls back to non-fused.
bn_status create_raw(const RefConfig& cfg, const std::vector<int64_t>& shape, bn_layer** out) {
  bn_config* c = nullptr;
  AdjustmentSource adj;  // never called: the layers are only created
  bn_status st = make_config(cfg, &c, &adj);
  if (st != BN_OK) return st;
  st = bn_create(c, shape.data(), static_cast<int32_t>(shape.size()), out);
  bn_config_destroy(c);
  return st;
}

TEST_CASE("ghost batch refusals and the fused fallback", "[layer][ghost]") {
  bn_config* c = nullptr;
  REQUIRE(bn_config_create(&c) == BN_OK);
  CHECK(bn_config_set_virtual_batch_size(c, -1) == BN_ERR_INVALID_ARGUMENT);
  CHECK(bn_config_set_virtual_batch_size(c, std::numeric_limits<int64_t>::min()) == BN_ERR_INVALID_ARGUMENT);
  CHECK(bn_config_set_virtual_batch_size(c, 0) == BN_OK);  // off
  CHECK(bn_config_set_virtual_batch_size(c, 2) == BN_OK);
  bn_config_destroy(c);

  struct Refused {
    const char* why;
    std::vector<int64_t> shape;
    std::vector<int> axes;
    bool adjustment;
    RefRules rules;
    RefFused fused;
  };
  const std::vector<Refused> refused{
      {"axis 0", {4, 3}, {0}, false, RefRules::v1, RefFused::automatic},
      {"axis 0 among others", {4, 3, 2}, {0, 2}, false, RefRules::v1, RefFused::automatic},
      {"axis -3 is axis 0", {4, 3, 2}, {-3}, false, RefRules::v2, RefFused::automatic},
      {"adjustment", {4, 3}, {-1}, true, RefRules::v1, RefFused::automatic},
      {"adjustment (NHWC)", {4, 2, 2, 3}, {-1}, true, RefRules::v2, RefFused::off},
      {"fused ON under V2", {4, 2, 2, 3}, {-1}, false, RefRules::v2, RefFused::on},
      {"fused ON under V2 (NCHW)", {4, 3, 2, 2}, {1}, false, RefRules::v2, RefFused::on},
  };
  for (const Refused& k : refused) {
    INFO(k.why);
    RefConfig cfg;
    cfg.axes = k.axes;
    cfg.adjustment = k.adjustment;
    cfg.rules = k.rules;
    cfg.fused = k.fused;
    cfg.virtual_batch_size = 2;
    bn_layer* layer = nullptr;
    const bn_status st = create_raw(cfg, k.shape, &layer);
    INFO(status_text(st));
    CHECK(st == BN_ERR_INVALID_ARGUMENT);
    CHECK(std::string(bn_last_error()).find("bn_create") != std::string::npos);
    CHECK(layer == nullptr);
    bn_destroy(layer);
    // The same without ghost batches is accepted, so the refusal is theirs.
    cfg.virtual_batch_size = 0;
    layer = nullptr;
    CHECK(create_raw(cfg, k.shape, &layer) == BN_OK);
    bn_destroy(layer);
  }
  for (const RefRules rules : {RefRules::v1, RefRules::v2}) {
    for (const RefFused f : {RefFused::automatic, RefFused::on, RefFused::off}) {
      if (rules == RefRules::v2 && f == RefFused::on) continue;
      RefConfig cfg;
      cfg.rules = rules;
      cfg.fused = f;
      cfg.virtual_batch_size = 2;
      bn_layer* layer = nullptr;
      const bn_status st = create_raw(cfg, {4, 2, 2, 3}, &layer);
      INFO("rules " << static_cast<int>(rules) << " fused " << static_cast<int>(f) << ": " << status_text(st));
      REQUIRE(st == BN_OK);
      int fused = -1;
      REQUIRE(bn_get_fused(layer, &fused) == BN_OK);
      CHECK(fused == 0);
      bn_destroy(layer);
    }
  }
}

// B.6/B.8: with ghost batches Keras stores gamma/beta full-rank with an extra 1 at index 1
// ([1, 1, C] for a 2D input with axis -1), so a constraint's axis 0 has size 1 and UnitNorm
// acts elementwise (|w| norms); axis 2 is the channel axis. Without ghost batches the
// storage is (C,) and axis 0 spans the channels.
TEST_CASE("constraints see Keras' storage shape with ghost batches", "[layer][ghost]") {
  auto constrained = [](int64_t vbs, int32_t axis, bn_status* status) {
    RefConfig cfg;
    cfg.dtype = RefDtype::f64;
    cfg.virtual_batch_size = vbs;
    bn_config* c = nullptr;
    REQUIRE(make_config(cfg, &c) == BN_OK);
    REQUIRE(bn_config_set_constraint(c, BN_PARAM_GAMMA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, &axis, 1) == BN_OK);
    const int64_t shape[] = {4, 2};
    bn_layer* layer = nullptr;
    *status = bn_create(c, shape, 2, &layer);
    bn_config_destroy(c);
    std::vector<double> g{3.0, 4.0};
    if (*status != BN_OK) return g;
    REQUIRE(bn_set_param(layer, BN_PARAM_GAMMA, g.data(), 2) == BN_OK);
    REQUIRE(bn_apply_constraints(layer) == BN_OK);
    REQUIRE(bn_get_param(layer, BN_PARAM_GAMMA, g.data(), 2) == BN_OK);
    bn_destroy(layer);
    return g;
  };
  const double e = 1e-7;  // Keras backend.epsilon()
  bn_status st = BN_OK;
  std::vector<double> g = constrained(0, 0, &st);
  REQUIRE(st == BN_OK);
  expect(compare_rel("no vbs, axis 0: over the channels", g, {3.0 / (e + 5.0), 4.0 / (e + 5.0)}, 1e-15));
  g = constrained(2, 0, &st);
  INFO(status_text(st));
  REQUIRE(st == BN_OK);
  expect(compare_rel("vbs, axis 0 (size 1): elementwise", g, {3.0 / (e + 3.0), 4.0 / (e + 4.0)}, 1e-15));
  g = constrained(2, 2, &st);
  REQUIRE(st == BN_OK);
  expect(compare_rel("vbs, axis 2: over the channels", g, {3.0 / (e + 5.0), 4.0 / (e + 5.0)}, 1e-15));
  g = constrained(2, -1, &st);
  REQUIRE(st == BN_OK);
  expect(compare_rel("vbs, axis -1: over the channels", g, {3.0 / (e + 5.0), 4.0 / (e + 5.0)}, 1e-15));
  // Axis 3 is beyond the storage rank 3.
  constrained(2, 3, &st);
  CHECK(st == BN_ERR_INVALID_ARGUMENT);
}

}  // namespace
}  // namespace bn_test
