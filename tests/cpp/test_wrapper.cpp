// The C++ wrapper in exception mode: every result is compared bitwise with the same calls made
// through the C API on a twin layer (the wrapper must add nothing and lose nothing), plus one
// hand-derived batch. Covers create, forward, backward, parameters, moves and the error path.
#include <batchnorm/batchnorm.hpp>
#include <catch2/catch.hpp>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpp_support.hpp"

namespace {

using namespace cpp_test;

static_assert(BATCHNORM_EXCEPTIONS == 1, "this program tests the exception mode");
static_assert(std::is_void<batchnorm::Result>::value, "calls return void in exception mode");
static_assert(std::is_base_of<std::runtime_error, batchnorm::Error>::value, "Error is a runtime_error");
static_assert(!std::is_copy_constructible<batchnorm::Layer>::value && !std::is_copy_assignable<batchnorm::Layer>::value,
              "Layer is move-only");
static_assert(!std::is_copy_constructible<batchnorm::Config>::value &&
                  !std::is_copy_assignable<batchnorm::Config>::value,
              "Config is move-only");
static_assert(std::is_nothrow_move_constructible<batchnorm::Layer>::value &&
                  std::is_nothrow_move_assignable<batchnorm::Layer>::value,
              "Layer moves never throw");
static_assert(std::is_nothrow_move_constructible<batchnorm::Config>::value &&
                  std::is_nothrow_move_assignable<batchnorm::Config>::value,
              "Config moves never throw");

// Runs `call`, which must throw batchnorm::Error, and returns it.
template <class F>
batchnorm::Error caught(F&& call) {
  try {
    call();
  } catch (const batchnorm::Error& e) {
    return e;
  }
  FAIL("no batchnorm::Error thrown");
  return batchnorm::Error(BN_OK, "");
}

TEST_CASE("the wrapper normalizes a hand-checked batch", "[cpp]") {
  batchnorm::Config cfg;
  cfg.set_epsilon(0.0);
  batchnorm::Layer layer(cfg, {4, 1});
  layer.set_training(true);
  const std::vector<float> x{1.0f, 2.0f, 3.0f, 4.0f};
  std::vector<float> y(4);
  layer.forward({4, 1}, x.data(), y.data());
  // mean 2.5, biased variance 1.25.
  for (std::size_t i = 0; i < 4; ++i) CHECK(y[i] == Approx((x[i] - 2.5) / std::sqrt(1.25)).epsilon(1e-6));
  CHECK(layer.get_param<float>(BN_PARAM_BATCH_MEAN) == std::vector<float>{2.5f});
  CHECK(layer.get_param<float>(BN_PARAM_BATCH_VARIANCE) == std::vector<float>{1.25f});
  CHECK(layer.num_features() == 1);
  CHECK(layer.dtype() == BN_F32);
}

TEMPLATE_TEST_CASE("create, forward and backward match the C API bitwise", "[cpp]", float, double) {
  using T = TestType;
  const std::vector<int64_t> shape{3, 4, 5};  // features on the last axis: 5
  const std::size_t n = product(shape), c = 5;

  batchnorm::Config cfg;
  cfg.set_dtype(dtype_of<T>()).set_momentum(0.9).set_epsilon(1e-4);
  CHECK(cfg.dtype() == dtype_of<T>());
  batchnorm::Layer layer(cfg, shape);
  REQUIRE(layer);
  CHECK(layer.dtype() == dtype_of<T>());

  RawConfig raw_cfg = raw_config();
  REQUIRE(bn_config_set_dtype(raw_cfg.get(), dtype_of<T>()) == BN_OK);
  REQUIRE(bn_config_set_momentum(raw_cfg.get(), 0.9) == BN_OK);
  REQUIRE(bn_config_set_epsilon(raw_cfg.get(), 1e-4) == BN_OK);
  RawLayer raw = raw_layer(raw_cfg.get(), shape);
  REQUIRE(raw);
  CHECK(layer.num_features() == bn_num_features(raw.get()));

  layer.set_training(true);
  REQUIRE(bn_set_training(raw.get(), 1) == BN_OK);
  for (uint64_t step = 0; step < 3; ++step) {
    CAPTURE(step);
    const std::vector<T> x = seeded<T>(n, 10 + step, 3.0), dy = seeded<T>(n, 20 + step);
    std::vector<T> y(n), dx(n), dgamma(c), dbeta(c);
    std::vector<T> ry(n), rdx(n), rdgamma(c), rdbeta(c);
    if (step % 2 == 0) {  // pointer + shape overloads
      layer.forward(shape, x.data(), y.data());
      layer.backward(shape, x.data(), dy.data(), dx.data(), dgamma.data(), dbeta.data());
    } else {  // views; the spans are sized by the vectors
      layer.forward({x.data(), shape}, {y.data(), shape});
      layer.backward({x.data(), shape}, {dy.data(), shape}, {dx.data(), shape}, dgamma, dbeta);
    }
    const int32_t rank = static_cast<int32_t>(shape.size());
    REQUIRE(bn_forward(raw.get(), shape.data(), rank, x.data(), ry.data()) == BN_OK);
    REQUIRE(bn_backward(raw.get(), shape.data(), rank, x.data(), dy.data(), rdx.data(), rdgamma.data(),
                        rdbeta.data()) == BN_OK);
    CHECK(same_bits(y, ry));
    CHECK(same_bits(dx, rdx));
    CHECK(same_bits(dgamma, rdgamma));
    CHECK(same_bits(dbeta, rdbeta));
    for (bn_param which : {BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE, BN_PARAM_BATCH_MEAN}) {
      CHECK(same_bits(layer.get_param<T>(which), raw_param<T>(raw.get(), which)));
    }
  }

  // Inference mode, skipping outputs with nullptr and with an empty span.
  layer.set_training(false);
  REQUIRE(bn_set_training(raw.get(), 0) == BN_OK);
  const std::vector<T> x = seeded<T>(n, 99, 3.0), dy = seeded<T>(n, 98);
  std::vector<T> y(n), ry(n), dgamma(c), rdgamma(c);
  layer.forward(shape, x.data(), y.data());
  REQUIRE(bn_forward(raw.get(), shape.data(), 3, x.data(), ry.data()) == BN_OK);
  CHECK(same_bits(y, ry));
  layer.backward(shape, x.data(), dy.data(), nullptr, dgamma.data());
  REQUIRE(bn_backward(raw.get(), shape.data(), 3, x.data(), dy.data(), nullptr, rdgamma.data(), nullptr) == BN_OK);
  CHECK(same_bits(dgamma, rdgamma));
  std::vector<T> dx(n), rdx(n);
  layer.backward({x.data(), shape}, {dy.data(), shape}, {dx.data(), shape});
  REQUIRE(bn_backward(raw.get(), shape.data(), 3, x.data(), dy.data(), rdx.data(), nullptr, nullptr) == BN_OK);
  CHECK(same_bits(dx, rdx));
}

TEMPLATE_TEST_CASE("parameters round-trip through vectors and spans", "[cpp]", float, double) {
  using T = TestType;
  batchnorm::Config cfg;
  cfg.set_dtype(dtype_of<T>()).set_axes({1});
  batchnorm::Layer layer(cfg, {2, 3, 2});
  REQUIRE(layer.num_features() == 3);

  const std::vector<T> gamma{T(0.5), T(-1.25), T(3)}, mean{T(1), T(2), T(-0.125)};
  layer.set_param(BN_PARAM_GAMMA, gamma);  // a vector converts to a span
  T raw_mean[3] = {mean[0], mean[1], mean[2]};
  layer.set_param(BN_PARAM_MOVING_MEAN, batchnorm::Span<const T>(raw_mean, 3));

  // Read back through the C API on the same handle, and through every wrapper form.
  CHECK(same_bits(raw_param<T>(layer.get(), BN_PARAM_GAMMA), gamma));
  CHECK(same_bits(raw_param<T>(layer.get(), BN_PARAM_MOVING_MEAN), mean));
  CHECK(same_bits(layer.get_param<T>(BN_PARAM_GAMMA), gamma));
  std::vector<T> out;  // resized by the call
  layer.get_param(BN_PARAM_MOVING_MEAN, out);
  CHECK(same_bits(out, mean));
  T into[3] = {};
  layer.get_param(BN_PARAM_GAMMA, batchnorm::Span(into, 3));
  CHECK(same_bits(std::vector<T>(into, into + 3), gamma));
  // Untouched parameters keep the documented initial values.
  CHECK(layer.get_param<T>(BN_PARAM_BETA) == std::vector<T>(3, T(0)));
  CHECK(layer.get_param<T>(BN_PARAM_MOVING_VARIANCE) == std::vector<T>(3, T(1)));

  // A wrong count is the C API's BN_ERR_SHAPE, and nothing changes.
  const std::vector<T> two{T(7), T(8)};
  const batchnorm::Error e = caught([&] { layer.set_param(BN_PARAM_GAMMA, two); });
  CHECK(e.status() == BN_ERR_SHAPE);
  CHECK(contains(e.what(), "bn_set_param"));
  CHECK(same_bits(layer.get_param<T>(BN_PARAM_GAMMA), gamma));
}

TEST_CASE("Layer and Config move their handles and destroy them once", "[cpp]") {
  batchnorm::Config cfg;
  cfg.set_dtype(BN_F64);
  batchnorm::Layer a(cfg, {2, 4});
  bn_layer* const handle = a.get();
  REQUIRE(handle != nullptr);

  batchnorm::Layer b(std::move(a));
  CHECK(b.get() == handle);
  CHECK(b.dtype() == BN_F64);
  CHECK_FALSE(a);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  CHECK(a.get() == nullptr);
  CHECK(a.num_features() == -1);
  // A call on the moved-from layer is the C API's NULL error, not a crash.
  const batchnorm::Error e = caught([&] { a.set_training(true); });
  CHECK(e.status() == BN_ERR_INVALID_ARGUMENT);
  CHECK(contains(e.what(), "bn_set_training"));

  batchnorm::Layer c(cfg, {5, 3});  // its own handle is destroyed by the assignment
  c = std::move(b);
  CHECK(c.get() == handle);
  CHECK(b.get() == nullptr);
  CHECK(c.num_features() == 4);
  const std::vector<double> x(8, 1.0);
  std::vector<double> y(8);
  c.forward({2, 4}, x.data(), y.data());  // still a working F64 layer

  // release() hands the handle over; the adopting constructor takes it back.
  bn_layer* released = c.release();
  CHECK(released == handle);
  CHECK_FALSE(c);
  batchnorm::Layer adopted(released, BN_F64);
  CHECK(adopted.get() == handle);
  CHECK(adopted.num_features() == 4);

  // Config: the handle and the remembered dtype move; the source is empty.
  const bn_config* const cfg_handle = cfg.get();
  batchnorm::Config moved(std::move(cfg));
  CHECK(moved.get() == cfg_handle);
  CHECK(moved.dtype() == BN_F64);
  CHECK(cfg.get() == nullptr);  // NOLINT(bugprone-use-after-move)
  const batchnorm::Error ce = caught([&] { cfg.set_momentum(0.5); });
  CHECK(ce.status() == BN_ERR_INVALID_ARGUMENT);
  CHECK(contains(ce.what(), "bn_config_set_momentum"));
  batchnorm::Config other;
  other = std::move(moved);
  CHECK(other.get() == cfg_handle);
  batchnorm::Layer from_moved(other, {1, 4});
  CHECK(from_moved.dtype() == BN_F64);

  // An empty Layer (default-constructed) can be assigned from create.
  batchnorm::Layer empty;
  CHECK_FALSE(empty);
  batchnorm::Layer::create(other, {3, 2}, empty);
  CHECK(empty.num_features() == 2);
}

TEST_CASE("failures throw Error with the status and the failing call's message", "[cpp][error]") {
  batchnorm::Config cfg;
  batchnorm::Layer layer(cfg, {4, 3});
  layer.set_training(true);
  const std::vector<float> x = seeded<float>(12, 5), dy = seeded<float>(12, 6);
  std::vector<float> y(12), dx(12);
  const std::vector<float> mean_before = layer.get_param<float>(BN_PARAM_MOVING_MEAN);

  SECTION("a shape that does not fit the layer: the C API's BN_ERR_SHAPE from bn_forward") {
    const batchnorm::Error e = caught([&] { layer.forward({6, 2}, x.data(), y.data()); });
    CHECK(e.status() == BN_ERR_SHAPE);
    CHECK(std::string(e.name()) == "BN_ERR_SHAPE");
    CHECK(contains(e.what(), "bn_forward"));
    CHECK(std::string(e.what()) == bn_last_error());  // the message captured at the call
    CHECK(layer.get_param<float>(BN_PARAM_MOVING_MEAN) == mean_before);
    // Caught as the standard base class too.
    CHECK_THROWS_AS(layer.forward({4, 2}, x.data(), y.data()), std::runtime_error);
  }
  SECTION("backward with no forward: BN_ERR_STATE from bn_backward") {
    const batchnorm::Error e = caught([&] { layer.backward({4, 3}, x.data(), dy.data(), dx.data()); });
    CHECK(e.status() == BN_ERR_STATE);
    CHECK(contains(e.what(), "bn_backward"));
  }
  SECTION("the wrong element type is refused before any C call") {
    mark_last_error();
    const std::vector<double> xd(12, 1.0);
    std::vector<double> yd(12);
    const batchnorm::Error e = caught([&] { layer.forward({4, 3}, xd.data(), yd.data()); });
    CHECK(e.status() == BN_ERR_INVALID_ARGUMENT);
    CHECK(contains(e.what(), "batchnorm::Layer::forward"));
    CHECK(contains(e.what(), "BN_F32"));
    CHECK(contains(bn_last_error(), "bn_num_features"));  // no C call failed since the mark
    std::vector<double> pd;
    CHECK(caught([&] { layer.get_param(BN_PARAM_GAMMA, pd); }).status() == BN_ERR_INVALID_ARGUMENT);
    CHECK(layer.get_param<float>(BN_PARAM_MOVING_MEAN) == mean_before);
  }
  SECTION("views of different shapes and spans of the wrong length: BN_ERR_SHAPE from the wrapper") {
    layer.forward({4, 3}, x.data(), y.data());
    const std::vector<float> mean_after = layer.get_param<float>(BN_PARAM_MOVING_MEAN);
    batchnorm::Error e = caught([&] { layer.forward({x.data(), {4, 3}}, {y.data(), {3, 4}}); });
    CHECK(e.status() == BN_ERR_SHAPE);
    CHECK(contains(e.what(), "batchnorm::Layer::forward: y has shape [3, 4] but x has [4, 3]"));
    CHECK(layer.get_param<float>(BN_PARAM_MOVING_MEAN) == mean_after);  // no forward ran
    std::vector<float> dgamma(2);
    e = caught([&] { layer.backward({x.data(), {4, 3}}, {dy.data(), {4, 3}}, {dx.data(), {4, 3}}, dgamma); });
    CHECK(e.status() == BN_ERR_SHAPE);
    CHECK(contains(e.what(), "dgamma has 2 values but the layer has 3 features"));
    std::vector<float> scale(3), shift(2);
    e = caught([&] { layer.fold(batchnorm::Span<float>(scale), batchnorm::Span<float>(shift)); });
    CHECK(e.status() == BN_ERR_SHAPE);
  }
  SECTION("a shape longer than 8 dimensions") {
    const batchnorm::Shape nine{1, 1, 1, 1, 1, 1, 1, 1, 3};
    CHECK(nine.ndim() == 9);
    const batchnorm::Error e = caught([&] { layer.forward(nine, x.data(), y.data()); });
    CHECK(e.status() == BN_ERR_SHAPE);
    CHECK(contains(e.what(), "batchnorm::Layer::forward: ndim=9"));
  }
  SECTION("a failing Config setter throws and leaves the dtype as it was") {
    batchnorm::Config c2;
    batchnorm::Error e = caught([&] { c2.set_momentum(1.5); });
    CHECK(e.status() == BN_ERR_INVALID_ARGUMENT);
    CHECK(contains(e.what(), "bn_config_set_momentum"));
    e = caught([&] { c2.set_dtype(7); });
    CHECK(e.status() == BN_ERR_INVALID_ARGUMENT);
    CHECK(c2.dtype() == BN_F32);
    CHECK(c2.status().ok());  // the exception mode keeps no sticky failure
    e = caught([&] { batchnorm::Layer bad(c2, {0}); });
    CHECK(e.status() == BN_ERR_SHAPE);
    CHECK(contains(e.what(), "bn_create"));
  }
}

}  // namespace
