// Results are bitwise identical for every thread count (SEMANTICS A.3): y, dx, dgamma,
// dbeta, the moving and batch statistics, for bn_set_num_threads 1, 2 and 4 and for 0
// (the caller's arena) inside tbb::task_arena of 1, 2 and 4 threads. The shapes are large
// enough for many blocks in both grid directions. The first run is also checked against
// the reference model, so that "identical" cannot mean "identically wrong".
#include <catch2/catch.hpp>

#include <tbb/task_arena.h>

#include <cstring>
#include <string>
#include <vector>

#include "compare.hpp"
#include "data_gen.hpp"
#include "lib_layer.hpp"
#include "reference.hpp"

namespace bn_test {
namespace {

struct Outputs {
  std::vector<std::vector<double>> tensors;  // in a fixed order, see run()
  std::vector<std::string> names;
};

struct Setup {
  RefConfig cfg;
  std::vector<int64_t> shape;
  std::vector<double> x1, x2, dy, gamma, beta;
};

Setup make_setup(std::vector<int64_t> shape, std::vector<int> axes, RefDtype dtype) {
  Setup s;
  s.cfg.axes = std::move(axes);
  s.cfg.dtype = dtype;
  s.cfg.momentum = 0.9;
  s.shape = std::move(shape);
  RefLayer probe(s.cfg, s.shape);
  const auto c = static_cast<size_t>(probe.num_features());
  const auto n = static_cast<size_t>(element_count(s.shape));
  DataGen gen(77 + n);
  s.x1 = gen.normal(n, 2.0, 3.0, dtype);
  s.x2 = gen.normal(n, -1.0, 0.5, dtype);
  s.dy = gen.normal(n, 0.0, 1.0, dtype);
  s.gamma = gen.uniform_vector(c, 0.5, 1.5, dtype);
  s.beta = gen.uniform_vector(c, -1.0, 1.0, dtype);
  return s;
}

// Two training steps (forward + backward), then inference forward + backward.
Outputs run(const Setup& s, int32_t threads) {
  Outputs out;
  LibLayer lib;
  REQUIRE(lib.create(s.cfg, s.shape) == BN_OK);
  REQUIRE(bn_set_num_threads(lib.get(), threads) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_GAMMA, s.gamma) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_BETA, s.beta) == BN_OK);
  auto keep = [&](const std::string& name, std::vector<double> v) {
    out.names.push_back(name);
    out.tensors.push_back(std::move(v));
  };
  auto step = [&](const std::string& tag, const std::vector<double>& x) {
    std::vector<double> y, dx, dg, db;
    REQUIRE(lib.forward(s.shape, x, y) == BN_OK);
    REQUIRE(lib.backward(s.shape, x, s.dy, dx, dg, db) == BN_OK);
    keep(tag + " y", y);
    keep(tag + " dx", dx);
    keep(tag + " dgamma", dg);
    keep(tag + " dbeta", db);
    keep(tag + " moving_mean", lib.param(BN_PARAM_MOVING_MEAN));
    keep(tag + " moving_variance", lib.param(BN_PARAM_MOVING_VARIANCE));
  };
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
  step("train 1", s.x1);
  keep("batch_mean", lib.param(BN_PARAM_BATCH_MEAN));
  keep("batch_variance", lib.param(BN_PARAM_BATCH_VARIANCE));
  step("train 2", s.x2);
  REQUIRE(bn_set_training(lib.get(), 0) == BN_OK);
  step("inference", s.x1);
  return out;
}

void require_bitwise_equal(const Outputs& a, const Outputs& b) {
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (size_t k = 0; k < a.tensors.size(); ++k) {
    INFO(a.names[k]);
    REQUIRE(a.tensors[k].size() == b.tensors[k].size());
    CHECK(std::memcmp(a.tensors[k].data(), b.tensors[k].data(), a.tensors[k].size() * sizeof(double)) == 0);
  }
}

// The first training step of the single-thread run against the reference model.
void check_against_reference(const Setup& s, const Outputs& o) {
  RefLayer ref(s.cfg, s.shape);
  ref.set_gamma(s.gamma);
  ref.set_beta(s.beta);
  ref.set_training(true);
  const RefForward fw = ref.forward(s.shape, s.x1);
  const RefGrads g = ref.backward(s.shape, s.x1, s.dy);
  const double tol = s.cfg.dtype == RefDtype::f64 ? 1e-10 : 1e-6;  // as in test_sweep.cpp
  for (const Comparison& c : {compare_scaled("y", o.tensors[0], fw.y, fw.y_mag, tol),
                              compare_scaled("dx", o.tensors[1], g.dx, g.dx_mag, tol),
                              compare_scaled("dgamma", o.tensors[2], g.dgamma, g.dgamma_mag, tol),
                              compare_scaled("dbeta", o.tensors[3], g.dbeta, g.dbeta_mag, tol)}) {
    INFO(c.message);
    CHECK(c.ok);
  }
}

void check_setup(const Setup& s) {
  INFO(describe(s.cfg) << " shape " << describe_shape(s.shape));
  const Outputs base = run(s, 1);
  check_against_reference(s, base);
  for (int32_t threads : {2, 4}) {
    INFO("bn_set_num_threads " << threads);
    require_bitwise_equal(base, run(s, threads));
  }
  for (int arena_threads : {1, 2, 4}) {
    INFO("bn_set_num_threads 0 inside a task_arena of " << arena_threads);
    tbb::task_arena arena(arena_threads);
    Outputs o;
    arena.execute([&] { o = run(s, 0); });
    require_bitwise_equal(base, o);
  }
}

TEST_CASE("thread-count determinism: NCHW 8x64x32x32", "[layer][determinism]") {
  check_setup(make_setup({8, 64, 32, 32}, {1}, RefDtype::f32));
}

TEST_CASE("thread-count determinism: NHWC 8x32x32x64", "[layer][determinism]") {
  check_setup(make_setup({8, 32, 32, 64}, {-1}, RefDtype::f32));
}

TEST_CASE("thread-count determinism: 2D 512x300, f32 and f64", "[layer][determinism]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  check_setup(make_setup({512, 300}, {-1}, dtype));
}

TEST_CASE("thread-count determinism: non-adjacent axes {1,3} and the batch axis kept", "[layer][determinism]") {
  check_setup(make_setup({16, 16, 12, 40}, {1, 3}, RefDtype::f64));
  check_setup(make_setup({300, 64, 16}, {0}, RefDtype::f32));
}

}  // namespace
}  // namespace bn_test
