// Bad input to a live layer: every refusal returns its status, names the function and
// the argument, leaves the layer bitwise as it was (parameters, statistics and the
// saved forward, see capi_support.hpp) and writes nothing into the caller's buffers.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <utility>

#include "capi_support.hpp"

using namespace capi_test;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kBig = int64_t{1} << 62;

// The probes every case below runs on: each dtype, after a training or an inference forward.
std::vector<std::pair<bn_dtype, bool>> probe_kinds() {
  return {{BN_F32, true},  {BN_F32, false},  {BN_F64, true}, {BN_F64, false},
          {BN_BF16, true}, {BN_BF16, false}, {BN_F16, true}, {BN_F16, false}};
}

// Elements of `shape` if it is a small valid shape, else `floor`: failing calls get
// buffers large enough that a library wrongly accepting the shape could not overrun them.
size_t buffer_count(const std::vector<int64_t>& shape, int32_t ndim, size_t floor) {
  if (ndim < 1 || ndim > static_cast<int32_t>(shape.size())) return floor;
  int64_t n = 1;
  for (int32_t d = 0; d < ndim; ++d) {
    if (shape[d] < 0 || shape[d] > (int64_t{1} << 20)) return floor;
    n *= shape[d];
    if (n > (int64_t{1} << 20)) return floor;
  }
  return std::max(floor, static_cast<size_t>(n));
}

// A copy of `t` grown (zero-padded) to n elements.
Tensor grown(const Tensor& t, size_t n) {
  Tensor g = t;
  g.bytes.resize(n * t.esize, 0);
  return g;
}

// A forward that must fail: also checks y was not written.
void expect_forward_failure(const Probe& p, const std::vector<int64_t>& shape, int32_t ndim, bn_status expected,
                            std::initializer_list<const char*> needles) {
  const size_t n = buffer_count(shape, ndim, p.x.count());
  const Tensor x = grown(p.x, n);
  Tensor y(p.dtype, static_cast<int64_t>(n));
  y.poison();
  const Bytes pristine = y.bytes;
  expect_failure(p, expected, needles, [&] { return bn_forward(p.get(), shape.data(), ndim, x.data(), y.data()); });
  CHECK(y.bytes == pristine);
}

// A backward that must fail: also checks dx, dgamma and dbeta were not written.
void expect_backward_failure(const Probe& p, const std::vector<int64_t>& shape, int32_t ndim, bn_status expected,
                             std::initializer_list<const char*> needles) {
  const size_t n = buffer_count(shape, ndim, p.x.count());
  const Tensor x = grown(p.x, n), dy = grown(p.dy, n);
  Tensor dx(p.dtype, static_cast<int64_t>(n)), dgamma(param_dtype(p.dtype), p.features()),
      dbeta(param_dtype(p.dtype), p.features());
  dx.poison();
  dgamma.poison();
  dbeta.poison();
  const Bytes pristine_dx = dx.bytes, pristine_dg = dgamma.bytes, pristine_db = dbeta.bytes;
  expect_failure(p, expected, needles, [&] {
    return bn_backward(p.get(), shape.data(), ndim, x.data(), dy.data(), dx.data(), dgamma.data(), dbeta.data());
  });
  CHECK(dx.bytes == pristine_dx);
  CHECK(dgamma.bytes == pristine_dg);
  CHECK(dbeta.bytes == pristine_db);
}

}  // namespace

TEST_CASE("NULL layer is refused by every layer function", "[capi][bad_input]") {
  CHECK(bn_num_features(nullptr) == -1);
  CHECK(mentions(bn_last_error(), "bn_num_features"));
  const int64_t shape[] = {2, 3};
  float buf[6] = {};
  int fused = -1;
  const std::vector<std::pair<const char*, std::function<bn_status()>>> cases = {
      {"bn_set_training", [] { return bn_set_training(nullptr, 1); }},
      {"bn_set_trainable", [] { return bn_set_trainable(nullptr, 1); }},
      {"bn_set_momentum", [] { return bn_set_momentum(nullptr, 0.5); }},
      {"bn_set_num_threads", [] { return bn_set_num_threads(nullptr, 1); }},
      {"bn_set_nonfinite_policy", [] { return bn_set_nonfinite_policy(nullptr, 0); }},
      {"bn_get_fused", [&] { return bn_get_fused(nullptr, &fused); }},
      {"bn_forward", [&] { return bn_forward(nullptr, shape, 2, buf, buf); }},
      {"bn_backward", [&] { return bn_backward(nullptr, shape, 2, buf, buf, buf, buf, buf); }},
      {"bn_get_param", [&] { return bn_get_param(nullptr, BN_PARAM_GAMMA, buf, 3); }},
      {"bn_set_param", [&] { return bn_set_param(nullptr, BN_PARAM_GAMMA, buf, 3); }},
  };
  for (const auto& c : cases) {
    CAPTURE(c.first);
    poison_last_error();
    check_status(c.second(), BN_ERR_INVALID_ARGUMENT, {c.first, "layer"});
  }
  CHECK(fused == -1);
}

TEST_CASE("NULL buffers are refused and change nothing", "[capi][bad_input]") {
  for (auto [dtype, training] : probe_kinds()) {
    CAPTURE(dtype, training);
    const Probe p(dtype, {6, 4}, training);
    const int64_t* s = p.shape.data();
    Tensor y(dtype, p.x.count()), params(param_dtype(dtype), 4);
    y.poison();
    params.poison();
    const Bytes pristine_y = y.bytes;
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_forward", "shape"},
                   [&] { return bn_forward(p.get(), nullptr, 2, p.x.data(), y.data()); });
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_forward", "x"},
                   [&] { return bn_forward(p.get(), s, 2, nullptr, y.data()); });
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_forward", "y"},
                   [&] { return bn_forward(p.get(), s, 2, p.x.data(), nullptr); });
    CHECK(y.bytes == pristine_y);
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_backward", "shape"},
                   [&] { return bn_backward(p.get(), nullptr, 2, p.x.data(), p.dy.data(), y.data(), nullptr, nullptr); });
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_backward", "x"},
                   [&] { return bn_backward(p.get(), s, 2, nullptr, p.dy.data(), y.data(), nullptr, nullptr); });
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_backward", "dy"},
                   [&] { return bn_backward(p.get(), s, 2, p.x.data(), nullptr, y.data(), nullptr, nullptr); });
    CHECK(y.bytes == pristine_y);
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_get_param", "out"},
                   [&] { return bn_get_param(p.get(), BN_PARAM_GAMMA, nullptr, 4); });
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", "values"},
                   [&] { return bn_set_param(p.get(), BN_PARAM_GAMMA, nullptr, 4); });
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_get_fused", "fused_out"},
                   [&] { return bn_get_fused(p.get(), nullptr); });
  }
}

TEST_CASE("bn_forward refuses shapes that do not fit the layer", "[capi][bad_input]") {
  for (auto [dtype, training] : probe_kinds()) {
    CAPTURE(dtype, training);
    const Probe p(dtype, {6, 4}, training);
    const std::vector<int64_t> nine(9, 1);
    for (int32_t ndim : {0, 9, -1, 1, 3}) {
      CAPTURE(ndim);
      expect_forward_failure(p, nine, ndim, BN_ERR_SHAPE, {"bn_forward", "ndim"});
    }
    expect_forward_failure(p, {-2, 4}, 2, BN_ERR_SHAPE, {"bn_forward", "shape[0]"});
    expect_forward_failure(p, {6, -4}, 2, BN_ERR_SHAPE, {"bn_forward", "shape[1]"});
    expect_forward_failure(p, {6, 5}, 2, BN_ERR_SHAPE, {"bn_forward", "shape[1]"});
    expect_forward_failure(p, {6, 3}, 2, BN_ERR_SHAPE, {"bn_forward", "shape[1]"});
    expect_forward_failure(p, {0, 5}, 2, BN_ERR_SHAPE, {"bn_forward", "shape[1]"});
    // 2^62 * 4 = 2^64 elements: must be refused before any element is touched.
    expect_forward_failure(p, {kBig, 4}, 2, BN_ERR_SHAPE, {"bn_forward", "shape"});
    expect_forward_failure(p, {std::numeric_limits<int64_t>::max(), 4}, 2, BN_ERR_SHAPE, {"bn_forward", "shape"});
  }
  // Rank 3, the overflow spread over two reduced axes.
  const Probe p3(BN_F32, {2, 3, 4}, true);
  expect_forward_failure(p3, {int64_t{1} << 31, int64_t{1} << 31, 4}, 3, BN_ERR_SHAPE, {"bn_forward", "shape"});
}

TEST_CASE("bn_backward refuses bad shapes and a missing or different forward", "[capi][bad_input]") {
  for (auto [dtype, training] : probe_kinds()) {
    CAPTURE(dtype, training);
    const Probe p(dtype, {6, 4}, training);
    const std::vector<int64_t> nine(9, 1);
    for (int32_t ndim : {0, 9, -1, 1}) {
      CAPTURE(ndim);
      expect_backward_failure(p, nine, ndim, BN_ERR_SHAPE, {"bn_backward", "ndim"});
    }
    expect_backward_failure(p, {-6, 4}, 2, BN_ERR_SHAPE, {"bn_backward", "shape[0]"});
    expect_backward_failure(p, {6, 5}, 2, BN_ERR_SHAPE, {"bn_backward", "shape[1]"});
    expect_backward_failure(p, {kBig, 4}, 2, BN_ERR_SHAPE, {"bn_backward", "shape"});
    // A valid shape for the layer, but not the shape of the most recent forward.
    expect_backward_failure(p, {5, 4}, 2, BN_ERR_STATE, {"bn_backward", "shape"});
    expect_backward_failure(p, {3, 4}, 2, BN_ERR_STATE, {"bn_backward", "shape"});
  }
  for (auto [dtype, training] : probe_kinds()) {
    CAPTURE(dtype, training);
    // No forward at all.
    const Probe fresh(dtype, {6, 4}, training, /*forward=*/false);
    expect_backward_failure(fresh, fresh.shape, 2, BN_ERR_STATE, {"bn_backward", "bn_forward"});

    // A parameter set since the forward invalidates it.
    Probe p(dtype, {6, 4}, training);
    Tensor gamma(param_dtype(dtype), 4);
    REQUIRE(bn_get_param(p.get(), BN_PARAM_GAMMA, gamma.data(), 4) == BN_OK);
    REQUIRE(bn_set_param(p.get(), BN_PARAM_GAMMA, gamma.data(), 4) == BN_OK);  // same values: still invalidates
    p.forwarded = false;
    expect_backward_failure(p, p.shape, 2, BN_ERR_STATE, {"bn_backward"});
  }
}

TEST_CASE("after a failed forward, bn_backward still refers to the last successful forward", "[capi][bad_input]") {
  // Twin layers with the same history; one also gets failing forwards. Their backward
  // of the last successful forward must agree bitwise, and a backward for the failed
  // forward's shape is BN_ERR_STATE.
  for (bn_dtype dtype : {BN_F32, BN_F64}) {
    CAPTURE(dtype);
    Config cfg = make_config();
    REQUIRE(bn_config_set_dtype(cfg.get(), dtype) == BN_OK);
    REQUIRE(bn_config_set_single_value_policy(cfg.get(), BN_SINGLE_VALUE_REJECT) == BN_OK);
    const Probe a(dtype, {6, 4}, true, true, cfg.get());
    const Probe b(dtype, {6, 4}, true, true, cfg.get());

    // (1, 4) is a valid shape, but training on one value per feature is refused (REJECT).
    const std::vector<int64_t> single = {1, 4};
    Tensor x1(dtype, 4), y1(dtype, 4);
    x1.fill(3);
    y1.poison();
    const Bytes pristine = y1.bytes;
    expect_failure(b, BN_ERR_SHAPE, {"bn_forward"},
                   [&] { return bn_forward(b.get(), single.data(), 2, x1.data(), y1.data()); });
    CHECK(y1.bytes == pristine);
    expect_forward_failure(b, {6, 7}, 2, BN_ERR_SHAPE, {"bn_forward", "shape[1]"});
    expect_backward_failure(b, single, 2, BN_ERR_STATE, {"bn_backward"});

    CHECK(snapshot(a) == snapshot(b));
    // And the next successful forward behaves as on the twin.
    Tensor ya(dtype, 24), yb(dtype, 24);
    REQUIRE(bn_forward(a.get(), a.shape.data(), 2, a.dy.data(), ya.data()) == BN_OK);
    REQUIRE(bn_forward(b.get(), b.shape.data(), 2, b.dy.data(), yb.data()) == BN_OK);
    CHECK(ya.bytes == yb.bytes);
  }
}

TEST_CASE("layer setters refuse values out of range", "[capi][bad_input]") {
  for (auto [dtype, training] : probe_kinds()) {
    CAPTURE(dtype, training);
    const Probe p(dtype, {6, 4}, training);
    for (int v : {2, -1}) {
      CAPTURE(v);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_training", "training"},
                     [&] { return bn_set_training(p.get(), v); });
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_trainable", "trainable"},
                     [&] { return bn_set_trainable(p.get(), v); });
    }
    for (double m : {-0.1, 1.1, kNaN, kInf, -kInf}) {
      CAPTURE(m);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_momentum", "momentum"},
                     [&] { return bn_set_momentum(p.get(), m); });
    }
    for (int32_t t : {-1, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()}) {
      CAPTURE(t);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_num_threads", "max_threads"},
                     [&] { return bn_set_num_threads(p.get(), t); });
    }
    for (int32_t v : {-1, 3, std::numeric_limits<int32_t>::max()}) {
      CAPTURE(v);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_nonfinite_policy", "policy"},
                     [&] { return bn_set_nonfinite_policy(p.get(), v); });
    }
  }
}

TEST_CASE("failed bn_set_training and bn_set_momentum keep the mode and the momentum", "[capi][bad_input]") {
  // Both layers: inference mode, momentum 0.5 after a valid set. Then refused calls on b.
  Probe a(BN_F64, {6, 4}, false, false);
  Probe b(BN_F64, {6, 4}, false, false);
  for (const Probe* p : {&a, &b}) REQUIRE(bn_set_momentum(p->get(), 0.5) == BN_OK);
  CHECK(bn_set_training(b.get(), 2) == BN_ERR_INVALID_ARGUMENT);
  CHECK(bn_set_momentum(b.get(), 1.5) == BN_ERR_INVALID_ARGUMENT);
  // Still inference: a forward leaves the moving statistics alone and BATCH_MEAN unreadable.
  Tensor y(BN_F64, 24), mm(BN_F64, 4);
  REQUIRE(bn_forward(b.get(), b.shape.data(), 2, b.x.data(), y.data()) == BN_OK);
  CHECK(bn_get_param(b.get(), BN_PARAM_BATCH_MEAN, mm.data(), 4) == BN_ERR_STATE);
  // Still momentum 0.5: train both and compare.
  for (Probe* p : {&a, &b}) {
    REQUIRE(bn_set_training(p->get(), 1) == BN_OK);
    REQUIRE(bn_forward(p->get(), p->shape.data(), 2, p->x.data(), y.data()) == BN_OK);
    p->trained = p->forwarded = true;
  }
  CHECK(snapshot(a) == snapshot(b));
}

TEST_CASE("bn_get_param refuses unknown, absent and not-yet-computed parameters", "[capi][bad_input]") {
  for (auto [dtype, training] : probe_kinds()) {
    CAPTURE(dtype, training);
    const Probe p(dtype, {6, 4}, training);
    Tensor out(param_dtype(dtype), 8);
    out.poison();
    const Bytes pristine = out.bytes;
    for (bn_param which : {9, -1, 100}) {
      CAPTURE(which);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_get_param", "which"},
                     [&] { return bn_get_param(p.get(), which, out.data(), 4); });
    }
    for (int64_t count : {3, 5, 0, -1, -4}) {
      CAPTURE(count);
      expect_failure(p, BN_ERR_SHAPE, {"bn_get_param", "count"},
                     [&] { return bn_get_param(p.get(), BN_PARAM_MOVING_MEAN, out.data(), count); });
    }
    const std::pair<bn_param, const char*> renorm[] = {
        {BN_PARAM_RENORM_MEAN, "RENORM_MEAN"}, {BN_PARAM_RENORM_STDDEV, "RENORM_STDDEV"},
        {BN_PARAM_MOVING_STDDEV, "MOVING_STDDEV"}};
    for (const auto& r : renorm) {
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_get_param", r.second},
                     [&] { return bn_get_param(p.get(), r.first, out.data(), 4); });
    }
    if (!training) {
      expect_failure(p, BN_ERR_STATE, {"bn_get_param", "BATCH_MEAN"},
                     [&] { return bn_get_param(p.get(), BN_PARAM_BATCH_MEAN, out.data(), 4); });
      expect_failure(p, BN_ERR_STATE, {"bn_get_param", "BATCH_VARIANCE"},
                     [&] { return bn_get_param(p.get(), BN_PARAM_BATCH_VARIANCE, out.data(), 4); });
    }
    CHECK(out.bytes == pristine);
  }
}

TEST_CASE("bn_set_param refuses unknown, read-only and absent parameters, bad counts and values",
          "[capi][bad_input]") {
  for (auto [dtype, training] : probe_kinds()) {
    CAPTURE(dtype, training);
    const Probe p(dtype, {6, 4}, training);
    Tensor v(param_dtype(dtype), 8);
    for (size_t i = 0; i < 8; ++i) v.set(i, 0.75);
    for (bn_param which : {9, -1, 100}) {
      CAPTURE(which);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", "which"},
                     [&] { return bn_set_param(p.get(), which, v.data(), 4); });
    }
    for (bn_param which : {BN_PARAM_GAMMA, BN_PARAM_MOVING_VARIANCE}) {
      for (int64_t count : {3, 5, 0, -1}) {
        CAPTURE(which, count);
        expect_failure(p, BN_ERR_SHAPE, {"bn_set_param", "count"},
                       [&] { return bn_set_param(p.get(), which, v.data(), count); });
      }
    }
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", "BATCH_MEAN"},
                   [&] { return bn_set_param(p.get(), BN_PARAM_BATCH_MEAN, v.data(), 4); });
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", "BATCH_VARIANCE"},
                   [&] { return bn_set_param(p.get(), BN_PARAM_BATCH_VARIANCE, v.data(), 4); });
    const std::pair<bn_param, const char*> renorm[] = {
        {BN_PARAM_RENORM_MEAN, "RENORM_MEAN"}, {BN_PARAM_RENORM_STDDEV, "RENORM_STDDEV"},
        {BN_PARAM_MOVING_STDDEV, "MOVING_STDDEV"}};
    for (const auto& r : renorm) {
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", r.second},
                     [&] { return bn_set_param(p.get(), r.first, v.data(), 4); });
    }
    // Non-finite values in any parameter, at the last index so a partial write would show.
    for (bn_param which : {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE}) {
      for (double bad : {kNaN, kInf, -kInf}) {
        CAPTURE(which, bad);
        Tensor w = v;
        w.set(3, bad);
        expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", "values[3]"},
                       [&] { return bn_set_param(p.get(), which, w.data(), 4); });
      }
    }
    Tensor neg = v;
    neg.set(2, -0.5);
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", "values[2]"},
                   [&] { return bn_set_param(p.get(), BN_PARAM_MOVING_VARIANCE, neg.data(), 4); });
    neg.set(2, dtype == BN_F64 ? -4.9e-324 : -1.4e-45);  // the smallest negative subnormal
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", "values[2]"},
                   [&] { return bn_set_param(p.get(), BN_PARAM_MOVING_VARIANCE, neg.data(), 4); });
  }
}

TEST_CASE("GAMMA on a scale=0 layer and BETA on a center=0 layer are refused", "[capi][bad_input]") {
  for (bn_dtype dtype : {BN_F32, BN_F64}) {
    CAPTURE(dtype);
    Config cfg = make_config();
    REQUIRE(bn_config_set_dtype(cfg.get(), dtype) == BN_OK);
    REQUIRE(bn_config_set_scale(cfg.get(), 0) == BN_OK);
    REQUIRE(bn_config_set_center(cfg.get(), 0) == BN_OK);
    const Probe p(dtype, {6, 4}, true, true, cfg.get());
    Tensor v(dtype, 4);
    for (size_t i = 0; i < 4; ++i) v.set(i, 2.0);
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", "GAMMA", "scale"},
                   [&] { return bn_set_param(p.get(), BN_PARAM_GAMMA, v.data(), 4); });
    expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", "BETA", "center"},
                   [&] { return bn_set_param(p.get(), BN_PARAM_BETA, v.data(), 4); });
    // They read as the constants they are: gamma 1, beta 0.
    Tensor g(dtype, 4), b(dtype, 4);
    REQUIRE(bn_get_param(p.get(), BN_PARAM_GAMMA, g.data(), 4) == BN_OK);
    REQUIRE(bn_get_param(p.get(), BN_PARAM_BETA, b.data(), 4) == BN_OK);
    for (size_t i = 0; i < 4; ++i) {
      CHECK(g.get(i) == 1.0);
      CHECK(b.get(i) == 0.0);
    }
  }
}
