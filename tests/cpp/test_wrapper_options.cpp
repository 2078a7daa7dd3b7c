// The C++ wrapper's Config setters, live-layer setters, fused epilogue, folding and Keras
// options: each compared bitwise with the same sequence of C calls on a twin layer.
#include <batchnorm/batchnorm.hpp>
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "cpp_support.hpp"

namespace {

using namespace cpp_test;

// One set of options, applied through the wrapper and through the C API.
struct Options {
  bool center = true, scale = true, cumulative = false;
  bn_fused fused = BN_FUSED_OFF;
  bn_keras_rules rules = BN_KERAS_V1;
  bn_moving_variance moving_variance = BN_MOVING_VARIANCE_AUTO;
};

batchnorm::Config wrapper_config(const Options& o) {
  const double inf = std::numeric_limits<double>::infinity();
  batchnorm::Config cfg;
  cfg.set_axes({1})
      .set_momentum(0.8)
      .set_epsilon(2e-3)
      .set_center(o.center)
      .set_scale(o.scale)
      .set_dtype(BN_F32)
      .set_trainable(true)
      .set_fused(o.fused)
      .set_keras_rules(o.rules)
      .set_renorm(false, inf, 0.0, inf, 0.99)
      .set_virtual_batch_size(0)
      .set_adjustment(nullptr, nullptr)
      .set_moving_variance(o.moving_variance)
      .set_cumulative_average(o.cumulative)
      .set_single_value_policy(BN_SINGLE_VALUE_REJECT)
      .set_nonfinite_policy(BN_NONFINITE_SKIP_UPDATE)
      .set_relu(false)
      .set_allreduce(nullptr, nullptr)
      .set_initializer(BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_NORMAL, 1.0, 0.1, 7)
      .set_initializer(BN_PARAM_BETA, BN_INITIALIZER_RANDOM_UNIFORM, -0.1, 0.1, 9)
      .set_initializer(BN_PARAM_MOVING_MEAN, BN_INITIALIZER_CONSTANT, 0.25)
      .set_initializer(BN_PARAM_MOVING_VARIANCE, BN_INITIALIZER_TRUNCATED_NORMAL, 2.0, 0.5, 11)
      .set_regularizer(BN_PARAM_GAMMA, 0.01, 0.001)
      .set_regularizer(BN_PARAM_BETA, 0.0, 0.02)
      .set_constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_MAX_NORM, 0.0, 0.9, 1.0, {0})
      .set_constraint(BN_PARAM_BETA, BN_CONSTRAINT_NON_NEG);
  return cfg;
}

RawConfig c_config(const Options& o) {
  const double inf = std::numeric_limits<double>::infinity();
  RawConfig cfg = raw_config();
  bn_config* c = cfg.get();
  const int32_t axes[1] = {1}, constraint_axes[1] = {0};
  REQUIRE(bn_config_set_axes(c, axes, 1) == BN_OK);
  REQUIRE(bn_config_set_momentum(c, 0.8) == BN_OK);
  REQUIRE(bn_config_set_epsilon(c, 2e-3) == BN_OK);
  REQUIRE(bn_config_set_center(c, o.center ? 1 : 0) == BN_OK);
  REQUIRE(bn_config_set_scale(c, o.scale ? 1 : 0) == BN_OK);
  REQUIRE(bn_config_set_dtype(c, BN_F32) == BN_OK);
  REQUIRE(bn_config_set_trainable(c, 1) == BN_OK);
  REQUIRE(bn_config_set_fused(c, o.fused) == BN_OK);
  REQUIRE(bn_config_set_keras_rules(c, o.rules) == BN_OK);
  REQUIRE(bn_config_set_renorm(c, 0, inf, 0.0, inf, 0.99) == BN_OK);
  REQUIRE(bn_config_set_virtual_batch_size(c, 0) == BN_OK);
  REQUIRE(bn_config_set_adjustment(c, nullptr, nullptr) == BN_OK);
  REQUIRE(bn_config_set_moving_variance(c, o.moving_variance) == BN_OK);
  REQUIRE(bn_config_set_cumulative_average(c, o.cumulative ? 1 : 0) == BN_OK);
  REQUIRE(bn_config_set_single_value_policy(c, BN_SINGLE_VALUE_REJECT) == BN_OK);
  REQUIRE(bn_config_set_nonfinite_policy(c, BN_NONFINITE_SKIP_UPDATE) == BN_OK);
  REQUIRE(bn_config_set_relu(c, 0) == BN_OK);
  REQUIRE(bn_config_set_allreduce(c, nullptr, nullptr) == BN_OK);
  REQUIRE(bn_config_set_initializer(c, BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_NORMAL, 1.0, 0.1, 7) == BN_OK);
  REQUIRE(bn_config_set_initializer(c, BN_PARAM_BETA, BN_INITIALIZER_RANDOM_UNIFORM, -0.1, 0.1, 9) == BN_OK);
  REQUIRE(bn_config_set_initializer(c, BN_PARAM_MOVING_MEAN, BN_INITIALIZER_CONSTANT, 0.25, 0.0, 0) == BN_OK);
  REQUIRE(bn_config_set_initializer(c, BN_PARAM_MOVING_VARIANCE, BN_INITIALIZER_TRUNCATED_NORMAL, 2.0, 0.5, 11) ==
          BN_OK);
  REQUIRE(bn_config_set_regularizer(c, BN_PARAM_GAMMA, 0.01, 0.001) == BN_OK);
  REQUIRE(bn_config_set_regularizer(c, BN_PARAM_BETA, 0.0, 0.02) == BN_OK);
  REQUIRE(bn_config_set_constraint(c, BN_PARAM_GAMMA, BN_CONSTRAINT_MAX_NORM, 0.0, 0.9, 1.0, constraint_axes, 1) ==
          BN_OK);
  REQUIRE(bn_config_set_constraint(c, BN_PARAM_BETA, BN_CONSTRAINT_NON_NEG, 0.0, 0.0, 0.0, nullptr, 0) == BN_OK);
  return cfg;
}

// Everything readable about a layer's parameters, wrapper side and C side.
void check_params(const batchnorm::Layer& layer, const bn_layer* raw) {
  for (bn_param which : {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE}) {
    CAPTURE(which);
    CHECK(same_bits(layer.get_param<float>(which), raw_param<float>(raw, which)));
  }
}

TEST_CASE("every Config setter and live-layer setter matches the C API", "[cpp][options]") {
  Options o;
  SECTION("defaults") {}
  SECTION("no center, no scale, V2 rules, biased moving variance") {
    o.center = false;
    o.scale = false;
    o.rules = BN_KERAS_V2;
    o.moving_variance = BN_MOVING_VARIANCE_BIASED;
  }
  SECTION("fused, cumulative average") {
    o.fused = BN_FUSED_ON;
    o.cumulative = true;
  }
  const std::vector<int64_t> shape{4, 3, 2};
  const std::size_t n = product(shape), c = 3;
  batchnorm::Config cfg = wrapper_config(o);
  batchnorm::Layer layer(cfg, shape);
  RawConfig raw_cfg = c_config(o);
  RawLayer raw = raw_layer(raw_cfg.get(), shape);
  REQUIRE(raw);
  int raw_fused = -1;
  REQUIRE(bn_get_fused(raw.get(), &raw_fused) == BN_OK);
  CHECK(layer.fused() == (raw_fused != 0));
  bool fused_out = !layer.fused();
  layer.get_fused(fused_out);
  CHECK(fused_out == (raw_fused != 0));
  check_params(layer, raw.get());  // the initializers drew the same values

  layer.set_training(true);
  layer.set_num_threads(1);  // bitwise the same for any thread count: the twin keeps 0
  REQUIRE(bn_set_training(raw.get(), 1) == BN_OK);
  for (uint64_t step = 0; step < 3; ++step) {
    CAPTURE(step);
    if (step == 1) {
      layer.set_momentum(0.5);
      REQUIRE(bn_set_momentum(raw.get(), 0.5) == BN_OK);
      layer.set_nonfinite_policy(BN_NONFINITE_PROPAGATE);
      REQUIRE(bn_set_nonfinite_policy(raw.get(), BN_NONFINITE_PROPAGATE) == BN_OK);
    }
    if (step == 2) {
      layer.set_trainable(false);
      REQUIRE(bn_set_trainable(raw.get(), 0) == BN_OK);
    }
    const std::vector<float> x = seeded<float>(n, 40 + step, -1.0), dy = seeded<float>(n, 50 + step);
    std::vector<float> y(n), dx(n), dg(c), db(c), ry(n), rdx(n), rdg(c), rdb(c);
    layer.forward(shape, x.data(), y.data());
    layer.backward(shape, x.data(), dy.data(), dx.data(), dg.data(), db.data());
    REQUIRE(bn_forward(raw.get(), shape.data(), 3, x.data(), ry.data()) == BN_OK);
    REQUIRE(bn_backward(raw.get(), shape.data(), 3, x.data(), dy.data(), rdx.data(), rdg.data(), rdb.data()) == BN_OK);
    CHECK(same_bits(y, ry));
    CHECK(same_bits(dx, rdx));
    CHECK(same_bits(dg, rdg));
    CHECK(same_bits(db, rdb));
    check_params(layer, raw.get());

    double loss = -1.0, raw_loss = -2.0;
    layer.regularization_loss(loss);
    REQUIRE(bn_regularization_loss(raw.get(), &raw_loss) == BN_OK);
    CHECK(loss == raw_loss);
    CHECK(layer.regularization_loss() == raw_loss);

    // An optimizer step, then the constraints (a no-op once frozen, on both sides).
    std::vector<float> g = layer.get_param<float>(BN_PARAM_GAMMA), b = layer.get_param<float>(BN_PARAM_BETA);
    for (std::size_t f = 0; f < c; ++f) {
      g[f] -= 0.5f * dg[f];
      b[f] -= 0.5f * db[f];
    }
    if (o.scale) {
      layer.set_param(BN_PARAM_GAMMA, g);
      REQUIRE(bn_set_param(raw.get(), BN_PARAM_GAMMA, g.data(), 3) == BN_OK);
    }
    if (o.center) {
      layer.set_param(BN_PARAM_BETA, b);
      REQUIRE(bn_set_param(raw.get(), BN_PARAM_BETA, b.data(), 3) == BN_OK);
    }
    layer.apply_constraints();
    REQUIRE(bn_apply_constraints(raw.get()) == BN_OK);
    check_params(layer, raw.get());
  }
}

TEST_CASE("mode flags and live renorm settings go through to the layer", "[cpp][options]") {
  const double inf = std::numeric_limits<double>::infinity();
  batchnorm::Config cfg;
  cfg.set_renorm(true, inf, 0.0, inf, 0.99);
  batchnorm::Layer layer(cfg, {4, 3});
  layer.set_training(true);
  bn_mode mode = 0;
  layer.get_mode(mode);
  CHECK(mode == (BN_MODE_BATCH_STATISTICS | BN_MODE_UPDATE_MOVING | BN_MODE_PARAM_GRADIENTS));
  layer.set_mode(BN_MODE_UPDATE_MOVING);
  layer.get_mode(mode);
  CHECK(mode == BN_MODE_UPDATE_MOVING);
  CHECK_THROWS_AS(layer.set_mode(8), batchnorm::Error);
  CHECK_THROWS_AS(layer.set_nonfinite_policy(3), batchnorm::Error);
  CHECK_NOTHROW(layer.set_renorm_clipping(3.0, 1.0 / 3.0, 5.0));
  CHECK_NOTHROW(layer.set_renorm_momentum(0.9));
  CHECK_THROWS_AS(layer.set_renorm_clipping(1.0, 2.0, 5.0), batchnorm::Error);
  batchnorm::Layer plain(batchnorm::Config(), {4, 3});
  CHECK_THROWS_MATCHES(
      plain.set_renorm_momentum(0.9), batchnorm::Error,
      Catch::Predicate<batchnorm::Error>([](const batchnorm::Error& e) { return e.status() == BN_ERR_STATE; }));
}

TEST_CASE("refused options fail through the wrapper as through the C API", "[cpp][options]") {
  const double inf = std::numeric_limits<double>::infinity();
  batchnorm::Config cfg;
  CHECK_THROWS_MATCHES(
      cfg.set_renorm(true, 1.0, 3.0, 5.0, 0.99), batchnorm::Error,
      Catch::Predicate<batchnorm::Error>([](const batchnorm::Error& e) { return e.status() == BN_ERR_INVALID_ARGUMENT; }));
  RawConfig raw = raw_config();
  CHECK(bn_config_set_renorm(raw.get(), 1, 1.0, 3.0, 5.0, 0.99) == BN_ERR_INVALID_ARGUMENT);
  CHECK_THROWS_AS(cfg.set_virtual_batch_size(-2), batchnorm::Error);
  CHECK(bn_config_set_virtual_batch_size(raw.get(), -2) != BN_OK);
  CHECK_NOTHROW(cfg.set_renorm(true, 3.0, 1.0 / 3.0, 5.0, 0.99));
  CHECK_NOTHROW(cfg.set_virtual_batch_size(2));
  CHECK_NOTHROW(cfg.set_renorm(false, inf, 0.0, inf, 0.99));
}

TEMPLATE_TEST_CASE("the fused epilogue matches the C API bitwise", "[cpp][epilogue]", float, double) {
  using T = TestType;
  const std::vector<int64_t> shape{6, 4};
  const std::size_t n = product(shape), c = 4;
  batchnorm::Config cfg;
  cfg.set_dtype(dtype_of<T>()).set_relu(true);
  batchnorm::Layer layer(cfg, shape);
  RawConfig raw_cfg = raw_config();
  REQUIRE(bn_config_set_dtype(raw_cfg.get(), dtype_of<T>()) == BN_OK);
  REQUIRE(bn_config_set_relu(raw_cfg.get(), 1) == BN_OK);
  RawLayer raw = raw_layer(raw_cfg.get(), shape);
  layer.set_training(true);
  REQUIRE(bn_set_training(raw.get(), 1) == BN_OK);

  for (int views = 0; views < 2; ++views) {
    CAPTURE(views);
    const std::vector<T> x = seeded<T>(n, 60u + static_cast<uint64_t>(views), 0.5),
                         r = seeded<T>(n, 70u + static_cast<uint64_t>(views)),
                         dy = seeded<T>(n, 80u + static_cast<uint64_t>(views));
    std::vector<T> y(n), dx(n), dr(n), dg(c), db(c), ry(n), rdx(n), rdr(n), rdg(c), rdb(c);
    if (views) {
      layer.forward_residual({x.data(), shape}, {r.data(), shape}, {y.data(), shape});
      layer.backward_residual({x.data(), shape}, {y.data(), shape}, {dy.data(), shape}, {dx.data(), shape},
                              {dr.data(), shape}, dg, db);
    } else {
      layer.forward_residual(shape, x.data(), r.data(), y.data());
      layer.backward_residual(shape, x.data(), y.data(), dy.data(), dx.data(), dr.data(), dg.data(), db.data());
    }
    REQUIRE(bn_forward_residual(raw.get(), shape.data(), 2, x.data(), r.data(), ry.data()) == BN_OK);
    REQUIRE(bn_backward_residual(raw.get(), shape.data(), 2, x.data(), ry.data(), dy.data(), rdx.data(), rdr.data(),
                                 rdg.data(), rdb.data()) == BN_OK);
    CHECK(same_bits(y, ry));
    CHECK(same_bits(dx, rdx));
    CHECK(same_bits(dr, rdr));
    CHECK(same_bits(dg, rdg));
    CHECK(same_bits(db, rdb));
    // The ReLU: no negative output, and dresidual is dy masked by y > 0.
    for (std::size_t i = 0; i < n; ++i) {
      CHECK(y[i] >= T(0));
      CHECK(dr[i] == (y[i] > T(0) ? dy[i] : T(0)));
    }
  }
  // Views of different shapes are refused by the wrapper.
  std::vector<T> x(n), r(n - 4), y(n);
  const batchnorm::Error e = [&] {
    try {
      layer.forward_residual({x.data(), shape}, {r.data(), {5, 4}}, {y.data(), shape});
    } catch (const batchnorm::Error& err) {
      return err;
    }
    return batchnorm::Error(BN_OK, "not thrown");
  }();
  CHECK(e.status() == BN_ERR_SHAPE);
  CHECK(contains(e.what(), "residual has shape [5, 4]"));
}

TEMPLATE_TEST_CASE("fold and fold_into match the C API bitwise", "[cpp][fold]", float, double) {
  using T = TestType;
  const int64_t c = 3, per = 5;
  batchnorm::Config cfg;
  cfg.set_dtype(dtype_of<T>()).set_epsilon(1e-2);
  batchnorm::Layer layer(cfg, {2, c});
  RawConfig raw_cfg = raw_config();
  REQUIRE(bn_config_set_dtype(raw_cfg.get(), dtype_of<T>()) == BN_OK);
  REQUIRE(bn_config_set_epsilon(raw_cfg.get(), 1e-2) == BN_OK);
  RawLayer raw = raw_layer(raw_cfg.get(), {2, c});
  const std::vector<T> gamma{T(0.5), T(2), T(-1)}, beta{T(1), T(0), T(-0.5)}, mean{T(0.25), T(-3), T(1)},
      var{T(4), T(0.5), T(2.25)};
  const std::pair<bn_param, const std::vector<T>*> params[] = {{BN_PARAM_GAMMA, &gamma},
                                                               {BN_PARAM_BETA, &beta},
                                                               {BN_PARAM_MOVING_MEAN, &mean},
                                                               {BN_PARAM_MOVING_VARIANCE, &var}};
  for (const auto& p : params) {
    layer.set_param(p.first, *p.second);
    REQUIRE(bn_set_param(raw.get(), p.first, p.second->data(), c) == BN_OK);
  }

  std::vector<T> scale, shift, rscale(c), rshift(c);
  layer.fold(scale, shift);  // vectors resized by the call
  REQUIRE(bn_fold(raw.get(), rscale.data(), rshift.data(), c) == BN_OK);
  CHECK(same_bits(scale, rscale));
  CHECK(same_bits(shift, rshift));
  // Independently: scale = gamma / sqrt(var + eps).
  for (std::size_t f = 0; f < 3; ++f) CHECK(double(scale[f]) == Approx(gamma[f] / std::sqrt(var[f] + 1e-2)));

  const std::vector<T> w0 = seeded<T>(c * per, 90), bias = seeded<T>(c, 91);
  std::vector<T> w = w0, rw = w0, bias_out(c), rbias_out(c);
  layer.fold_into(w, per, bias, bias_out);
  REQUIRE(bn_fold_into(raw.get(), rw.data(), per, bias.data(), rbias_out.data(), c) == BN_OK);
  CHECK(same_bits(w, rw));
  CHECK(same_bits(bias_out, rbias_out));
  // No bias (an empty span), and bias_out aliasing nothing.
  w = w0;
  rw = w0;
  layer.fold_into(w, per, {}, bias_out);
  REQUIRE(bn_fold_into(raw.get(), rw.data(), per, nullptr, rbias_out.data(), c) == BN_OK);
  CHECK(same_bits(w, rw));
  CHECK(same_bits(bias_out, rbias_out));
  // Weights that are not num_features rows of `per` values are refused by the wrapper.
  std::vector<T> short_w(c * per - 1);
  CHECK_THROWS_AS(layer.fold_into(short_w, per, bias, bias_out), batchnorm::Error);
}

}  // namespace
