// Bad input to the initializer, regularizer and constraint setters, to bn_create with
// options it cannot honour, and to bn_regularization_loss / bn_apply_constraints: every
// refusal returns its status, names the function and the argument, and changes nothing.
#include <cmath>
#include <functional>
#include <limits>
#include <utility>

#include "capi_support.hpp"

using namespace capi_test;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const int32_t kAxis0[] = {0};

bn_status set_init(bn_config* cfg, bn_param which, bn_initializer kind, double a, double b) {
  return bn_config_set_initializer(cfg, which, kind, a, b, 1);
}

bn_status set_norm(bn_config* cfg, bn_constraint kind, double min_value, double max_value, double rate) {
  return bn_config_set_constraint(cfg, BN_PARAM_GAMMA, kind, min_value, max_value, rate, kAxis0, 1);
}

// Every observable effect of the Keras options on a layer built from `cfg`: the initial
// parameters, the regularization loss, and the parameters after bn_apply_constraints.
std::vector<Bytes> effects(const bn_config* cfg) {
  Layer layer = make_layer(cfg, {4, 3, 2});
  const int64_t c = bn_num_features(layer.get());
  std::vector<Bytes> out;
  auto params = [&] {
    for (bn_param p : {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE}) {
      Tensor t(BN_F64, c);
      REQUIRE(bn_get_param(layer.get(), p, t.data(), c) == BN_OK);
      out.push_back(t.bytes);
    }
  };
  params();
  double loss = -1.0;
  REQUIRE(bn_regularization_loss(layer.get(), &loss) == BN_OK);
  Tensor l(BN_F64, 1);
  l.set(0, loss);
  out.push_back(l.bytes);
  REQUIRE(bn_apply_constraints(layer.get()) == BN_OK);
  params();
  return out;
}

}  // namespace

TEST_CASE("NULL pointers are refused by the Keras option functions", "[capi][bad_input][keras_params]") {
  const std::vector<std::pair<const char*, std::function<bn_status()>>> cases = {
      {"bn_config_set_initializer",
       [] { return bn_config_set_initializer(nullptr, BN_PARAM_GAMMA, BN_INITIALIZER_ONES, 0, 0, 0); }},
      {"bn_config_set_regularizer", [] { return bn_config_set_regularizer(nullptr, BN_PARAM_GAMMA, 0.1, 0); }},
      {"bn_config_set_constraint",
       [] { return bn_config_set_constraint(nullptr, BN_PARAM_GAMMA, BN_CONSTRAINT_NON_NEG, 0, 0, 0, nullptr, 0); }},
  };
  for (const auto& c : cases) {
    CAPTURE(c.first);
    poison_last_error();
    check_status(c.second(), BN_ERR_INVALID_ARGUMENT, {c.first, "cfg"});
  }
  double loss = 0;
  poison_last_error();
  check_status(bn_regularization_loss(nullptr, &loss), BN_ERR_INVALID_ARGUMENT, {"bn_regularization_loss", "layer"});
  poison_last_error();
  check_status(bn_apply_constraints(nullptr), BN_ERR_INVALID_ARGUMENT, {"bn_apply_constraints", "layer"});

  Probe p(BN_F32, {4, 3}, true);
  expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_regularization_loss", "loss_out"},
                 [&] { return bn_regularization_loss(p.get(), nullptr); });
  // A norm constraint needs its axes.
  Config cfg = make_config();
  poison_last_error();
  check_status(bn_config_set_constraint(cfg.get(), BN_PARAM_GAMMA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, nullptr, 1),
               BN_ERR_INVALID_ARGUMENT, {"bn_config_set_constraint", "axes"});
}

TEST_CASE("bn_config_set_initializer refuses unknown constants and bad arguments", "[capi][bad_input][keras_params]") {
  Config cfg = make_config();
  const char* fn = "bn_config_set_initializer";
  for (bn_param which : {-1, 4, 5, 6, 7, 8, 9, 1000}) {
    CAPTURE(which);
    poison_last_error();
    check_status(set_init(cfg.get(), which, BN_INITIALIZER_ONES, 0, 0), BN_ERR_INVALID_ARGUMENT, {fn, "which"});
  }
  for (bn_initializer kind : {-1, 6, 100}) {
    CAPTURE(kind);
    poison_last_error();
    check_status(set_init(cfg.get(), BN_PARAM_GAMMA, kind, 0, 1), BN_ERR_INVALID_ARGUMENT, {fn, "kind"});
  }
  struct Bad {
    bn_initializer kind;
    double a, b;
    const char* argument;
  };
  const Bad bad[] = {
      {BN_INITIALIZER_CONSTANT, kNaN, 0, "a"},
      {BN_INITIALIZER_CONSTANT, kInf, 0, "a"},
      {BN_INITIALIZER_CONSTANT, -kInf, 0, "a"},
      {BN_INITIALIZER_RANDOM_NORMAL, kNaN, 1, "a"},
      {BN_INITIALIZER_RANDOM_NORMAL, 0, 0, "b"},
      {BN_INITIALIZER_RANDOM_NORMAL, 0, -1, "b"},
      {BN_INITIALIZER_RANDOM_NORMAL, 0, kNaN, "b"},
      {BN_INITIALIZER_RANDOM_NORMAL, 0, kInf, "b"},
      {BN_INITIALIZER_RANDOM_NORMAL, 1e308, 1e307, "b"},  // can draw beyond the double range
      {BN_INITIALIZER_TRUNCATED_NORMAL, kInf, 1, "a"},
      {BN_INITIALIZER_TRUNCATED_NORMAL, 0, -0.0, "b"},
      {BN_INITIALIZER_TRUNCATED_NORMAL, 0, -1e-300, "b"},
      {BN_INITIALIZER_RANDOM_UNIFORM, 1, 0, "a"},  // minval > maxval
      {BN_INITIALIZER_RANDOM_UNIFORM, kNaN, 1, "a"},
      {BN_INITIALIZER_RANDOM_UNIFORM, 0, kNaN, "b"},
      {BN_INITIALIZER_RANDOM_UNIFORM, 0, kInf, "b"},
      {BN_INITIALIZER_RANDOM_UNIFORM, -1e308, 1e308, "b"},  // b - a overflows
  };
  for (const Bad& c : bad) {
    for (bn_param which : {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE}) {
      CAPTURE(c.kind, c.a, c.b, which);
      poison_last_error();
      check_status(set_init(cfg.get(), which, c.kind, c.a, c.b), BN_ERR_INVALID_ARGUMENT, {fn, c.argument});
    }
  }
  // Arguments a kind does not use are not read.
  CHECK(set_init(cfg.get(), BN_PARAM_GAMMA, BN_INITIALIZER_ONES, kNaN, kInf) == BN_OK);
  CHECK(set_init(cfg.get(), BN_PARAM_GAMMA, BN_INITIALIZER_CONSTANT, 2.0, kNaN) == BN_OK);
  // The closed ends are valid.
  CHECK(set_init(cfg.get(), BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_UNIFORM, 1.0, 1.0) == BN_OK);
}

TEST_CASE("a moving-variance initializer that could draw a negative value is refused",
          "[capi][bad_input][keras_params]") {
  Config cfg = make_config();
  const char* fn = "bn_config_set_initializer";
  const bn_param mv = BN_PARAM_MOVING_VARIANCE;
  poison_last_error();
  check_status(set_init(cfg.get(), mv, BN_INITIALIZER_RANDOM_NORMAL, 10.0, 0.1), BN_ERR_INVALID_ARGUMENT,
               {fn, "kind", "RANDOM_NORMAL"});
  poison_last_error();
  check_status(set_init(cfg.get(), mv, BN_INITIALIZER_CONSTANT, -1e-300, 0), BN_ERR_INVALID_ARGUMENT, {fn, "a"});
  poison_last_error();
  check_status(set_init(cfg.get(), mv, BN_INITIALIZER_RANDOM_UNIFORM, -0.5, 1.0), BN_ERR_INVALID_ARGUMENT, {fn, "a"});
  poison_last_error();
  check_status(set_init(cfg.get(), mv, BN_INITIALIZER_TRUNCATED_NORMAL, 1.0, 0.5000000000000001),
               BN_ERR_INVALID_ARGUMENT, {fn, "a", "b"});
  // The same arguments are fine for the other parameters, and the limits are fine here.
  for (bn_param which : {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN}) {
    CHECK(set_init(cfg.get(), which, BN_INITIALIZER_RANDOM_NORMAL, 10.0, 0.1) == BN_OK);
    CHECK(set_init(cfg.get(), which, BN_INITIALIZER_CONSTANT, -1.0, 0) == BN_OK);
  }
  CHECK(set_init(cfg.get(), mv, BN_INITIALIZER_TRUNCATED_NORMAL, 1.0, 0.5) == BN_OK);
  CHECK(set_init(cfg.get(), mv, BN_INITIALIZER_RANDOM_UNIFORM, 0.0, 1.0) == BN_OK);
  CHECK(set_init(cfg.get(), mv, BN_INITIALIZER_CONSTANT, 0.0, 0) == BN_OK);
  CHECK(set_init(cfg.get(), mv, BN_INITIALIZER_ZEROS, -5.0, 0) == BN_OK);
}

TEST_CASE("bn_config_set_regularizer refuses other parameters and bad factors", "[capi][bad_input][keras_params]") {
  Config cfg = make_config();
  const char* fn = "bn_config_set_regularizer";
  for (bn_param which : {-1, 2, 3, 4, 6, 8, 9}) {
    CAPTURE(which);
    poison_last_error();
    check_status(bn_config_set_regularizer(cfg.get(), which, 0.1, 0.1), BN_ERR_INVALID_ARGUMENT, {fn, "which"});
  }
  for (double v : {-1.0, -1e-300, kNaN, kInf, -kInf}) {
    CAPTURE(v);
    poison_last_error();
    check_status(bn_config_set_regularizer(cfg.get(), BN_PARAM_GAMMA, v, 0.1), BN_ERR_INVALID_ARGUMENT, {fn, "l1"});
    poison_last_error();
    check_status(bn_config_set_regularizer(cfg.get(), BN_PARAM_BETA, 0.1, v), BN_ERR_INVALID_ARGUMENT, {fn, "l2"});
  }
  CHECK(bn_config_set_regularizer(cfg.get(), BN_PARAM_GAMMA, 0.0, 0.0) == BN_OK);
}

TEST_CASE("bn_config_set_constraint refuses other parameters, unknown kinds and bad arguments",
          "[capi][bad_input][keras_params]") {
  Config cfg = make_config();
  const char* fn = "bn_config_set_constraint";
  for (bn_param which : {-1, 2, 3, 5, 7, 9}) {
    CAPTURE(which);
    poison_last_error();
    check_status(bn_config_set_constraint(cfg.get(), which, BN_CONSTRAINT_NON_NEG, 0, 0, 0, nullptr, 0),
                 BN_ERR_INVALID_ARGUMENT, {fn, "which"});
  }
  for (bn_constraint kind : {-1, 5, 64}) {
    CAPTURE(kind);
    poison_last_error();
    check_status(set_norm(cfg.get(), kind, 0, 1, 1), BN_ERR_INVALID_ARGUMENT, {fn, "kind"});
  }
  const int32_t axes9[] = {0, 1, 2, 3, 4, 5, 6, 7, 0};
  for (int32_t count : {0, -1, 9}) {
    for (bn_constraint kind : {BN_CONSTRAINT_UNIT_NORM, BN_CONSTRAINT_MAX_NORM, BN_CONSTRAINT_MIN_MAX_NORM}) {
      CAPTURE(count, kind);
      poison_last_error();
      check_status(bn_config_set_constraint(cfg.get(), BN_PARAM_BETA, kind, 0, 1, 1, axes9, count),
                   BN_ERR_INVALID_ARGUMENT, {fn, "axis_count"});
    }
  }
  for (int32_t axis : {8, -9, std::numeric_limits<int32_t>::min()}) {
    CAPTURE(axis);
    const int32_t axes[] = {axis};
    poison_last_error();
    check_status(bn_config_set_constraint(cfg.get(), BN_PARAM_GAMMA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, axes, 1),
                 BN_ERR_INVALID_ARGUMENT, {fn, "axes[0]"});
  }
  const int32_t dup[] = {1, -1, 1};
  poison_last_error();
  check_status(bn_config_set_constraint(cfg.get(), BN_PARAM_GAMMA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, dup, 3),
               BN_ERR_INVALID_ARGUMENT, {fn, "axes[2]"});
  struct Bad {
    bn_constraint kind;
    double min_value, max_value, rate;
    const char* argument;
  };
  const Bad bad[] = {
      {BN_CONSTRAINT_MAX_NORM, 0, -1, 0, "max_value"},
      {BN_CONSTRAINT_MAX_NORM, 0, kNaN, 0, "max_value"},
      {BN_CONSTRAINT_MAX_NORM, 0, kInf, 0, "max_value"},
      {BN_CONSTRAINT_MIN_MAX_NORM, -1, 1, 1, "min_value"},
      {BN_CONSTRAINT_MIN_MAX_NORM, kNaN, 1, 1, "min_value"},
      {BN_CONSTRAINT_MIN_MAX_NORM, 2, 1, 1, "max_value"},  // min > max
      {BN_CONSTRAINT_MIN_MAX_NORM, 0, kInf, 1, "max_value"},
      {BN_CONSTRAINT_MIN_MAX_NORM, 0, 1, 1.5, "rate"},
      {BN_CONSTRAINT_MIN_MAX_NORM, 0, 1, -0.1, "rate"},
      {BN_CONSTRAINT_MIN_MAX_NORM, 0, 1, kNaN, "rate"},
  };
  for (const Bad& c : bad) {
    CAPTURE(c.kind, c.min_value, c.max_value, c.rate);
    poison_last_error();
    check_status(set_norm(cfg.get(), c.kind, c.min_value, c.max_value, c.rate), BN_ERR_INVALID_ARGUMENT,
                 {fn, c.argument});
  }
  // Arguments a kind does not use are not read; the closed ends are valid.
  CHECK(bn_config_set_constraint(cfg.get(), BN_PARAM_GAMMA, BN_CONSTRAINT_NONE, kNaN, kNaN, kNaN, nullptr, -7) ==
        BN_OK);
  CHECK(bn_config_set_constraint(cfg.get(), BN_PARAM_BETA, BN_CONSTRAINT_NON_NEG, kNaN, kNaN, kNaN, nullptr, 0) ==
        BN_OK);
  CHECK(set_norm(cfg.get(), BN_CONSTRAINT_MAX_NORM, kNaN, 0.0, kNaN) == BN_OK);
  CHECK(set_norm(cfg.get(), BN_CONSTRAINT_MIN_MAX_NORM, 1.0, 1.0, 0.0) == BN_OK);
  CHECK(set_norm(cfg.get(), BN_CONSTRAINT_UNIT_NORM, kNaN, kNaN, kNaN) == BN_OK);
}

TEST_CASE("failed Keras option setters leave the config as it was", "[capi][bad_input][keras_params]") {
  // Two configs with the same valid settings; one also receives every refused call. Layers
  // built from both must start, penalize and constrain bitwise alike.
  Config a = make_config();
  Config b = make_config();
  const int32_t axes[] = {1, 2};
  const int32_t c_axes[] = {-1};
  for (bn_config* cfg : {a.get(), b.get()}) {
    REQUIRE(bn_config_set_axes(cfg, axes, 2) == BN_OK);
    REQUIRE(bn_config_set_dtype(cfg, BN_F64) == BN_OK);
    REQUIRE(bn_config_set_initializer(cfg, BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_NORMAL, 1.0, 2.0, 5) == BN_OK);
    REQUIRE(bn_config_set_initializer(cfg, BN_PARAM_BETA, BN_INITIALIZER_RANDOM_UNIFORM, -1.0, 1.0, 6) == BN_OK);
    REQUIRE(bn_config_set_initializer(cfg, BN_PARAM_MOVING_MEAN, BN_INITIALIZER_CONSTANT, 0.5, 0, 0) == BN_OK);
    REQUIRE(bn_config_set_initializer(cfg, BN_PARAM_MOVING_VARIANCE, BN_INITIALIZER_TRUNCATED_NORMAL, 3.0, 1.0, 7) ==
            BN_OK);
    REQUIRE(bn_config_set_regularizer(cfg, BN_PARAM_GAMMA, 0.25, 0.125) == BN_OK);
    REQUIRE(bn_config_set_regularizer(cfg, BN_PARAM_BETA, 0.5, 0.0) == BN_OK);
    REQUIRE(bn_config_set_constraint(cfg, BN_PARAM_GAMMA, BN_CONSTRAINT_MAX_NORM, 0, 1.5, 0, c_axes, 1) == BN_OK);
    REQUIRE(bn_config_set_constraint(cfg, BN_PARAM_BETA, BN_CONSTRAINT_MIN_MAX_NORM, 0.5, 0.75, 0.5, c_axes, 1) ==
            BN_OK);
  }
  const int32_t bad_axes[] = {9};
  bn_config* cfg = b.get();
  CHECK(bn_config_set_initializer(cfg, BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_NORMAL, 1.0, 0.0, 5) != BN_OK);
  CHECK(bn_config_set_initializer(cfg, BN_PARAM_BETA, 9, 0, 0, 0) != BN_OK);
  CHECK(bn_config_set_initializer(cfg, BN_PARAM_MOVING_MEAN, BN_INITIALIZER_CONSTANT, kNaN, 0, 0) != BN_OK);
  CHECK(bn_config_set_initializer(cfg, BN_PARAM_MOVING_VARIANCE, BN_INITIALIZER_RANDOM_NORMAL, 3.0, 1.0, 7) != BN_OK);
  CHECK(bn_config_set_initializer(cfg, BN_PARAM_RENORM_MEAN, BN_INITIALIZER_ZEROS, 0, 0, 0) != BN_OK);
  CHECK(bn_config_set_regularizer(cfg, BN_PARAM_GAMMA, -0.25, 0.125) != BN_OK);
  CHECK(bn_config_set_regularizer(cfg, BN_PARAM_BETA, 0.5, kNaN) != BN_OK);
  CHECK(bn_config_set_regularizer(cfg, BN_PARAM_MOVING_MEAN, 0.5, 0.5) != BN_OK);
  CHECK(bn_config_set_constraint(cfg, BN_PARAM_GAMMA, BN_CONSTRAINT_MAX_NORM, 0, -1.5, 0, c_axes, 1) != BN_OK);
  CHECK(bn_config_set_constraint(cfg, BN_PARAM_GAMMA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, bad_axes, 1) != BN_OK);
  CHECK(bn_config_set_constraint(cfg, BN_PARAM_BETA, BN_CONSTRAINT_MIN_MAX_NORM, 0.5, 0.75, 2.0, c_axes, 1) != BN_OK);
  CHECK(bn_config_set_constraint(cfg, BN_PARAM_BETA, 7, 0, 0, 0, c_axes, 1) != BN_OK);

  const std::vector<Bytes> ea = effects(a.get());
  const std::vector<Bytes> eb = effects(b.get());
  CHECK(ea == eb);
  // And the options took effect at all (the comparison is not between two defaults).
  Config plain = make_config();
  REQUIRE(bn_config_set_axes(plain.get(), axes, 2) == BN_OK);
  REQUIRE(bn_config_set_dtype(plain.get(), BN_F64) == BN_OK);
  const std::vector<Bytes> ep = effects(plain.get());
  for (size_t i = 0; i < ea.size(); ++i) {
    CAPTURE(i);
    CHECK(ea[i] != ep[i]);
  }
}

TEST_CASE("bn_create refuses Keras options it cannot honour, without writing *out", "[capi][bad_input][keras_params]") {
  auto expect_create_failure = [](const bn_config* cfg, std::vector<int64_t> shape,
                                  std::initializer_list<const char*> needles) {
    bn_layer* const sentinel = reinterpret_cast<bn_layer*>(static_cast<uintptr_t>(0x5a5a5a50));
    bn_layer* out = sentinel;
    poison_last_error();
    check_status(bn_create(cfg, shape.data(), static_cast<int32_t>(shape.size()), &out), BN_ERR_INVALID_ARGUMENT,
                 needles);
    CHECK(out == sentinel);
  };
  SECTION("a constraint axis outside the storage rank") {
    Config cfg = make_config();
    const int32_t axis1[] = {1};
    REQUIRE(bn_config_set_constraint(cfg.get(), BN_PARAM_BETA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, axis1, 1) == BN_OK);
    expect_create_failure(cfg.get(), {4, 3}, {"bn_create", "BETA", "axis", "UNIT_NORM"});  // storage (3,)
    const int32_t two_axes[] = {0, 1};
    REQUIRE(bn_config_set_axes(cfg.get(), two_axes, 2) == BN_OK);
    Layer ok = make_layer(cfg.get(), {4, 3});  // storage (4, 3): axis 1 exists
    CHECK(bn_num_features(ok.get()) == 12);
    // Ignored when the layer has no beta, as Keras has no variable to constrain.
    const int32_t axis5[] = {5};
    REQUIRE(bn_config_set_constraint(cfg.get(), BN_PARAM_BETA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, axis5, 1) == BN_OK);
    expect_create_failure(cfg.get(), {4, 3}, {"bn_create", "BETA", "axis"});
    REQUIRE(bn_config_set_center(cfg.get(), 0) == BN_OK);
    Layer no_beta = make_layer(cfg.get(), {4, 3});
  }
  SECTION("an initial value the float32 storage cannot hold") {
    Config cfg = make_config();
    REQUIRE(bn_config_set_initializer(cfg.get(), BN_PARAM_MOVING_MEAN, BN_INITIALIZER_RANDOM_UNIFORM, -1e300, -1e299,
                                      3) == BN_OK);
    expect_create_failure(cfg.get(), {4, 3}, {"bn_create", "MOVING_MEAN", "RANDOM_UNIFORM"});
    REQUIRE(bn_config_set_dtype(cfg.get(), BN_F64) == BN_OK);
    Layer ok = make_layer(cfg.get(), {4, 3});
  }
}

TEST_CASE("bn_apply_constraints that fails changes nothing", "[capi][bad_input][keras_params]") {
  Config cfg = make_config();
  REQUIRE(bn_config_set_dtype(cfg.get(), BN_F64) == BN_OK);
  REQUIRE(bn_config_set_constraint(cfg.get(), BN_PARAM_GAMMA, BN_CONSTRAINT_MIN_MAX_NORM, 0.0, 1.0, 0.25, kAxis0, 1) ==
          BN_OK);
  Probe p(BN_F64, {4, 3}, true, true, cfg.get());
  // Gamma whose sum of squares overflows (norm inf, inf/inf), then a fresh forward so that
  // the snapshot's backward is valid.
  Tensor gamma(BN_F64, 3), y(BN_F64, 12);
  gamma.set(0, 1e200);
  gamma.set(1, -2.0);
  gamma.set(2, 0.5);
  REQUIRE(bn_set_param(p.get(), BN_PARAM_GAMMA, gamma.data(), 3) == BN_OK);
  REQUIRE(bn_forward(p.get(), p.shape.data(), p.rank(), p.x.data(), y.data()) == BN_OK);
  expect_failure(p, BN_ERR_NONFINITE, {"bn_apply_constraints", "GAMMA", "MIN_MAX_NORM"},
                 [&] { return bn_apply_constraints(p.get()); });
}
