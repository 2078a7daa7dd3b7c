// BN_BF16 and BN_F16 layers through the C API, against a BN_F32 layer of the same
// configuration fed the same values (16-bit values are exact in float). SEMANTICS A.7/B.9:
// a 16-bit layer computes in float with float parameters and statistics and rounds each
// output once to the 16-bit type; dx comes back 16-bit, dgamma/dbeta float.
//
// Two levels of checks, both with 16-bit values encoded and decoded by tests/support/half_ref.hpp
// (an independent model, no library code):
//  - the contract: every 16-bit output within one 16-bit rounding of the f32 layer's output,
//    |y16 - y32| <= ulp16(y32)/2 + 2^-20 (|y32| + 1): half an ulp is the one rounding; the
//    second term (8 float ulps at the scale of normalized values) admits the float-level
//    differences two correct float computations of the same formula may have. Statistics,
//    moving statistics and parameter gradients (float in both) within 2^-20 of their scale.
//  - the design: the library runs the same kernels on the widened values, so the 16-bit
//    outputs are the f32 layer's outputs rounded to nearest even, bit for bit, and every
//    float result (statistics, dgamma, dbeta) is bitwise the f32 layer's.
// Layouts cover the planar and interleaved SIMD paths, tails, the reference-kernel path (split
// axes) and grids of several row blocks (Chan merge); the suite runs once per ISA (BN_ISA).
#include <batchnorm/batchnorm.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "half_ref.hpp"
#include "reference.hpp"

namespace bn_test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

const HalfFormat& format_of(bn_dtype d) { return d == BN_BF16 ? kBfloat16 : kBinary16; }
const char* name_of(bn_dtype d) { return d == BN_BF16 ? "bf16" : "f16"; }

struct Setup {
  std::vector<int64_t> shape;
  std::vector<int32_t> axes;
  bool relu = false;
  bn_keras_rules rules = BN_KERAS_V1;
  bn_fused fused = BN_FUSED_AUTO;
};

int64_t count(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// A layer of `dtype` with float parameters away from the defaults (the same for every dtype).
bn_layer* make_layer(const Setup& s, bn_dtype dtype) {
  bn_config* cfg = nullptr;
  REQUIRE(bn_config_create(&cfg) == BN_OK);
  REQUIRE(bn_config_set_axes(cfg, s.axes.data(), static_cast<int32_t>(s.axes.size())) == BN_OK);
  REQUIRE(bn_config_set_dtype(cfg, dtype) == BN_OK);
  REQUIRE(bn_config_set_relu(cfg, s.relu ? 1 : 0) == BN_OK);
  REQUIRE(bn_config_set_keras_rules(cfg, s.rules) == BN_OK);
  REQUIRE(bn_config_set_fused(cfg, s.fused) == BN_OK);
  REQUIRE(bn_config_set_momentum(cfg, 0.75) == BN_OK);
  bn_layer* layer = nullptr;
  const bn_status st = bn_create(cfg, s.shape.data(), static_cast<int32_t>(s.shape.size()), &layer);
  bn_config_destroy(cfg);
  INFO(bn_last_error());
  REQUIRE(st == BN_OK);
  const int64_t f = bn_num_features(layer);
  std::vector<float> g(f), b(f), mm(f), mv(f);
  for (int64_t i = 0; i < f; ++i) {
    g[i] = static_cast<float>(0.6 + 0.15 * static_cast<double>(i % 7));
    b[i] = static_cast<float>(-0.25 + 0.1 * static_cast<double>(i % 5));
    mm[i] = static_cast<float>(0.3 * static_cast<double>(i % 3) - 0.2);
    mv[i] = static_cast<float>(0.5 + 0.75 * static_cast<double>(i % 4));
  }
  REQUIRE(bn_set_param(layer, BN_PARAM_GAMMA, g.data(), f) == BN_OK);
  REQUIRE(bn_set_param(layer, BN_PARAM_BETA, b.data(), f) == BN_OK);
  REQUIRE(bn_set_param(layer, BN_PARAM_MOVING_MEAN, mm.data(), f) == BN_OK);
  REQUIRE(bn_set_param(layer, BN_PARAM_MOVING_VARIANCE, mv.data(), f) == BN_OK);
  return layer;
}

// n draws of N(mean, sd), each representable in the 16-bit format (and so in float).
std::vector<double> draw(const HalfFormat& fmt, int64_t n, uint32_t seed, double mean, double sd) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> d(mean, sd);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& e : v) e = half_round(fmt, static_cast<float>(d(gen)));
  return v;
}

std::vector<uint16_t> encode(const HalfFormat& fmt, const std::vector<double>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = half_encode(fmt, v[i]);
  return out;
}
std::vector<float> as_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

// Compares a 16-bit layer's outputs with the f32 layer's; strict: bitwise (see the header).
class Checker {
 public:
  Checker(const HalfFormat& fmt, bool strict) : fmt_(fmt), strict_(strict) {}

  void tensor(const std::string& what, const std::vector<uint16_t>& got, const std::vector<float>& want) {
    int bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (tensor_ok(got[i], want[i])) continue;
      if (bad++ == 0) {
        FAIL_CHECK(what << "[" << i << "]: 16-bit 0x" << std::hex << got[i] << std::dec << " = "
                        << half_decode(fmt_, got[i]) << ", f32 " << want[i] << " (rounded: 0x" << std::hex
                        << half_encode(fmt_, want[i]) << ")");
      }
    }
    if (bad > 1) FAIL_CHECK(what << ": " << bad << " of " << got.size() << " elements differ");
  }

  // Float results (statistics, parameter gradients): within 2^-20 of `scale`, or bitwise.
  void floats(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
              const std::vector<double>& scale) {
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const bool ok = strict_ ? std::memcmp(&got[i], &want[i], sizeof(float)) == 0
                              : std::fabs(static_cast<double>(got[i]) - want[i]) <= 0x1p-20 * scale[i];
      if (!ok) {
        FAIL_CHECK(what << "[" << i << "]: 16-bit layer " << got[i] << ", f32 layer " << want[i]);
        return;
      }
    }
  }

 private:
  bool tensor_ok(uint16_t got, float want) const {
    if (std::isnan(want)) return half_is_nan(fmt_, got);
    if (strict_) return got == half_encode(fmt_, want);
    const double g = half_decode(fmt_, got), w = want;
    const double rounded = half_round(fmt_, w);
    if (std::isinf(rounded)) return g == rounded;  // beyond the 16-bit range: inf
    return std::fabs(g - w) <= fmt_.ulp(w) / 2 + 0x1p-20 * (std::fabs(w) + 1);
  }

  const HalfFormat& fmt_;
  bool strict_;
};

std::vector<float> get_param(bn_layer* layer, bn_param which) {
  std::vector<float> v(static_cast<size_t>(bn_num_features(layer)));
  REQUIRE(bn_get_param(layer, which, v.data(), static_cast<int64_t>(v.size())) == BN_OK);
  return v;
}

// The pair of layers, one call at a time on both.
struct Pair {
  Setup s;
  bn_dtype dtype;
  const HalfFormat& fmt;
  Checker& check;
  bn_layer* l32;
  bn_layer* l16;
  int64_t n, f;
  int32_t nd;
  std::vector<int64_t> feature;  // per element

  Pair(const Setup& setup, bn_dtype d, Checker& c)
      : s(setup), dtype(d), fmt(format_of(d)), check(c), l32(make_layer(setup, BN_F32)), l16(make_layer(setup, d)),
        n(count(setup.shape)), f(bn_num_features(l32)), nd(static_cast<int32_t>(setup.shape.size())) {
    std::vector<bool> kept(setup.shape.size(), false);
    for (int32_t a : setup.axes) kept[static_cast<size_t>(a < 0 ? a + nd : a)] = true;
    feature = feature_index_map(setup.shape, kept);
  }
  ~Pair() {
    bn_destroy(l32);
    bn_destroy(l16);
  }
  Pair(const Pair&) = delete;
  Pair& operator=(const Pair&) = delete;

  void set_training(bool t) {
    REQUIRE(bn_set_training(l32, t ? 1 : 0) == BN_OK);
    REQUIRE(bn_set_training(l16, t ? 1 : 0) == BN_OK);
  }

  // Forward (with a residual when given); returns both outputs after comparing them.
  void forward(const std::vector<double>& x, const std::vector<double>* residual, std::vector<uint16_t>& y16,
               std::vector<float>& y32) {
    const std::vector<uint16_t> x16 = encode(fmt, x);
    const std::vector<float> x32 = as_float(x);
    y16.assign(static_cast<size_t>(n), 0);
    y32.assign(static_cast<size_t>(n), 0.0f);
    if (residual) {
      const std::vector<uint16_t> r16 = encode(fmt, *residual);
      const std::vector<float> r32 = as_float(*residual);
      REQUIRE(bn_forward_residual(l32, s.shape.data(), nd, x32.data(), r32.data(), y32.data()) == BN_OK);
      REQUIRE(bn_forward_residual(l16, s.shape.data(), nd, x16.data(), r16.data(), y16.data()) == BN_OK);
    } else {
      REQUIRE(bn_forward(l32, s.shape.data(), nd, x32.data(), y32.data()) == BN_OK);
      REQUIRE(bn_forward(l16, s.shape.data(), nd, x16.data(), y16.data()) == BN_OK);
    }
    check.tensor(std::string("y (") + name_of(dtype) + ")", y16, y32);
  }

  // Backward of the last forward: with the forward's outputs (bn_backward_residual, which also
  // gives dresidual) or without (bn_backward). The parameter gradients' scales, per feature:
  // sum |dy|*(|x| + |c|)*inv (dgamma, c and inv the normalization the forward used) and
  // sum |dy| (dbeta).
  void backward(const std::vector<double>& x, const std::vector<double>& dy, const std::vector<uint16_t>* y16,
                const std::vector<float>* y32, bool training) {
    const std::vector<uint16_t> x16 = encode(fmt, x), dy16 = encode(fmt, dy);
    const std::vector<float> x32 = as_float(x), dy32 = as_float(dy);
    const auto nz = static_cast<size_t>(n), fz = static_cast<size_t>(f);
    std::vector<uint16_t> dx16(nz), dres16(nz);
    std::vector<float> dx32(nz), dres32(nz), dg16(fz), db16(fz), dg32(fz), db32(fz);
    if (y16) {
      REQUIRE(bn_backward_residual(l32, s.shape.data(), nd, x32.data(), y32->data(), dy32.data(), dx32.data(),
                                   dres32.data(), dg32.data(), db32.data()) == BN_OK);
      REQUIRE(bn_backward_residual(l16, s.shape.data(), nd, x16.data(), y16->data(), dy16.data(), dx16.data(),
                                   dres16.data(), dg16.data(), db16.data()) == BN_OK);
      check.tensor("dresidual", dres16, dres32);
    } else {
      REQUIRE(bn_backward(l32, s.shape.data(), nd, x32.data(), dy32.data(), dx32.data(), dg32.data(), db32.data()) ==
              BN_OK);
      REQUIRE(bn_backward(l16, s.shape.data(), nd, x16.data(), dy16.data(), dx16.data(), dg16.data(), db16.data()) ==
              BN_OK);
    }
    check.tensor("dx", dx16, dx32);
    const std::vector<float> c = get_param(l32, training ? BN_PARAM_BATCH_MEAN : BN_PARAM_MOVING_MEAN);
    const std::vector<float> v = get_param(l32, training ? BN_PARAM_BATCH_VARIANCE : BN_PARAM_MOVING_VARIANCE);
    std::vector<double> sg(fz, 0.0), sb(fz, 0.0);
    for (size_t i = 0; i < nz; ++i) {
      const auto k = static_cast<size_t>(feature[i]);
      sg[k] += std::fabs(dy[i]) * (std::fabs(x[i]) + std::fabs(c[k])) / std::sqrt(v[k] + 1e-3);
      sb[k] += std::fabs(dy[i]);
    }
    check.floats("dgamma", dg16, dg32, sg);
    check.floats("dbeta", db16, db32, sb);
  }

  // Moving and batch statistics, within 2^-20 of (|value| + 1).
  void statistics() {
    for (bn_param p : {BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE, BN_PARAM_BATCH_MEAN, BN_PARAM_BATCH_VARIANCE}) {
      CAPTURE(p);
      const std::vector<float> want = get_param(l32, p);
      std::vector<double> scale(want.size());
      for (size_t k = 0; k < want.size(); ++k) scale[k] = std::fabs(want[k]) + 1;
      check.floats("statistic", get_param(l16, p), want, scale);
    }
  }
};

// Two training steps (the first with the epilogue's residual when the layer has a ReLU), their
// backwards, the statistics, then inference forward and backward.
void scenario(const Setup& s, bn_dtype dtype, bool strict) {
  Checker check(format_of(dtype), strict);
  Pair p(s, dtype, check);
  const HalfFormat& fmt = format_of(dtype);
  const std::vector<double> xa = draw(fmt, p.n, 1, 0.7, 1.5), xb = draw(fmt, p.n, 2, -1.0, 3.0),
                            xc = draw(fmt, p.n, 3, 0.2, 2.0), r = draw(fmt, p.n, 4, 0.0, 1.0),
                            dy = draw(fmt, p.n, 5, 0.0, 1.0);
  std::vector<uint16_t> y16;
  std::vector<float> y32;
  p.set_training(true);
  {
    INFO("training step 1");
    p.forward(xa, s.relu ? &r : nullptr, y16, y32);
    p.backward(xa, dy, s.relu ? &y16 : nullptr, s.relu ? &y32 : nullptr, true);
  }
  {
    INFO("training step 2 (bn_backward: mask recomputed from x when there is a ReLU)");
    p.forward(xb, nullptr, y16, y32);
    p.backward(xb, dy, nullptr, nullptr, true);
    p.statistics();
  }
  p.set_training(false);
  {
    INFO("inference");
    p.forward(xc, s.relu ? &r : nullptr, y16, y32);
    p.backward(xc, dy, s.relu ? &y16 : nullptr, s.relu ? &y32 : nullptr, false);
  }
  int fused16 = -1, fused32 = -2;
  REQUIRE(bn_get_fused(p.l16, &fused16) == BN_OK);
  REQUIRE(bn_get_fused(p.l32, &fused32) == BN_OK);
  CHECK(fused16 == fused32);  // Keras' fused path covers 16-bit floats as it does float32
}

const std::vector<Setup>& setups() {
  static const std::vector<Setup> all{
      {{4, 8, 9, 11}, {1}},       // NCHW, fused semantics (Bessel, epsilon clamp); planar rows with a tail
      {{4, 6, 7, 24}, {-1}},      // NHWC, fused: interleaved, a tail at 8 lanes
      {{64, 37}, {-1}},           // dense: interleaved, tails
      {{2, 40, 33}, {1}},         // NCL: planar
      {{3, 4, 5, 6}, {1, 3}},     // kept axes split by a reduced one: the reference kernels
      {{4000, 21}, {-1}},         // several row blocks (Chan merge), interleaved
      {{300, 3, 16, 17}, {1}},    // several row blocks, planar
      {{5, 3, 7}, {-1}},          // a row shorter than a vector
  };
  return all;
}

TEST_CASE("16-bit layers stay within one 16-bit rounding of the f32 layer", "[half]") {
  const size_t index = GENERATE(range(size_t{0}, setups().size()));
  const bn_dtype dtype = GENERATE(BN_BF16, BN_F16);
  const bool relu = GENERATE(false, true);
  Setup s = setups()[index];
  s.relu = relu;
  CAPTURE(index, name_of(dtype), relu);
  scenario(s, dtype, false);
}

TEST_CASE("16-bit layers round the f32 computation once, bit for bit", "[half]") {
  const size_t index = GENERATE(range(size_t{0}, setups().size()));
  const bn_dtype dtype = GENERATE(BN_BF16, BN_F16);
  const bool relu = GENERATE(false, true);
  Setup s = setups()[index];
  s.relu = relu;
  CAPTURE(index, name_of(dtype), relu);
  scenario(s, dtype, true);
}

TEST_CASE("16-bit outputs: overflow to inf, subnormals, inf and NaN inputs", "[half]") {
  const bn_dtype dtype = GENERATE(BN_BF16, BN_F16);
  const bool strict = GENERATE(false, true);
  CAPTURE(name_of(dtype), strict);
  const HalfFormat& fmt = format_of(dtype);
  // Dense, 4 features: gamma pushes feature 0 beyond the 16-bit range (f16: ~1e5; bf16: beyond
  // float too), feature 1 into the subnormals, feature 2 normal, feature 3 holds the specials.
  const Setup s{{6, 4}, {-1}};
  Checker check(fmt, strict);
  Pair p(s, dtype, check);
  const float big = dtype == BN_F16 ? 4e4f : 3e38f;
  const float tiny = dtype == BN_F16 ? 3e-7f : 1e-39f;
  const std::vector<float> gamma{big, tiny, 1.0f, 1.0f}, beta{0.0f, 0.0f, 0.5f, 0.0f}, mm{0, 0, 0, 0}, mv{1, 1, 1, 1};
  for (bn_layer* l : {p.l32, p.l16}) {
    REQUIRE(bn_set_param(l, BN_PARAM_GAMMA, gamma.data(), 4) == BN_OK);
    REQUIRE(bn_set_param(l, BN_PARAM_BETA, beta.data(), 4) == BN_OK);
    REQUIRE(bn_set_param(l, BN_PARAM_MOVING_MEAN, mm.data(), 4) == BN_OK);
    REQUIRE(bn_set_param(l, BN_PARAM_MOVING_VARIANCE, mv.data(), 4) == BN_OK);
  }
  const double specials[6] = {kInf, -kInf, kNaN, -3.0, 0.0, half_decode(fmt, 1)};
  std::vector<double> x(24);
  for (size_t row = 0; row < 6; ++row) {
    x[row * 4 + 0] = half_round(fmt, 0.5 + 0.75 * static_cast<double>(row));  // feature 0: 0.5 .. 4.25
    x[row * 4 + 1] = half_round(fmt, -2.0 + 0.625 * static_cast<double>(row));
    x[row * 4 + 2] = half_round(fmt, 1.0 / (1.0 + static_cast<double>(row)));
    x[row * 4 + 3] = specials[row];
  }
  std::vector<uint16_t> y16;
  std::vector<float> y32;
  p.forward(x, nullptr, y16, y32);  // inference: moving statistics
  // Independent expectations for the ranges themselves (y = gamma*x/sqrt(1 + eps) + beta).
  int overflowed = 0, subnormal = 0;
  for (size_t row = 0; row < 6; ++row) {
    const uint16_t y0 = y16[row * 4], y1 = y16[row * 4 + 1];
    overflowed += half_decode(fmt, y0) == kInf;
    const double v1 = half_decode(fmt, y1);
    subnormal += v1 != 0 && std::fabs(v1) < std::ldexp(1.0, fmt.emin());
  }
  CHECK(overflowed >= 3);  // f16: 4e4*x > 65520 for x >= 1.64; bf16: beyond float's range
  CHECK(overflowed < 6);
  CHECK(subnormal >= 4);
  CHECK(half_decode(fmt, y16[3]) == kInf);
  CHECK(half_decode(fmt, y16[7]) == -kInf);
  CHECK(half_is_nan(fmt, y16[11]));
}

TEST_CASE("16-bit ReLU: the gradient passes where the rounded output is > 0", "[half]") {
  // Feature 0 normalizes to z = beta, a positive value that rounds to +0 in the 16-bit type:
  // its output is 0, so no gradient may pass, also when the mask is recomputed from x
  // (bn_backward). Feature 1 (beta 0.5) stays open. x is 0 everywhere, so z = beta exactly.
  const bn_dtype dtype = GENERATE(BN_BF16, BN_F16);
  const bool training = GENERATE(false, true);
  CAPTURE(name_of(dtype), training);
  const HalfFormat& fmt = format_of(dtype);
  const float tiny = dtype == BN_F16 ? 2.5e-8f : 3e-41f;  // below half the smallest 16-bit subnormal
  REQUIRE(half_encode(fmt, tiny) == 0);
  REQUIRE(tiny > 0.0f);
  Setup s{{6, 2}, {-1}};
  s.relu = true;
  bn_layer* layer = make_layer(s, dtype);
  const std::vector<float> beta{tiny, 0.5f}, mm{0.0f, 0.0f};
  REQUIRE(bn_set_param(layer, BN_PARAM_BETA, beta.data(), 2) == BN_OK);
  REQUIRE(bn_set_param(layer, BN_PARAM_MOVING_MEAN, mm.data(), 2) == BN_OK);
  REQUIRE(bn_set_training(layer, training ? 1 : 0) == BN_OK);
  const std::vector<uint16_t> x(12, 0);
  std::vector<uint16_t> y(12, 0x1234), dy(12), dx_from_x(12, 0x1234), dx_from_y(12, 0x1234);
  for (size_t i = 0; i < 12; ++i) dy[i] = half_encode(fmt, static_cast<double>(i % 5) - 1.75);
  REQUIRE(bn_forward(layer, s.shape.data(), 2, x.data(), y.data()) == BN_OK);
  std::vector<float> dg(2), db(2), dg2(2), db2(2);
  REQUIRE(bn_backward(layer, s.shape.data(), 2, x.data(), dy.data(), dx_from_x.data(), dg.data(), db.data()) == BN_OK);
  REQUIRE(bn_backward_residual(layer, s.shape.data(), 2, x.data(), y.data(), dy.data(), dx_from_y.data(), nullptr,
                               dg2.data(), db2.data()) == BN_OK);
  float sum_dy_open = 0;
  for (size_t row = 0; row < 6; ++row) {
    CAPTURE(row);
    CHECK(y[row * 2] == 0);                                      // z > 0 rounded to +0
    CHECK(half_decode(fmt, y[row * 2 + 1]) == half_round(fmt, 0.5));
    CHECK(dx_from_x[row * 2] == 0);                              // closed: no gradient...
    CHECK(dx_from_y[row * 2] == 0);
    sum_dy_open += static_cast<float>(half_decode(fmt, dy[row * 2 + 1]));
  }
  CHECK(db[0] == 0.0f);  // ...and none into beta
  CHECK(db[1] == sum_dy_open);
  CHECK(dx_from_x == dx_from_y);
  CHECK(dg == dg2);
  CHECK(db == db2);
  bn_destroy(layer);
}

TEST_CASE("16-bit forward in place equals out of place", "[half]") {
  const bn_dtype dtype = GENERATE(BN_BF16, BN_F16);
  const bool training = GENERATE(false, true);
  CAPTURE(name_of(dtype), training);
  const Setup s{{3, 5, 4, 9}, {1}};
  bn_layer* a = make_layer(s, dtype);
  bn_layer* b = make_layer(s, dtype);
  REQUIRE(bn_set_training(a, training) == BN_OK);
  REQUIRE(bn_set_training(b, training) == BN_OK);
  const std::vector<uint16_t> x = encode(format_of(dtype), draw(format_of(dtype), count(s.shape), 9, 0.5, 2.0));
  std::vector<uint16_t> y(x.size()), inplace = x;
  REQUIRE(bn_forward(a, s.shape.data(), 4, x.data(), y.data()) == BN_OK);
  REQUIRE(bn_forward(b, s.shape.data(), 4, inplace.data(), inplace.data()) == BN_OK);
  CHECK(inplace == y);
  CHECK(y != x);
  bn_destroy(a);
  bn_destroy(b);
}

TEST_CASE("16-bit results are bitwise the same for any thread count", "[half]") {
  const bn_dtype dtype = GENERATE(BN_BF16, BN_F16);
  const size_t index = GENERATE(size_t{5}, size_t{6});  // the setups with several row blocks
  CAPTURE(name_of(dtype), index);
  const Setup& s = setups()[index];
  const HalfFormat& fmt = format_of(dtype);
  const int64_t n = count(s.shape);
  const std::vector<uint16_t> x = encode(fmt, draw(fmt, n, 21, 3.0, 2.0)), dy = encode(fmt, draw(fmt, n, 22, 0, 1));
  std::vector<std::vector<uint16_t>> ys, dxs;
  std::vector<std::vector<float>> dgs;
  for (int32_t threads : {1, 2, 3, 0}) {
    bn_layer* layer = make_layer(s, dtype);
    REQUIRE(bn_set_num_threads(layer, threads) == BN_OK);
    REQUIRE(bn_set_training(layer, 1) == BN_OK);
    std::vector<uint16_t> y(static_cast<size_t>(n)), dx(static_cast<size_t>(n));
    std::vector<float> dg(static_cast<size_t>(bn_num_features(layer)));
    const auto nd = static_cast<int32_t>(s.shape.size());
    REQUIRE(bn_forward(layer, s.shape.data(), nd, x.data(), y.data()) == BN_OK);
    REQUIRE(bn_backward(layer, s.shape.data(), nd, x.data(), dy.data(), dx.data(), dg.data(), nullptr) == BN_OK);
    ys.push_back(y);
    dxs.push_back(dx);
    dgs.push_back(dg);
    bn_destroy(layer);
  }
  for (size_t i = 1; i < ys.size(); ++i) {
    CHECK(ys[i] == ys[0]);
    CHECK(dxs[i] == dxs[0]);
    CHECK(std::memcmp(dgs[i].data(), dgs[0].data(), dgs[0].size() * sizeof(float)) == 0);
  }
}

TEST_CASE("16-bit layers follow Keras' fused decision; parameters are float", "[half]") {
  const bn_dtype dtype = GENERATE(BN_BF16, BN_F16);
  CAPTURE(name_of(dtype));
  // V2 rules with fused=True refuse float64 but accept 16-bit floats (Keras: fp16/bf16/fp32).
  Setup s{{2, 3, 4, 5}, {1}};
  s.rules = BN_KERAS_V2;
  s.fused = BN_FUSED_ON;
  bn_layer* layer = make_layer(s, dtype);
  int fused = -1;
  REQUIRE(bn_get_fused(layer, &fused) == BN_OK);
  CHECK(fused == 1);
  // Parameters read back as the floats that were set (make_layer: gamma[1] = 0.75f).
  const std::vector<float> gamma = get_param(layer, BN_PARAM_GAMMA);
  CHECK(gamma[1] == 0.75f);
  // bn_fold gives float scale and shift: scale = gamma/sqrt(mv + eps), eps clamped on the fused path.
  std::vector<float> scale(3), shift(3);
  REQUIRE(bn_fold(layer, scale.data(), shift.data(), 3) == BN_OK);
  CHECK(scale[0] == Approx(0.6 / std::sqrt(0.5 + 1e-3)).epsilon(1e-6));
  bn_destroy(layer);
  bn_config* cfg = nullptr;
  REQUIRE(bn_config_create(&cfg) == BN_OK);
  REQUIRE(bn_config_set_axes(cfg, s.axes.data(), 1) == BN_OK);
  REQUIRE(bn_config_set_keras_rules(cfg, BN_KERAS_V2) == BN_OK);
  REQUIRE(bn_config_set_fused(cfg, BN_FUSED_ON) == BN_OK);
  REQUIRE(bn_config_set_dtype(cfg, BN_F64) == BN_OK);
  bn_layer* refused = nullptr;
  CHECK(bn_create(cfg, s.shape.data(), 4, &refused) == BN_ERR_INVALID_ARGUMENT);
  CHECK(refused == nullptr);
  bn_config_destroy(cfg);
}

TEST_CASE("an empty 16-bit batch trains nothing and has a zero gradient", "[half]") {
  const bn_dtype dtype = GENERATE(BN_BF16, BN_F16);
  const Setup s{{0, 6}, {-1}};
  bn_layer* layer = make_layer(s, dtype);
  REQUIRE(bn_set_training(layer, 1) == BN_OK);
  const std::vector<float> mm_before = get_param(layer, BN_PARAM_MOVING_MEAN);
  uint16_t x[1] = {0}, y[1] = {0x1234}, dx[1] = {0x1234};
  std::vector<float> dg(6, 5.0f), db(6, 5.0f);
  REQUIRE(bn_forward(layer, s.shape.data(), 2, x, y) == BN_OK);
  REQUIRE(bn_backward(layer, s.shape.data(), 2, x, x, dx, dg.data(), db.data()) == BN_OK);
  CHECK(get_param(layer, BN_PARAM_MOVING_MEAN) == mm_before);
  CHECK(y[0] == 0x1234);
  CHECK(dg == std::vector<float>(6, 0.0f));
  CHECK(db == std::vector<float>(6, 0.0f));
  bn_destroy(layer);
}

}  // namespace
}  // namespace bn_test
