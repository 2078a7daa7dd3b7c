// The positive contract of the C API (API.md): status names, versions, the documented
// defaults (checked by behaviour on hand-computed data), initial parameters, bitwise
// parameter round trips, the multi-axis parameter layout, aliasing, and NULL outputs.
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <limits>

#include "capi_support.hpp"

using namespace capi_test;

TEST_CASE("every status has its name, unknown values are BN_UNKNOWN_STATUS", "[capi][contract]") {
  const std::pair<bn_status, const char*> names[] = {
      {0, "BN_OK"},          {1, "BN_ERR_INVALID_ARGUMENT"}, {2, "BN_ERR_SHAPE"},
      {3, "BN_ERR_STATE"},   {4, "BN_ERR_OUT_OF_MEMORY"},    {5, "BN_ERR_UNSUPPORTED"},
      {6, "BN_ERR_CORRUPT_DATA"}, {7, "BN_ERR_CALLBACK"},    {8, "BN_ERR_NONFINITE"},
      {9, "BN_ERR_INTERNAL"}};
  // The pinned values themselves (API.md "Status codes").
  CHECK(BN_OK == 0);
  CHECK(BN_ERR_INVALID_ARGUMENT == 1);
  CHECK(BN_ERR_SHAPE == 2);
  CHECK(BN_ERR_STATE == 3);
  CHECK(BN_ERR_OUT_OF_MEMORY == 4);
  CHECK(BN_ERR_UNSUPPORTED == 5);
  CHECK(BN_ERR_CORRUPT_DATA == 6);
  CHECK(BN_ERR_CALLBACK == 7);
  CHECK(BN_ERR_NONFINITE == 8);
  CHECK(BN_ERR_INTERNAL == 9);
  for (const auto& n : names) {
    CAPTURE(n.first);
    REQUIRE(bn_status_string(n.first) != nullptr);
    CHECK(std::string(bn_status_string(n.first)) == n.second);
  }
  for (bn_status s : {10, 11, 100, -1, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()}) {
    CAPTURE(s);
    REQUIRE(bn_status_string(s) != nullptr);
    CHECK(std::string(bn_status_string(s)) == "BN_UNKNOWN_STATUS");
  }
  CHECK(sizeof(bn_status) == 4);
  CHECK(sizeof(bn_dtype) == 4);
  CHECK(sizeof(bn_param) == 4);
}

TEST_CASE("the loaded library reports the version of the header", "[capi][contract]") {
  CHECK(BN_VERSION_NUMBER == BN_VERSION_MAJOR * 10000 + BN_VERSION_MINOR * 100 + BN_VERSION_PATCH);
  CHECK(BN_VERSION_MAJOR == 1);
  CHECK(bn_version() == static_cast<uint32_t>(BN_VERSION_NUMBER));
  char expected[32];
  std::snprintf(expected, sizeof expected, "%d.%d.%d", BN_VERSION_MAJOR, BN_VERSION_MINOR, BN_VERSION_PATCH);
  REQUIRE(bn_version_string() != nullptr);
  CHECK(std::string(bn_version_string()) == expected);
  CHECK(bn_last_error() != nullptr);
}

TEST_CASE("the header's version is the project's (CMakeLists.txt)", "[capi][contract]") {
  char header[32];
  std::snprintf(header, sizeof header, "%d.%d.%d", BN_VERSION_MAJOR, BN_VERSION_MINOR, BN_VERSION_PATCH);
  // project(batchnorm VERSION ...) names the shared object's file, the pkg-config and package
  // versions; BN_VERSION_* the header and bn_version(). A release bumps both.
  CHECK(std::string(BN_PROJECT_VERSION) == header);
}

TEST_CASE("a new config has the documented defaults (by behaviour)", "[capi][contract]") {
  // x[n][j] = (n+1)(j+1), n < 4, j < 3: column j has mean 2.5(j+1) and biased variance
  // 1.25(j+1)^2. Rank 2 is the non-fused path (biased variance into the moving average).
  Config cfg = make_config();
  const std::vector<int64_t> shape = {4, 3};
  Layer layer = make_layer(cfg.get(), shape);
  CHECK(bn_num_features(layer.get()) == 3);  // axis -1
  int fused = -1;
  REQUIRE(bn_get_fused(layer.get(), &fused) == BN_OK);
  CHECK(fused == 0);

  float x[12], y[12];
  for (int n = 0; n < 4; ++n) {
    for (int j = 0; j < 3; ++j) x[n * 3 + j] = static_cast<float>((n + 1) * (j + 1));
  }
  REQUIRE(bn_set_training(layer.get(), 1) == BN_OK);
  REQUIRE(bn_forward(layer.get(), shape.data(), 2, x, y) == BN_OK);  // BN_F32: float buffers

  float mm[3], mv[3], bm[3], bv[3];
  REQUIRE(bn_get_param(layer.get(), BN_PARAM_MOVING_MEAN, mm, 3) == BN_OK);
  REQUIRE(bn_get_param(layer.get(), BN_PARAM_MOVING_VARIANCE, mv, 3) == BN_OK);
  REQUIRE(bn_get_param(layer.get(), BN_PARAM_BATCH_MEAN, bm, 3) == BN_OK);
  REQUIRE(bn_get_param(layer.get(), BN_PARAM_BATCH_VARIANCE, bv, 3) == BN_OK);
  for (int j = 0; j < 3; ++j) {
    CAPTURE(j);
    const double mean = 2.5 * (j + 1), var = 1.25 * (j + 1) * (j + 1);
    CHECK(bm[j] == Approx(mean).epsilon(1e-6));
    CHECK(bv[j] == Approx(var).epsilon(1e-6));
    // momentum 0.99: moving = 0.99*initial + 0.01*batch.
    CHECK(mm[j] == Approx(0.99 * 0.0 + 0.01 * mean).epsilon(1e-5));
    CHECK(mv[j] == Approx(0.99 * 1.0 + 0.01 * var).epsilon(1e-6));
    // epsilon 1e-3 (a relative effect of 4e-4 at j = 0, far above the tolerance);
    // gamma 1 and beta 0.
    for (int n = 0; n < 4; ++n) {
      const double expected = ((n + 1) * (j + 1) - mean) / std::sqrt(var + 1e-3);
      CHECK(y[n * 3 + j] == Approx(expected).epsilon(2e-6).margin(1e-6));
    }
  }

  // center 1, scale 1, trainable 1: parameter gradients are computed. With dy = x:
  // dbeta = sum x = 4*mean, dgamma = sum x*xhat = 4*var/sqrt(var + eps).
  float dx[12], dgamma[3], dbeta[3];
  REQUIRE(bn_backward(layer.get(), shape.data(), 2, x, x, dx, dgamma, dbeta) == BN_OK);
  for (int j = 0; j < 3; ++j) {
    CAPTURE(j);
    const double mean = 2.5 * (j + 1), var = 1.25 * (j + 1) * (j + 1);
    CHECK(dbeta[j] == Approx(4 * mean).epsilon(1e-6));
    CHECK(dgamma[j] == Approx(4 * var / std::sqrt(var + 1e-3)).epsilon(1e-5));
  }
}

TEST_CASE("default fused AUTO under the V1 rules takes the fused path on NHWC rank 4", "[capi][contract]") {
  // Keras' test_bessels_correction with the default momentum: x = [0, 2] in (2,1,1,1),
  // biased variance 1, Bessel-corrected 2, so moving variance = 0.99*1 + 0.01*2 = 1.01
  // (the non-fused path would give 1.0).
  Config cfg = make_config();
  const std::vector<int64_t> shape = {2, 1, 1, 1};
  Layer layer = make_layer(cfg.get(), shape);
  int fused = -1;
  REQUIRE(bn_get_fused(layer.get(), &fused) == BN_OK);
  CHECK(fused == 1);
  const float x[2] = {0.0f, 2.0f};
  float y[2];
  REQUIRE(bn_set_training(layer.get(), 1) == BN_OK);
  REQUIRE(bn_forward(layer.get(), shape.data(), 4, x, y) == BN_OK);
  float mv = 0;
  REQUIRE(bn_get_param(layer.get(), BN_PARAM_MOVING_VARIANCE, &mv, 1) == BN_OK);
  CHECK(mv == Approx(1.01).epsilon(1e-6));
}

TEST_CASE("a new layer is in inference mode with parameters 1/0/0/1", "[capi][contract]") {
  for (bn_dtype dtype : {BN_F32, BN_F64}) {
    CAPTURE(dtype);
    Config cfg = make_config();
    REQUIRE(bn_config_set_dtype(cfg.get(), dtype) == BN_OK);
    const std::vector<int64_t> shape = {5, 3};
    Layer layer = make_layer(cfg.get(), shape);
    const std::pair<bn_param, double> initial[] = {
        {BN_PARAM_GAMMA, 1.0}, {BN_PARAM_BETA, 0.0}, {BN_PARAM_MOVING_MEAN, 0.0}, {BN_PARAM_MOVING_VARIANCE, 1.0}};
    for (const auto& p : initial) {
      Tensor t(dtype, 3);
      t.poison();
      REQUIRE(bn_get_param(layer.get(), p.first, t.data(), 3) == BN_OK);
      for (size_t f = 0; f < 3; ++f) CHECK(t.get(f) == p.second);
    }
    // Inference: y = (x - 0)/sqrt(1 + 1e-3), statistics untouched, no batch statistics.
    Tensor x(dtype, 15), y(dtype, 15);
    x.fill(1);
    REQUIRE(bn_forward(layer.get(), shape.data(), 2, x.data(), y.data()) == BN_OK);
    for (size_t i = 0; i < 15; ++i) CHECK(y.get(i) == Approx(x.get(i) / std::sqrt(1.001)).epsilon(1e-6));
    Tensor t(dtype, 3);
    CHECK(bn_get_param(layer.get(), BN_PARAM_BATCH_MEAN, t.data(), 3) == BN_ERR_STATE);
    REQUIRE(bn_get_param(layer.get(), BN_PARAM_MOVING_MEAN, t.data(), 3) == BN_OK);
    for (size_t f = 0; f < 3; ++f) CHECK(t.get(f) == 0.0);
    REQUIRE(bn_get_param(layer.get(), BN_PARAM_MOVING_VARIANCE, t.data(), 3) == BN_OK);
    for (size_t f = 0; f < 3; ++f) CHECK(t.get(f) == 1.0);
  }
}

TEST_CASE("parameters round-trip bitwise through set and get", "[capi][contract]") {
  const float f_any[] = {-0.0f, FLT_TRUE_MIN, -FLT_MAX, 1.0f / 3.0f, FLT_MIN, -7.25e-20f};
  const float f_var[] = {0.0f, FLT_TRUE_MIN, FLT_MAX, 1.0f / 3.0f, FLT_MIN, 7.25e20f};
  const double d_any[] = {-0.0, DBL_TRUE_MIN, -DBL_MAX, 0.1, DBL_MIN, -1.0 / 3.0};
  const double d_var[] = {0.0, DBL_TRUE_MIN, DBL_MAX, 0.1, DBL_MIN, 1e300};
  for (bn_dtype dtype : {BN_F32, BN_F64}) {
    CAPTURE(dtype);
    Config cfg = make_config();
    REQUIRE(bn_config_set_dtype(cfg.get(), dtype) == BN_OK);
    Layer layer = make_layer(cfg.get(), {2, 6});
    for (bn_param which : {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE}) {
      CAPTURE(which);
      const bool var = which == BN_PARAM_MOVING_VARIANCE;
      const void* in = dtype == BN_F64 ? static_cast<const void*>(var ? d_var : d_any)
                                       : static_cast<const void*>(var ? f_var : f_any);
      const size_t bytes = dtype == BN_F64 ? sizeof d_any : sizeof f_any;
      REQUIRE(bn_set_param(layer.get(), which, in, 6) == BN_OK);
      Tensor out(dtype, 6);
      out.poison();
      REQUIRE(bn_get_param(layer.get(), which, out.data(), 6) == BN_OK);
      CHECK(std::memcmp(out.data(), in, bytes) == 0);
    }
  }
}

TEST_CASE("with several axes, parameters are row-major over the kept axes in input order", "[capi][contract]") {
  // Input (N, C, H, W) = (2, 3, 2, 5), kept axes C and W: 15 features, index c*5 + w,
  // whatever order the axes are given in. x = 100c + w + s(n)t(h) where the s*t term
  // sums to 0 over (n, h), so the batch mean of feature c*5 + w is exactly 100c + w.
  const std::vector<int64_t> shape = {2, 3, 2, 5};
  const std::vector<std::vector<int32_t>> axis_lists = {{1, 3}, {3, 1}, {-3, -1}, {-1, 1}};
  for (const auto& axes : axis_lists) {
    CAPTURE(axes);
    Config cfg = make_config();
    REQUIRE(bn_config_set_dtype(cfg.get(), BN_F64) == BN_OK);
    REQUIRE(bn_config_set_axes(cfg.get(), axes.data(), static_cast<int32_t>(axes.size())) == BN_OK);
    Layer layer = make_layer(cfg.get(), shape);
    REQUIRE(bn_num_features(layer.get()) == 15);
    std::vector<double> x(60), y(60);
    for (int n = 0; n < 2; ++n)
      for (int c = 0; c < 3; ++c)
        for (int h = 0; h < 2; ++h)
          for (int w = 0; w < 5; ++w) {
            const double st = (n == 0 ? 1.0 : -1.0) * (h == 0 ? 0.25 : 0.75);
            x[((n * 3 + c) * 2 + h) * 5 + w] = 100.0 * c + w + st;
          }
    REQUIRE(bn_set_training(layer.get(), 1) == BN_OK);
    REQUIRE(bn_forward(layer.get(), shape.data(), 4, x.data(), y.data()) == BN_OK);
    double mean[15];
    REQUIRE(bn_get_param(layer.get(), BN_PARAM_BATCH_MEAN, mean, 15) == BN_OK);
    for (int i = 0; i < 15; ++i) CHECK(mean[i] == Approx(100.0 * (i / 5) + i % 5).margin(1e-12));

    // The same layout going in: moving mean m[c*5 + w] = c*5 + w, moving variance 1,
    // inference on x = 0 gives y = -(c*5 + w)/sqrt(1 + 1e-3).
    double mm[15], mv[15];
    for (int i = 0; i < 15; ++i) {
      mm[i] = i;
      mv[i] = 1.0;
    }
    REQUIRE(bn_set_param(layer.get(), BN_PARAM_MOVING_MEAN, mm, 15) == BN_OK);
    REQUIRE(bn_set_param(layer.get(), BN_PARAM_MOVING_VARIANCE, mv, 15) == BN_OK);
    REQUIRE(bn_set_training(layer.get(), 0) == BN_OK);
    std::vector<double> zeros(60, 0.0);
    REQUIRE(bn_forward(layer.get(), shape.data(), 4, zeros.data(), y.data()) == BN_OK);
    for (int n = 0; n < 2; ++n)
      for (int c = 0; c < 3; ++c)
        for (int h = 0; h < 2; ++h)
          for (int w = 0; w < 5; ++w) {
            CAPTURE(n, c, h, w);
            CHECK(y[((n * 3 + c) * 2 + h) * 5 + w] == Approx(-(c * 5.0 + w) / std::sqrt(1.001)).margin(1e-12));
          }
  }
}

TEST_CASE("in-place forward and backward equal out-of-place bitwise", "[capi][contract]") {
  const std::vector<int64_t> shape = {8, 3, 37};  // axis 1 with an inner extent
  const int32_t axes[] = {1};
  for (bn_dtype dtype : {BN_F32, BN_F64, BN_BF16, BN_F16}) {
    for (int training : {1, 0}) {
      CAPTURE(dtype, training);
      Config cfg = make_config();
      REQUIRE(bn_config_set_dtype(cfg.get(), dtype) == BN_OK);
      REQUIRE(bn_config_set_axes(cfg.get(), axes, 1) == BN_OK);
      const Probe a(dtype, shape, training != 0, false, cfg.get());
      const Probe b(dtype, shape, training != 0, false, cfg.get());
      const int64_t n = element_count(shape);

      Tensor y(dtype, n);
      REQUIRE(bn_forward(a.get(), shape.data(), 3, a.x.data(), y.data()) == BN_OK);
      Tensor inplace = b.x;
      REQUIRE(bn_forward(b.get(), shape.data(), 3, inplace.data(), inplace.data()) == BN_OK);
      CHECK(inplace.bytes == y.bytes);

      const bn_dtype pd = param_dtype(dtype);
      Tensor dx(dtype, n), dga(pd, 3), dba(pd, 3), dgb(pd, 3), dbb(pd, 3);
      REQUIRE(bn_backward(a.get(), shape.data(), 3, a.x.data(), a.dy.data(), dx.data(), dga.data(), dba.data()) ==
              BN_OK);
      Tensor grad = b.dy;  // dx written over dy; x is the original input (borrowed again)
      REQUIRE(bn_backward(b.get(), shape.data(), 3, b.x.data(), grad.data(), grad.data(), dgb.data(), dbb.data()) ==
              BN_OK);
      CHECK(grad.bytes == dx.bytes);
      CHECK(dgb.bytes == dga.bytes);
      CHECK(dbb.bytes == dba.bytes);
      CHECK(dx.bytes != a.dy.bytes);  // the gradient is not the identity here
    }
  }
}

TEST_CASE("NULL dx, dgamma or dbeta skips that output only", "[capi][contract]") {
  for (bn_dtype dtype : {BN_F32, BN_F64, BN_BF16, BN_F16}) {
    for (bool training : {true, false}) {
      CAPTURE(dtype, training);
      const Probe p(dtype, {6, 4}, training);
      const int64_t n = 24;
      const bn_dtype pd = param_dtype(dtype);
      Tensor dx(dtype, n), dg(pd, 4), db(pd, 4);
      REQUIRE(bn_backward(p.get(), p.shape.data(), 2, p.x.data(), p.dy.data(), dx.data(), dg.data(), db.data()) ==
              BN_OK);
      for (int mask = 0; mask < 8; ++mask) {
        CAPTURE(mask);
        Tensor dx2(dtype, n), dg2(pd, 4), db2(pd, 4);
        dx2.poison();
        dg2.poison();
        db2.poison();
        const Bytes poisoned_dx = dx2.bytes, poisoned_g = dg2.bytes;
        REQUIRE(bn_backward(p.get(), p.shape.data(), 2, p.x.data(), p.dy.data(), (mask & 1) ? dx2.data() : nullptr,
                            (mask & 2) ? dg2.data() : nullptr, (mask & 4) ? db2.data() : nullptr) == BN_OK);
        CHECK(dx2.bytes == ((mask & 1) ? dx.bytes : poisoned_dx));
        CHECK(dg2.bytes == ((mask & 2) ? dg.bytes : poisoned_g));
        CHECK(db2.bytes == ((mask & 4) ? db.bytes : poisoned_g));
      }
    }
  }
}
