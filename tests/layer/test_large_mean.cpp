// Large-mean data (SEMANTICS A.3, B.11 item 14): x = mean + 1e-2 * N(0,1) with mean 1e4
// (f32 and f64) and 1e6 (f64). The batch variance (~1e-4) must come out within a tight
// relative error of the reference's two-pass long double value. This is exactly what
// E[x^2] - E[x]^2 fails: in double, with E[x^2] ~ 1e8 (1e12), it loses ~1e8*1e-16/1e-4 =
// 1e-4 (~1) of relative accuracy; in float it is garbage. The shapes span many blocks,
// so the per-block partials are merged (Chan) across blocks with slightly different means.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "compare.hpp"
#include "data_gen.hpp"
#include "lib_layer.hpp"
#include "reference.hpp"

namespace bn_test {
namespace {

struct LargeMeanCase {
  std::vector<int64_t> shape;
  std::vector<int> axes;
  RefDtype dtype;
  double mean;
};

void check_large_mean(const LargeMeanCase& lc) {
  RefConfig cfg;
  cfg.axes = lc.axes;
  cfg.dtype = lc.dtype;
  cfg.momentum = 0.0;     // moving statistics = this batch's (possibly Bessel-corrected) statistics
  cfg.epsilon = 1e-8;     // small next to the variance (the fused path clamps it to 1.001e-5)
  INFO(describe(cfg) << " shape " << describe_shape(lc.shape) << " mean " << lc.mean);
  LibLayer lib;
  REQUIRE(lib.create(cfg, lc.shape) == BN_OK);
  RefLayer ref(cfg, lc.shape);
  REQUIRE(lib.features() == ref.num_features());

  DataGen gen(2024);
  const auto n = static_cast<size_t>(element_count(lc.shape));
  const std::vector<double> x = large_mean_data(gen, n, lc.mean, 1e-2, lc.dtype);
  REQUIRE(bn_set_training(lib.get(), 1) == BN_OK);
  ref.set_training(true);
  std::vector<double> y;
  REQUIRE(lib.forward(lc.shape, x, y) == BN_OK);
  const RefForward fw = ref.forward(lc.shape, x);

  // Tolerances. Let k = mean/stddev (1e6 or 1e8), the factor by which an absolute error
  // in the batch mean is magnified relative to the spread.
  //  * Variance: merging per-block (count, mean, M2) partials (Chan) adds
  //    delta^2*n1*n2/n with delta = the difference of two block means, each of which carries
  //    a few ulps of |mean| of rounding; relative to the variance this is ~eps*k/sqrt(block),
  //    so 10*eps*k (1e-7 at k = 1e8, 1e-9 at k = 1e6) admits any correct blocked two-pass
  //    or Chan scheme. E[x^2] - E[x]^2 in double is off by ~eps*k^2: 1e-4 at k = 1e6, ~1 at 1e8.
  //  * f32 layers return float statistics: at least 4 float ulps (2^-21 ~ 4.8e-7).
  //  * y = (x - mean)/std: the summed mean carries O(log n .. sqrt n) ulps of |mean|, so
  //    100*eps*k absolute (|y| ~ 1); f32 output rounding needs 1e-6. A mean accumulated
  //    in float (error ~6e-8*|mean|) would be off by 6e-8*k >= 0.06.
  const double eps = 0x1p-52, k = lc.mean / 1e-2;
  const bool f32 = lc.dtype == RefDtype::f32;
  const double rel = std::max(f32 ? 4.8e-7 : 0.0, 10 * eps * k);
  auto expect = [](const Comparison& c) {
    INFO(c.message);
    CHECK(c.ok);
  };
  expect(compare_rel("batch_variance", lib.param(BN_PARAM_BATCH_VARIANCE), ref.batch_variance(), rel));
  expect(compare_rel("moving_variance", lib.param(BN_PARAM_MOVING_VARIANCE), ref.moving_variance(), rel));
  // The mean itself: float ulps for f32 statistics, a few double ulps otherwise.
  expect(compare_rel("batch_mean", lib.param(BN_PARAM_BATCH_MEAN), ref.batch_mean(), f32 ? 1.2e-7 : 1e-14));
  const double y_tol = std::max(f32 ? 1e-6 : 0.0, 100 * eps * k);
  expect(compare_rel("y", y, fw.y, y_tol, y_tol));
  // Sanity of the data itself: the variance really is ~1e-4 (f32 rounding of x near 1e4
  // quantizes it to steps of 2^-10, which adds ~8e-8).
  for (double v : ref.batch_variance()) CHECK(v == Approx(1e-4).epsilon(0.5));
}

TEST_CASE("large mean: batch variance stays accurate", "[layer][numerics]") {
  const LargeMeanCase lc = GENERATE(
      LargeMeanCase{{4096, 8}, {-1}, RefDtype::f32, 1e4},           // dense, many o-blocks
      LargeMeanCase{{16, 16, 16, 8}, {-1}, RefDtype::f32, 1e4},     // NHWC, fused (Bessel)
      LargeMeanCase{{16, 8, 32, 32}, {1}, RefDtype::f32, 1e4},      // NCHW, fused
      LargeMeanCase{{4096, 8}, {-1}, RefDtype::f64, 1e4},
      LargeMeanCase{{4096, 8}, {-1}, RefDtype::f64, 1e6},
      LargeMeanCase{{16, 8, 32, 32}, {1}, RefDtype::f64, 1e6},      // NCHW layout, non-fused (f64)
      LargeMeanCase{{32, 6, 16, 10}, {1, 3}, RefDtype::f64, 1e6});  // non-adjacent axes
  check_large_mean(lc);
}

}  // namespace
}  // namespace bn_test
