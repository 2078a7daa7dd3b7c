// White-box: the backward of planar (features-first) tensors far larger than the last-level
// cache runs group of feature columns by group, each group's sums and then its dx
// (layer_internal.hpp, cached_group_columns). With the cache size overridden, small tensors
// take that path: dx, dresidual, dgamma and dbeta must be bitwise equal to the one-pass path
// (the same blocks summed in the same order), for 1, 2 and 4 threads, with the ReLU gate from
// y or recomputed, after training and inference forwards; and close to the reference.
// Likewise the runs of features whose slices fit in L2 (cached_feature_run), the backward and
// the training forward (under a non-finite policy that lets y be written as it goes): bitwise
// the pass over the whole grid, and close to the reference.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "compare.hpp"
#include "data_gen.hpp"
#include "layer/layer.hpp"
#include "layer/layer_internal.hpp"
#include "parallel/machine.hpp"
#include "reference.hpp"

namespace bn_test {
namespace {

// The cache sizes a call is planned with: the last level's, and L2's (-1: unknown, so no run
// of features is planned from it).
struct Caches {
  int64_t llc;
  int64_t l2 = -1;
};

// Restores the machine's cache sizes however the test ends.
struct CacheOverride {
  explicit CacheOverride(Caches caches) {
    bn::parallel::override_last_level_cache_bytes(caches.llc);
    bn::parallel::override_l2_cache_bytes(caches.l2);
  }
  ~CacheOverride() {
    bn::parallel::override_last_level_cache_bytes(0);
    bn::parallel::override_l2_cache_bytes(0);
  }
  CacheOverride(const CacheOverride&) = delete;
  CacheOverride& operator=(const CacheOverride&) = delete;
};

constexpr int64_t kHugeCache = int64_t{1} << 40;  // nothing is ever grouped

struct Case {
  std::vector<int64_t> shape;
  bool relu = false;
  bool pass_y = false;    // the ReLU gate from the forward's output (else recomputed from x)
  bool residual = false;  // forward adds a residual, backward returns dresidual
  bool training = true;   // false: an inference forward, the backward's dgamma/dbeta only
  bool want_dx = true;
  bool propagate = false;  // non-finite policy PROPAGATE (else REFUSE, the default)
};

struct Result {
  std::vector<unsigned char> dx, dresidual, dgamma, dbeta, y, moving_mean, moving_variance;
};

template <class T>
std::vector<T> converted(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <class T>
Result run(const Case& cs, Caches caches, int32_t threads, std::vector<double>* dx_out = nullptr,
           std::vector<double>* dgamma_out = nullptr, std::vector<double>* dbeta_out = nullptr) {
  const RefDtype dtype = sizeof(T) == 8 ? RefDtype::f64 : RefDtype::f32;
  const auto n = static_cast<size_t>(element_count(cs.shape));
  const auto c = static_cast<size_t>(cs.shape[1]);
  DataGen gen(2024 + n);
  const std::vector<T> x = converted<T>(gen.per_feature(cs.shape, {false, true, false, false}, 50.0, 0.5, 4.0, dtype));
  const std::vector<T> dy = converted<T>(gen.normal(n, 0.0, 1.0, dtype));
  const std::vector<T> residual = converted<T>(gen.normal(n, 0.5, 1.0, dtype));
  const std::vector<T> gamma = converted<T>(gen.uniform_vector(c, 0.5, 1.5, dtype));
  const std::vector<T> beta = converted<T>(gen.uniform_vector(c, -1.0, 1.0, dtype));

  bn::Config cfg;
  cfg.axes = {1};
  cfg.dtype = sizeof(T) == 8 ? bn::DType::f64 : bn::DType::f32;
  cfg.relu = cs.relu;
  if (cs.propagate) cfg.nonfinite = bn::NonFinite::propagate;
  const auto ndim = static_cast<int32_t>(cs.shape.size());
  bn::Layer layer(cfg, cs.shape.data(), ndim);
  layer.set_num_threads(threads);
  layer.set_param(bn::Param::gamma, gamma.data(), static_cast<int64_t>(c));
  layer.set_param(bn::Param::beta, beta.data(), static_cast<int64_t>(c));
  if (!cs.training) {
    // Moving statistics away from their initial values, then an inference forward.
    layer.set_training(true);
    std::vector<T> scratch(n);
    layer.forward(cs.shape.data(), ndim, {x.data(), nullptr, scratch.data()});
    layer.set_training(false);
  } else {
    layer.set_training(true);
  }
  std::vector<T> y(n), dx(cs.want_dx ? n : 0), dresidual(cs.residual ? n : 0), dgamma(c), dbeta(c);
  CacheOverride cache(caches);
  layer.forward(cs.shape.data(), ndim, {x.data(), cs.residual ? residual.data() : nullptr, y.data()});
  layer.backward(cs.shape.data(), ndim,
                 {x.data(), cs.pass_y ? y.data() : nullptr, dy.data(), cs.want_dx ? dx.data() : nullptr,
                  cs.residual ? dresidual.data() : nullptr, dgamma.data(), dbeta.data()});
  if (dx_out) dx_out->assign(dx.begin(), dx.end());
  if (dgamma_out) dgamma_out->assign(dgamma.begin(), dgamma.end());
  if (dbeta_out) dbeta_out->assign(dbeta.begin(), dbeta.end());
  std::vector<T> moving_mean(c), moving_variance(c);
  layer.get_param(bn::Param::moving_mean, moving_mean.data(), static_cast<int64_t>(c));
  layer.get_param(bn::Param::moving_variance, moving_variance.data(), static_cast<int64_t>(c));
  return {bytes_of(dx), bytes_of(dresidual), bytes_of(dgamma), bytes_of(dbeta),
          bytes_of(y),  bytes_of(moving_mean), bytes_of(moving_variance)};
}

// The columns per group the backward of `shape` plans with the cache overridden to `cache_bytes`.
bn::ShapePlan planned(const std::vector<int64_t>& shape) {
  const bn::AxisPlan axes = bn::resolve_axes({1}, shape.data(), static_cast<int32_t>(shape.size()));
  return bn::plan_shape(axes, shape.data(), static_cast<int32_t>(shape.size()));
}

int64_t planned_columns(const std::vector<int64_t>& shape, int64_t element_bytes, int64_t cache_bytes) {
  const CacheOverride cache({cache_bytes});
  return bn::detail::cached_group_columns(planned(shape), 2 * element_bytes);
}

// The features per run the backward (x and dy reread) of `shape` plans with L2 at `l2_bytes`.
int64_t planned_run(const std::vector<int64_t>& shape, int64_t element_bytes, int64_t l2_bytes) {
  const CacheOverride cache({kHugeCache, l2_bytes});
  return bn::detail::cached_feature_run(planned(shape), element_bytes, 2 * element_bytes);
}

// "" when equal, else where they first differ (Catch would print every byte of both).
std::string first_difference(const std::vector<unsigned char>& got, const std::vector<unsigned char>& want) {
  if (got.size() != want.size()) return "sizes " + std::to_string(got.size()) + " and " + std::to_string(want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) return "first difference at byte " + std::to_string(i);
  }
  return "";
}

// The reference runs with nothing grouped and the same statistics kernel path as the runs
// under `caches` (StatsArgs::cached: x within half the last-level cache): a huge cache where
// x fits in half of caches.llc, else one of 1.5 times x (x read from memory, nothing grouped).
template <class T>
void check_case(const Case& cs, Caches caches) {
  int64_t x_bytes = static_cast<int64_t>(sizeof(T));
  for (int64_t d : cs.shape) x_bytes *= d;
  const int64_t reference_llc = x_bytes <= caches.llc / 2 ? kHugeCache : x_bytes / 2 * 3;
  REQUIRE(planned_columns(cs.shape, static_cast<int64_t>(sizeof(T)), reference_llc) == 0);
  const Result one_pass = run<T>(cs, {reference_llc}, 1);
  for (int32_t threads : {1, 2, 4}) {
    CAPTURE(threads);
    const Result grouped = run<T>(cs, caches, threads);
    CHECK(first_difference(grouped.y, one_pass.y) == "");
    CHECK(first_difference(grouped.moving_mean, one_pass.moving_mean) == "");
    CHECK(first_difference(grouped.moving_variance, one_pass.moving_variance) == "");
    CHECK(first_difference(grouped.dx, one_pass.dx) == "");
    CHECK(first_difference(grouped.dresidual, one_pass.dresidual) == "");
    CHECK(first_difference(grouped.dgamma, one_pass.dgamma) == "");
    CHECK(first_difference(grouped.dbeta, one_pass.dbeta) == "");
  }
}

TEST_CASE("backward of planar tensors larger than the cache, group by group: bitwise the one-pass result",
          "[layer][cache_groups]") {
  // 19x150x2x120: blocks of 2 rows x 68 features (3 columns, the last of 14 features; 9 block
  // rows of 2 and one of 1), every group one column. 32x2400x4x4: blocks of 16 rows x 128 features (19 columns,
  // the last of 96), groups of two columns and a last one of one.
  const std::vector<int64_t> small{19, 150, 2, 120}, wide{32, 2400, 4, 4};
  const Caches small_cache{64 * 1024}, wide_cache{4 * 1024 * 1024};
  REQUIRE(planned_columns(small, 4, small_cache.llc) == 1);
  REQUIRE(planned_columns(small, 8, small_cache.llc) == 1);
  REQUIRE(planned_columns(wide, 4, wide_cache.llc) == 2);
  REQUIRE(planned_columns(small, 4, kHugeCache) == 0);
  REQUIRE(planned_columns(wide, 4, kHugeCache) == 0);

  SECTION("f32, plain") { check_case<float>({small}, small_cache); }
  SECTION("f64, plain") { check_case<double>({small}, small_cache); }
  SECTION("f32, two-column groups") { check_case<float>({wide}, wide_cache); }
  SECTION("f32, ReLU gate from y, residual") {
    Case cs{wide};
    cs.relu = cs.pass_y = cs.residual = true;
    check_case<float>(cs, wide_cache);
  }
  SECTION("f32, ReLU gate recomputed") {
    Case cs{small};
    cs.relu = true;
    check_case<float>(cs, small_cache);
  }
  SECTION("f32, no dx (parameter gradients only)") {
    Case cs{small};
    cs.want_dx = false;
    check_case<float>(cs, small_cache);
  }
  SECTION("f32, after an inference forward") {
    Case cs{small};
    cs.training = false;
    check_case<float>(cs, small_cache);
  }
}

// dx, dgamma and dbeta of `cs` (2 threads, `caches`) against the reference model.
void check_against_reference(const Case& cs, Caches caches) {
  const auto dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  CAPTURE(dtype == RefDtype::f64 ? "f64" : "f32");
  std::vector<double> dx, dgamma, dbeta;
  if (dtype == RefDtype::f64) {
    run<double>(cs, caches, 2, &dx, &dgamma, &dbeta);
  } else {
    run<float>(cs, caches, 2, &dx, &dgamma, &dbeta);
  }
  // The same data, parameters and calls through the reference model.
  const auto n = static_cast<size_t>(element_count(cs.shape));
  const auto c = static_cast<size_t>(cs.shape[1]);
  DataGen gen(2024 + n);
  const std::vector<double> x = gen.per_feature(cs.shape, {false, true, false, false}, 50.0, 0.5, 4.0, dtype);
  const std::vector<double> dy = gen.normal(n, 0.0, 1.0, dtype);
  gen.normal(n, 0.5, 1.0, dtype);  // the residual (unused here), to keep the draws aligned
  RefConfig cfg;
  cfg.axes = {1};
  cfg.dtype = dtype;
  RefLayer ref(cfg, cs.shape);
  ref.set_gamma(gen.uniform_vector(c, 0.5, 1.5, dtype));
  ref.set_beta(gen.uniform_vector(c, -1.0, 1.0, dtype));
  ref.set_training(true);
  ref.forward(cs.shape, x);
  const RefGrads want = ref.backward(cs.shape, x, dy);
  const double rel = dtype == RefDtype::f64 ? 1e-10 : 1e-6;  // as the other layer tests
  const Comparison cdx = compare_scaled("dx", dx, want.dx, want.dx_mag, rel);
  const Comparison cdg = compare_scaled("dgamma", dgamma, want.dgamma, want.dgamma_mag, rel);
  const Comparison cdb = compare_scaled("dbeta", dbeta, want.dbeta, want.dbeta_mag, rel);
  INFO(cdx.message << cdg.message << cdb.message);
  CHECK(cdx.ok);
  CHECK(cdg.ok);
  CHECK(cdb.ok);
}

TEST_CASE("backward of planar tensors larger than the cache, group by group: against the reference",
          "[layer][cache_groups]") {
  check_against_reference({{19, 150, 2, 120}}, {64 * 1024});
}

TEST_CASE("planar tensors whose feature slices fit in L2, run by run: bitwise the whole-grid result",
          "[layer][cache_groups]") {
  // 19x37x300: blocks of 2 rows x 37 features (10 block rows, the last of 1 row). With L2 at
  // 1 MiB: runs of 2 features (at least 16 runs), the last of 1; with L2 at one feature's
  // slice of x and dy: runs of 1. Rows of 19x150x2x120 (960 bytes in f32) are too short.
  const std::vector<int64_t> ncl{19, 37, 300};
  const int64_t slice = 19 * 300 * 2 * 4;
  const Caches runs_of_2{kHugeCache, 1 << 20}, runs_of_1{kHugeCache, slice};
  REQUIRE(planned_run(ncl, 4, runs_of_2.l2) == 2);
  REQUIRE(planned_run(ncl, 4, runs_of_1.l2) == 1);
  REQUIRE(planned_run(ncl, 4, slice - 1) == 0);
  REQUIRE(planned_run(ncl, 4, -1) == 0);
  REQUIRE(planned_run(ncl, 8, runs_of_2.l2) == 2);
  REQUIRE(planned_run({19, 150, 2, 120}, 4, runs_of_2.l2) == 0);
  REQUIRE(planned_run({19, 150, 2, 120}, 8, runs_of_2.l2) == 7);

  SECTION("f32, runs of 2") { check_case<float>({ncl}, runs_of_2); }
  SECTION("f64, runs of 2") { check_case<double>({ncl}, runs_of_2); }
  SECTION("f32, runs of 1, forward feature by feature too (PROPAGATE)") {
    Case cs{ncl};
    cs.propagate = true;
    check_case<float>(cs, runs_of_1);
  }
  SECTION("f64, forward run by run too (PROPAGATE)") {
    Case cs{ncl};
    cs.propagate = true;
    check_case<double>(cs, runs_of_2);
  }
  SECTION("f32, ReLU gate from y, residual, PROPAGATE") {
    Case cs{ncl};
    cs.relu = cs.pass_y = cs.residual = cs.propagate = true;
    check_case<float>(cs, runs_of_2);
  }
  SECTION("f32, ReLU gate recomputed") {
    Case cs{ncl};
    cs.relu = true;
    check_case<float>(cs, runs_of_1);
  }
  SECTION("f32, no dx (parameter gradients only)") {
    Case cs{ncl};
    cs.want_dx = false;
    check_case<float>(cs, runs_of_2);
  }
  SECTION("f32, after an inference forward") {
    Case cs{ncl};
    cs.training = false;
    check_case<float>(cs, runs_of_2);
  }
}

TEST_CASE("planar tensors whose feature slices fit in L2, run by run: against the reference",
          "[layer][cache_groups]") {
  Case cs{{19, 37, 300}};
  cs.propagate = true;
  check_against_reference(cs, {kHugeCache, 1 << 20});
}

}  // namespace
}  // namespace bn_test
