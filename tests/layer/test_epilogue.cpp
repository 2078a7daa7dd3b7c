// The fused epilogue y = max(bn(x) + residual, 0) and its backward, through the C API.
// Expectations come from a second layer without the epilogue: the fused forward must equal
// max(y0 + r, 0) bit for bit (the same rounded normalization, then one rounded add), and the
// fused backward must equal the plain backward of the masked gradient dy*(y > 0) bit for bit.
// Finite differences (f64) check the composed gradient independently.
#include <batchnorm/batchnorm.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

struct Case {
  std::vector<int64_t> shape;
  std::vector<int32_t> axes;
};

int64_t count(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

template <class T>
bn_dtype dtype_of() {
  return sizeof(T) == 8 ? BN_F64 : BN_F32;
}

template <class T>
bn_layer* make(const Case& c, bool relu, bool training) {
  bn_config* cfg = nullptr;
  REQUIRE(bn_config_create(&cfg) == BN_OK);
  REQUIRE(bn_config_set_axes(cfg, c.axes.data(), static_cast<int32_t>(c.axes.size())) == BN_OK);
  REQUIRE(bn_config_set_dtype(cfg, dtype_of<T>()) == BN_OK);
  REQUIRE(bn_config_set_relu(cfg, relu ? 1 : 0) == BN_OK);
  bn_layer* layer = nullptr;
  REQUIRE(bn_create(cfg, c.shape.data(), static_cast<int32_t>(c.shape.size()), &layer) == BN_OK);
  bn_config_destroy(cfg);
  // Parameters away from the defaults, so that the ReLU cuts at varied places.
  const int64_t f = bn_num_features(layer);
  std::vector<T> g(f), b(f), mm(f), mv(f);
  for (int64_t i = 0; i < f; ++i) {
    g[i] = static_cast<T>(0.5 + 0.1 * static_cast<double>(i % 7));
    b[i] = static_cast<T>(-0.3 + 0.05 * static_cast<double>(i % 5));
    mm[i] = static_cast<T>(0.2 * static_cast<double>(i % 3));
    mv[i] = static_cast<T>(0.5 + static_cast<double>(i % 4));
  }
  REQUIRE(bn_set_param(layer, BN_PARAM_GAMMA, g.data(), f) == BN_OK);
  REQUIRE(bn_set_param(layer, BN_PARAM_BETA, b.data(), f) == BN_OK);
  REQUIRE(bn_set_param(layer, BN_PARAM_MOVING_MEAN, mm.data(), f) == BN_OK);
  REQUIRE(bn_set_param(layer, BN_PARAM_MOVING_VARIANCE, mv.data(), f) == BN_OK);
  REQUIRE(bn_set_training(layer, training ? 1 : 0) == BN_OK);
  return layer;
}

template <class T>
std::vector<T> random(int64_t n, uint32_t seed, double scale) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(-scale, scale);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& e : v) e = static_cast<T>(u(gen));
  return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all{
      {{3, 5, 7, 9}, {1}},      // NCHW: planar rows with a tail
      {{2, 4, 4, 37}, {-1}},    // NHWC: interleaved with a tail
      {{20, 300}, {-1}},        // dense
      {{2, 40, 33}, {1}},       // NCL
      {{3, 4, 5, 6}, {1, 3}},   // kept axes split by a reduced one (reference kernels)
  };
  return all;
}

template <class T>
void check_epilogue(const Case& c, bool training, bool with_residual) {
  const int64_t n = count(c.shape);
  const auto nd = static_cast<int32_t>(c.shape.size());
  bn_layer* fused = make<T>(c, true, training);
  bn_layer* plain = make<T>(c, false, training);
  const std::vector<T> x = random<T>(n, 1, 2.0), r = random<T>(n, 2, 1.0), dy = random<T>(n, 3, 1.0);
  const int64_t f = bn_num_features(fused);

  // Forward: fused vs max(plain + r, 0).
  std::vector<T> y(n), y0(n), want(n);
  if (with_residual) {
    REQUIRE(bn_forward_residual(fused, c.shape.data(), nd, x.data(), r.data(), y.data()) == BN_OK);
  } else {
    REQUIRE(bn_forward(fused, c.shape.data(), nd, x.data(), y.data()) == BN_OK);
  }
  REQUIRE(bn_forward(plain, c.shape.data(), nd, x.data(), y0.data()) == BN_OK);
  int open = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T z = with_residual ? static_cast<T>(y0[i] + r[i]) : y0[i];
    want[i] = z > T(0) ? z : T(0);
    open += z > T(0);
  }
  CHECK(same_bits(y, want));
  CHECK(open > n / 8);      // the ReLU cuts somewhere...
  CHECK(open < n - n / 8);  // ...but not everywhere

  // Backward: fused vs plain on dy*(y > 0); dresidual = dy*(y > 0).
  std::vector<T> dx(n), dres(n), dg(f), db(f), dx0(n), dg0(f), db0(f), masked(n);
  for (int64_t i = 0; i < n; ++i) masked[i] = y[i] > T(0) ? dy[i] : T(0);
  REQUIRE(bn_backward_residual(fused, c.shape.data(), nd, x.data(), y.data(), dy.data(), dx.data(), dres.data(),
                               dg.data(), db.data()) == BN_OK);
  REQUIRE(bn_backward(plain, c.shape.data(), nd, x.data(), masked.data(), dx0.data(), dg0.data(), db0.data()) == BN_OK);
  CHECK(same_bits(dx, dx0));
  CHECK(same_bits(dg, dg0));
  CHECK(same_bits(db, db0));
  CHECK(same_bits(dres, masked));

  if (!with_residual) {
    // bn_backward recomputes the mask from x: the same bits as with y.
    std::vector<T> dx2(n), dg2(f), db2(f);
    REQUIRE(bn_backward(fused, c.shape.data(), nd, x.data(), dy.data(), dx2.data(), dg2.data(), db2.data()) == BN_OK);
    CHECK(same_bits(dx2, dx));
    CHECK(same_bits(dg2, dg));
    CHECK(same_bits(db2, db));
  } else {
    // Without y the mask cannot be known: refused, nothing written.
    std::vector<T> dx2(n, T(7));
    CHECK(bn_backward(fused, c.shape.data(), nd, x.data(), dy.data(), dx2.data(), nullptr, nullptr) == BN_ERR_STATE);
    CHECK(std::string(bn_last_error()).find("bn_backward_residual") != std::string::npos);
    for (T v : dx2) CHECK(v == T(7));
  }
  bn_destroy(fused);
  bn_destroy(plain);
}

TEST_CASE("fused ReLU and residual: forward and backward equal the composed plain layer", "[epilogue]") {
  const size_t index = GENERATE(range(size_t{0}, cases().size()));
  const bool training = GENERATE(true, false);
  const bool residual = GENERATE(true, false);
  const Case& c = cases()[index];
  CAPTURE(index, training, residual);
  check_epilogue<float>(c, training, residual);
  check_epilogue<double>(c, training, residual);
}

TEST_CASE("fused residual without ReLU passes the gradient through", "[epilogue]") {
  const Case c{{4, 3, 5}, {1}};
  bn_layer* layer = make<float>(c, false, true);
  bn_layer* plain = make<float>(c, false, true);
  const int64_t n = count(c.shape);
  const std::vector<float> x = random<float>(n, 4, 1.0), r = random<float>(n, 5, 1.0), dy = random<float>(n, 6, 1.0);
  std::vector<float> y(n), y0(n), dx(n), dx0(n), dres(n);
  REQUIRE(bn_forward_residual(layer, c.shape.data(), 3, x.data(), r.data(), y.data()) == BN_OK);
  REQUIRE(bn_forward(plain, c.shape.data(), 3, x.data(), y0.data()) == BN_OK);
  for (int64_t i = 0; i < n; ++i) CHECK(y[i] == y0[i] + r[i]);
  // Without a ReLU, bn_backward needs no y even after a residual forward.
  REQUIRE(bn_backward(layer, c.shape.data(), 3, x.data(), dy.data(), dx.data(), nullptr, nullptr) == BN_OK);
  REQUIRE(bn_backward(plain, c.shape.data(), 3, x.data(), dy.data(), dx0.data(), nullptr, nullptr) == BN_OK);
  CHECK(same_bits(dx, dx0));
  REQUIRE(bn_backward_residual(layer, c.shape.data(), 3, x.data(), y.data(), dy.data(), nullptr, dres.data(), nullptr,
                               nullptr) == BN_OK);
  CHECK(same_bits(dres, dy));
  // dx and dresidual may not share a buffer.
  std::vector<float> both(n, 7.0f);
  CHECK(bn_backward_residual(layer, c.shape.data(), 3, x.data(), y.data(), dy.data(), both.data(), both.data(), nullptr,
                             nullptr) == BN_ERR_INVALID_ARGUMENT);
  CHECK(std::string(bn_last_error()).find("dresidual") != std::string::npos);
  for (float v : both) CHECK(v == 7.0f);
  bn_destroy(layer);
  bn_destroy(plain);
}

TEST_CASE("fused epilogue gradients against central finite differences (f64)", "[epilogue]") {
  const Case c{{3, 4, 5}, {1}};
  const int64_t n = count(c.shape);
  const std::vector<double> x = random<double>(n, 7, 2.0), r = random<double>(n, 8, 1.0), w = random<double>(n, 9, 1.0);
  auto loss = [&](const std::vector<double>& xv, const std::vector<double>& rv) {
    bn_layer* layer = make<double>(c, true, true);
    std::vector<double> y(n);
    REQUIRE(bn_forward_residual(layer, c.shape.data(), 3, xv.data(), rv.data(), y.data()) == BN_OK);
    bn_destroy(layer);
    double l = 0;
    for (int64_t i = 0; i < n; ++i) l += w[i] * y[i];
    return l;
  };
  bn_layer* layer = make<double>(c, true, true);
  std::vector<double> y(n), dx(n), dres(n);
  REQUIRE(bn_forward_residual(layer, c.shape.data(), 3, x.data(), r.data(), y.data()) == BN_OK);
  REQUIRE(bn_backward_residual(layer, c.shape.data(), 3, x.data(), y.data(), w.data(), dx.data(), dres.data(), nullptr,
                               nullptr) == BN_OK);
  bn_destroy(layer);
  const double h = 1e-6;
  int checked = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::fabs(y[i]) < 1e-3 && y[i] == 0.0) continue;  // at or near a kink: not differentiable there
    std::vector<double> xp = x, xm = x, rp = r, rm = r;
    xp[i] += h;
    xm[i] -= h;
    rp[i] += h;
    rm[i] -= h;
    const double gx = (loss(xp, r) - loss(xm, r)) / (2 * h), gr = (loss(x, rp) - loss(x, rm)) / (2 * h);
    CHECK(dx[i] == Approx(gx).margin(1e-6).epsilon(1e-5));
    CHECK(dres[i] == Approx(gr).margin(1e-6).epsilon(1e-5));
    ++checked;
  }
  CHECK(checked > n / 4);
}

}  // namespace
