// Inference folding through the public header: bn_fold's per-feature (scale, shift) and
// bn_fold_into's folded dense layer reproduce the layer's inference forward, computed here
// from the parameters read back (an independent formula, not the library's).
#include <cmath>
#include <vector>

#include "capi_support.hpp"

namespace capi_test {
namespace {

// A layer with trained-looking parameters: gamma, beta, moving mean and variance set by hand.
Layer trained_layer(bn_config* cfg, const std::vector<int64_t>& shape, int64_t features) {
  Layer layer = make_layer(cfg, shape);
  std::vector<float> g(features), b(features), mm(features), mv(features);
  for (int64_t f = 0; f < features; ++f) {
    g[f] = 0.5f + 0.25f * static_cast<float>(f);
    b[f] = -1.0f + 0.5f * static_cast<float>(f);
    mm[f] = 3.0f - static_cast<float>(f);
    mv[f] = 0.25f + static_cast<float>(f * f);
  }
  REQUIRE(bn_set_param(layer.get(), BN_PARAM_GAMMA, g.data(), features) == BN_OK);
  REQUIRE(bn_set_param(layer.get(), BN_PARAM_BETA, b.data(), features) == BN_OK);
  REQUIRE(bn_set_param(layer.get(), BN_PARAM_MOVING_MEAN, mm.data(), features) == BN_OK);
  REQUIRE(bn_set_param(layer.get(), BN_PARAM_MOVING_VARIANCE, mv.data(), features) == BN_OK);
  return layer;
}

TEST_CASE("bn_fold gives y = x*scale + shift of the inference forward", "[fold]") {
  const bool fused = GENERATE(false, true);
  CAPTURE(fused);
  Config cfg = make_config();
  REQUIRE(bn_config_set_epsilon(cfg.get(), 1e-6) == BN_OK);  // fused path clamps it to 1.001e-5
  REQUIRE(bn_config_set_fused(cfg.get(), fused ? BN_FUSED_AUTO : BN_FUSED_OFF) == BN_OK);
  const std::vector<int64_t> shape{2, 3, 3, 4};  // NHWC, 4 features
  Layer layer = trained_layer(cfg.get(), shape, 4);
  std::vector<float> scale(4), shift(4), g(4), b(4), mm(4), mv(4);
  REQUIRE(bn_fold(layer.get(), scale.data(), shift.data(), 4) == BN_OK);
  REQUIRE(bn_get_param(layer.get(), BN_PARAM_GAMMA, g.data(), 4) == BN_OK);
  REQUIRE(bn_get_param(layer.get(), BN_PARAM_BETA, b.data(), 4) == BN_OK);
  REQUIRE(bn_get_param(layer.get(), BN_PARAM_MOVING_MEAN, mm.data(), 4) == BN_OK);
  REQUIRE(bn_get_param(layer.get(), BN_PARAM_MOVING_VARIANCE, mv.data(), 4) == BN_OK);
  const double eps = fused ? 1.001e-5 : 1e-6;
  for (int f = 0; f < 4; ++f) {
    const double k = g[f] / std::sqrt(static_cast<double>(mv[f]) + eps);
    CHECK(scale[f] == Approx(k).epsilon(1e-6));
    CHECK(shift[f] == Approx(b[f] - mm[f] * k).epsilon(1e-6).margin(1e-6));
  }
  const int64_t n = element_count(shape);
  std::vector<float> x(n), y(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>((i * 37) % 11) - 4.0f;
  REQUIRE(bn_forward(layer.get(), shape.data(), 4, x.data(), y.data()) == BN_OK);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t f = i % 4;
    CHECK(y[i] == Approx(x[i] * scale[f] + shift[f]).epsilon(1e-5).margin(1e-5));
  }
}

TEST_CASE("bn_fold_into folds a dense layer: W'x + b' = bn(Wx + b)", "[fold]") {
  const bool with_bias = GENERATE(false, true);
  CAPTURE(with_bias);
  const int64_t in = 5, out = 3, batch = 4;
  Config cfg = make_config();
  Layer layer = trained_layer(cfg.get(), {batch, out}, out);
  std::vector<double> w(out * in), bias(out), x(batch * in);
  for (int64_t i = 0; i < out * in; ++i) w[i] = std::sin(0.7 * static_cast<double>(i));
  for (int64_t o = 0; o < out; ++o) bias[o] = 0.3 * static_cast<double>(o) - 0.2;
  for (int64_t i = 0; i < batch * in; ++i) x[i] = std::cos(1.3 * static_cast<double>(i));
  // Dense output z = W x + b, then the layer in inference mode.
  std::vector<float> z(batch * out), y(batch * out);
  for (int64_t r = 0; r < batch; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = with_bias ? bias[o] : 0.0;
      for (int64_t k = 0; k < in; ++k) acc += w[o * in + k] * x[r * in + k];
      z[r * out + o] = static_cast<float>(acc);
    }
  }
  const std::vector<int64_t> shape{batch, out};
  REQUIRE(bn_forward(layer.get(), shape.data(), 2, z.data(), y.data()) == BN_OK);
  std::vector<float> wf(w.begin(), w.end()), bf(bias.begin(), bias.end()), folded_bias(out);
  REQUIRE(bn_fold_into(layer.get(), wf.data(), in, with_bias ? bf.data() : nullptr, folded_bias.data(), out) == BN_OK);
  for (int64_t r = 0; r < batch; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = folded_bias[o];
      for (int64_t k = 0; k < in; ++k) acc += static_cast<double>(wf[o * in + k]) * x[r * in + k];
      CHECK(acc == Approx(y[r * out + o]).epsilon(1e-5).margin(1e-5));
    }
  }
}

TEST_CASE("folding refuses bad arguments and changes nothing", "[fold]") {
  Config cfg = make_config();
  Layer layer = trained_layer(cfg.get(), {2, 3}, 3);
  std::vector<float> a(3, 7.0f), b(3, 7.0f), w(6, 7.0f);
  CHECK(bn_fold(nullptr, a.data(), b.data(), 3) == BN_ERR_INVALID_ARGUMENT);
  CHECK(bn_fold(layer.get(), nullptr, b.data(), 3) == BN_ERR_INVALID_ARGUMENT);
  CHECK(std::string(bn_last_error()).find("scale") != std::string::npos);
  CHECK(bn_fold(layer.get(), a.data(), nullptr, 3) == BN_ERR_INVALID_ARGUMENT);
  CHECK(bn_fold(layer.get(), a.data(), b.data(), 4) == BN_ERR_SHAPE);
  CHECK(std::string(bn_last_error()).find("bn_fold: count=4") != std::string::npos);
  CHECK(bn_fold_into(layer.get(), nullptr, 2, nullptr, b.data(), 3) == BN_ERR_INVALID_ARGUMENT);
  CHECK(bn_fold_into(layer.get(), w.data(), 2, nullptr, nullptr, 3) == BN_ERR_INVALID_ARGUMENT);
  CHECK(bn_fold_into(layer.get(), w.data(), 0, nullptr, b.data(), 3) == BN_ERR_INVALID_ARGUMENT);
  CHECK(bn_fold_into(layer.get(), w.data(), 2, nullptr, b.data(), 2) == BN_ERR_SHAPE);
  for (float v : a) CHECK(v == 7.0f);
  for (float v : b) CHECK(v == 7.0f);
  for (float v : w) CHECK(v == 7.0f);
}

}  // namespace
}  // namespace capi_test
