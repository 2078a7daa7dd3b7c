// Bad input to the config builder and to bn_create: every refusal returns its status,
// names the function and the argument, and changes nothing (the config keeps its
// values, *out is not written).
#include <cmath>
#include <functional>
#include <limits>
#include <utility>

#include "capi_support.hpp"

using namespace capi_test;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bn_status dummy_allreduce(void*, double*, int64_t) { return BN_OK; }

// bn_create that must fail: the status, the message, and *out left as it was.
void expect_create_failure(const bn_config* cfg, std::vector<int64_t> shape, int32_t ndim, bn_status expected,
                           std::initializer_list<const char*> needles) {
  bn_layer* const sentinel = reinterpret_cast<bn_layer*>(static_cast<uintptr_t>(0x5a5a5a50));
  bn_layer* out = sentinel;
  poison_last_error();
  const bn_status got = bn_create(cfg, shape.data(), ndim, &out);
  check_status(got, expected, needles);
  CHECK(out == sentinel);
}

void expect_create_failure(const bn_config* cfg, const std::vector<int64_t>& shape, bn_status expected,
                           std::initializer_list<const char*> needles) {
  expect_create_failure(cfg, shape, static_cast<int32_t>(shape.size()), expected, needles);
}

}  // namespace

TEST_CASE("NULL config or out pointer is refused by every config function", "[capi][bad_input]") {
  poison_last_error();
  check_status(bn_config_create(nullptr), BN_ERR_INVALID_ARGUMENT, {"bn_config_create", "out"});
  const int32_t axes[] = {1};
  const std::vector<std::pair<const char*, std::function<bn_status()>>> cases = {
      {"bn_config_set_axes", [&] { return bn_config_set_axes(nullptr, axes, 1); }},
      {"bn_config_set_momentum", [] { return bn_config_set_momentum(nullptr, 0.5); }},
      {"bn_config_set_epsilon", [] { return bn_config_set_epsilon(nullptr, 0.5); }},
      {"bn_config_set_center", [] { return bn_config_set_center(nullptr, 1); }},
      {"bn_config_set_scale", [] { return bn_config_set_scale(nullptr, 1); }},
      {"bn_config_set_dtype", [] { return bn_config_set_dtype(nullptr, BN_F32); }},
      {"bn_config_set_trainable", [] { return bn_config_set_trainable(nullptr, 1); }},
      {"bn_config_set_fused", [] { return bn_config_set_fused(nullptr, BN_FUSED_AUTO); }},
      {"bn_config_set_keras_rules", [] { return bn_config_set_keras_rules(nullptr, BN_KERAS_V1); }},
      {"bn_config_set_renorm", [] { return bn_config_set_renorm(nullptr, 0, kInf, 0.0, kInf, 0.99); }},
      {"bn_config_set_virtual_batch_size", [] { return bn_config_set_virtual_batch_size(nullptr, 0); }},
      {"bn_config_set_adjustment", [] { return bn_config_set_adjustment(nullptr, nullptr, nullptr); }},
      {"bn_config_set_moving_variance", [] { return bn_config_set_moving_variance(nullptr, 0); }},
      {"bn_config_set_cumulative_average", [] { return bn_config_set_cumulative_average(nullptr, 0); }},
      {"bn_config_set_single_value_policy", [] { return bn_config_set_single_value_policy(nullptr, 0); }},
      {"bn_config_set_nonfinite_policy", [] { return bn_config_set_nonfinite_policy(nullptr, 0); }},
      {"bn_config_set_allreduce", [] { return bn_config_set_allreduce(nullptr, nullptr, nullptr); }},
  };
  for (const auto& c : cases) {
    CAPTURE(c.first);
    poison_last_error();
    check_status(c.second(), BN_ERR_INVALID_ARGUMENT, {c.first, "cfg"});
  }
}

TEST_CASE("destroying NULL handles does nothing", "[capi][bad_input]") {
  poison_last_error();
  const std::string before = bn_last_error();
  bn_config_destroy(nullptr);
  bn_destroy(nullptr);
  CHECK(before == bn_last_error());
}

TEST_CASE("bn_config_set_axes refuses NULL, bad counts, out-of-range and duplicate axes", "[capi][bad_input]") {
  Config cfg = make_config();
  const int32_t one[] = {1};
  const int32_t nine[] = {0, 1, 2, 3, 4, 5, 6, 7, 0};
  poison_last_error();
  check_status(bn_config_set_axes(cfg.get(), nullptr, 1), BN_ERR_INVALID_ARGUMENT, {"bn_config_set_axes", "axes"});
  for (int32_t count : {0, -1, 9, std::numeric_limits<int32_t>::min()}) {
    CAPTURE(count);
    poison_last_error();
    check_status(bn_config_set_axes(cfg.get(), count == 9 ? nine : one, count), BN_ERR_INVALID_ARGUMENT,
                 {"bn_config_set_axes", "count"});
  }
  // No rank is above 8, so these can never be valid.
  for (int32_t axis : {8, -9, 1000, std::numeric_limits<int32_t>::min()}) {
    CAPTURE(axis);
    const int32_t axes[] = {axis};
    poison_last_error();
    check_status(bn_config_set_axes(cfg.get(), axes, 1), BN_ERR_INVALID_ARGUMENT, {"bn_config_set_axes", "axes[0]"});
  }
  const int32_t dup[] = {1, 1};
  poison_last_error();
  check_status(bn_config_set_axes(cfg.get(), dup, 2), BN_ERR_INVALID_ARGUMENT, {"bn_config_set_axes", "axes[1]"});
  const int32_t dup_neg[] = {-1, 2, -1};
  poison_last_error();
  check_status(bn_config_set_axes(cfg.get(), dup_neg, 3), BN_ERR_INVALID_ARGUMENT,
               {"bn_config_set_axes", "axes[2]"});
}

TEST_CASE("momentum and epsilon outside their domains are refused", "[capi][bad_input]") {
  Config cfg = make_config();
  for (double m : {-0.1, 1.1, kNaN, kInf, -kInf, -1e-300, 1.0000000000000002}) {
    CAPTURE(m);
    poison_last_error();
    check_status(bn_config_set_momentum(cfg.get(), m), BN_ERR_INVALID_ARGUMENT,
                 {"bn_config_set_momentum", "momentum"});
  }
  for (double e : {kNaN, kInf, -kInf, -1.0, -1e-300}) {
    CAPTURE(e);
    poison_last_error();
    check_status(bn_config_set_epsilon(cfg.get(), e), BN_ERR_INVALID_ARGUMENT, {"bn_config_set_epsilon", "epsilon"});
  }
  // The closed ends of the domains are valid.
  CHECK(bn_config_set_momentum(cfg.get(), 0.0) == BN_OK);
  CHECK(bn_config_set_momentum(cfg.get(), 1.0) == BN_OK);
  CHECK(bn_config_set_epsilon(cfg.get(), 0.0) == BN_OK);
}

TEST_CASE("unknown enumeration values and flags other than 0/1 are refused", "[capi][bad_input]") {
  Config cfg = make_config();
  struct EnumCase {
    const char* function;
    const char* argument;
    bn_status (*set)(bn_config*, int32_t);
    std::vector<int32_t> bad;
  };
  const EnumCase enums[] = {
      {"bn_config_set_dtype", "dtype", &bn_config_set_dtype, {7, 4, -1}},
      {"bn_config_set_fused", "fused", &bn_config_set_fused, {3, -1}},
      {"bn_config_set_keras_rules", "rules", &bn_config_set_keras_rules, {2, -1}},
      {"bn_config_set_moving_variance", "convention", &bn_config_set_moving_variance, {3, -1}},
      {"bn_config_set_single_value_policy", "policy", &bn_config_set_single_value_policy, {2, -1}},
      {"bn_config_set_nonfinite_policy", "policy", &bn_config_set_nonfinite_policy, {3, -1}},
  };
  for (const EnumCase& e : enums) {
    for (int32_t v : e.bad) {
      CAPTURE(e.function, v);
      poison_last_error();
      check_status(e.set(cfg.get(), v), BN_ERR_INVALID_ARGUMENT, {e.function, e.argument});
    }
  }
  struct FlagCase {
    const char* function;
    const char* argument;
    bn_status (*set)(bn_config*, int);
  };
  const FlagCase flags[] = {
      {"bn_config_set_center", "enabled", &bn_config_set_center},
      {"bn_config_set_scale", "enabled", &bn_config_set_scale},
      {"bn_config_set_trainable", "trainable", &bn_config_set_trainable},
      {"bn_config_set_cumulative_average", "enabled", &bn_config_set_cumulative_average},
  };
  for (const FlagCase& f : flags) {
    for (int v : {2, -1, 256}) {
      CAPTURE(f.function, v);
      poison_last_error();
      check_status(f.set(cfg.get(), v), BN_ERR_INVALID_ARGUMENT, {f.function, f.argument});
    }
  }
  poison_last_error();
  check_status(bn_config_set_renorm(cfg.get(), 2, kInf, 0.0, kInf, 0.99), BN_ERR_INVALID_ARGUMENT,
               {"bn_config_set_renorm", "enabled"});
  poison_last_error();
  check_status(bn_config_set_virtual_batch_size(cfg.get(), -1), BN_ERR_INVALID_ARGUMENT,
               {"bn_config_set_virtual_batch_size", "size"});
}

TEST_CASE("renorm clipping is checked as Keras 3 checks it", "[capi][bad_input]") {
  Config cfg = make_config();
  struct Bad {
    double rmax, rmin, dmax, momentum;
    const char* arg;
  };
  for (const Bad& b : {Bad{1.0, 2.0, kInf, 0.99, "rmax"}, Bad{kInf, -1.0, kInf, 0.99, "rmin"},
                       Bad{kInf, kInf, kInf, 0.99, "rmin"}, Bad{kInf, 0.0, -1.0, 0.99, "dmax"},
                       Bad{kNaN, 0.0, kInf, 0.99, "rmax"}, Bad{kInf, 0.0, kNaN, 0.99, "dmax"},
                       Bad{kInf, 0.0, kInf, 1.5, "renorm_momentum"}, Bad{kInf, 0.0, kInf, kNaN, "renorm_momentum"}}) {
    CAPTURE(b.rmax, b.rmin, b.dmax, b.momentum);
    poison_last_error();
    check_status(bn_config_set_renorm(cfg.get(), 1, b.rmax, b.rmin, b.dmax, b.momentum), BN_ERR_INVALID_ARGUMENT,
                 {"bn_config_set_renorm", b.arg});
  }
  CHECK(bn_config_set_renorm(cfg.get(), 1, 3.0, 1.0 / 3.0, 5.0, 0.99) == BN_OK);
  CHECK(bn_config_set_renorm(cfg.get(), 1, kInf, 0.0, kInf, 0.0) == BN_OK);
}

TEST_CASE("every pinned dtype is accepted, 16-bit ones included", "[capi][bad_input]") {
  Config cfg = make_config();
  for (bn_dtype d : {BN_F32, BN_F64, BN_BF16, BN_F16}) {
    CAPTURE(d);
    CHECK(bn_config_set_dtype(cfg.get(), d) == BN_OK);
    const std::vector<int64_t> shape = {3, 5};
    Layer layer = make_layer(cfg.get(), shape);
    CHECK(bn_num_features(layer.get()) == 5);
  }
}

TEST_CASE("valid requests this version cannot serve are BN_ERR_UNSUPPORTED, disabling them is BN_OK",
          "[capi][bad_input]") {
  // Ghost batches view the input with one more dimension: a rank-8 input would need rank 9.
  Config cfg = make_config();
  REQUIRE(bn_config_set_virtual_batch_size(cfg.get(), 2) == BN_OK);
  const std::vector<int64_t> rank8 = {4, 1, 1, 1, 1, 1, 1, 3};
  expect_create_failure(cfg.get(), rank8, BN_ERR_UNSUPPORTED, {"bn_create", "virtual_batch_size", "rank"});
  // "Off" is always servable; so is an allreduce callback (cross-replica statistics).
  int user_data = 0;
  CHECK(bn_config_set_allreduce(cfg.get(), &dummy_allreduce, &user_data) == BN_OK);
  CHECK(bn_config_set_renorm(cfg.get(), 0, kInf, 0.0, kInf, 0.99) == BN_OK);
  CHECK(bn_config_set_virtual_batch_size(cfg.get(), 0) == BN_OK);
  CHECK(bn_config_set_adjustment(cfg.get(), nullptr, nullptr) == BN_OK);
  CHECK(bn_config_set_allreduce(cfg.get(), nullptr, nullptr) == BN_OK);
}

TEST_CASE("failed setters leave the config as it was", "[capi][bad_input]") {
  // Two configs with the same valid settings; one also receives every refused call.
  // Layers built from both must behave bitwise alike.
  Config a = make_config();
  Config b = make_config();
  const int32_t axes[] = {0};
  for (bn_config* cfg : {a.get(), b.get()}) {
    REQUIRE(bn_config_set_axes(cfg, axes, 1) == BN_OK);
    REQUIRE(bn_config_set_momentum(cfg, 0.5) == BN_OK);
    REQUIRE(bn_config_set_epsilon(cfg, 0.25) == BN_OK);
    REQUIRE(bn_config_set_dtype(cfg, BN_F64) == BN_OK);
    REQUIRE(bn_config_set_center(cfg, 0) == BN_OK);
    REQUIRE(bn_config_set_moving_variance(cfg, BN_MOVING_VARIANCE_UNBIASED) == BN_OK);
  }
  const int32_t dup[] = {1, 1};
  CHECK(bn_config_set_axes(b.get(), dup, 2) != BN_OK);
  CHECK(bn_config_set_axes(b.get(), axes, 0) != BN_OK);
  CHECK(bn_config_set_momentum(b.get(), kNaN) != BN_OK);
  CHECK(bn_config_set_epsilon(b.get(), -1.0) != BN_OK);
  CHECK(bn_config_set_dtype(b.get(), 4) != BN_OK);
  CHECK(bn_config_set_dtype(b.get(), 7) != BN_OK);
  CHECK(bn_config_set_center(b.get(), 2) != BN_OK);
  CHECK(bn_config_set_moving_variance(b.get(), 3) != BN_OK);
  CHECK(bn_config_set_renorm(b.get(), 1, 1.0, 2.0, kInf, 0.5) != BN_OK);
  CHECK(bn_config_set_virtual_batch_size(b.get(), -2) != BN_OK);

  const std::vector<int64_t> shape = {3, 5};
  Layer la = make_layer(a.get(), shape);
  Layer lb = make_layer(b.get(), shape);
  REQUIRE(bn_num_features(la.get()) == 3);
  REQUIRE(bn_num_features(lb.get()) == 3);
  Tensor x(BN_F64, 15), ya(BN_F64, 15), yb(BN_F64, 15);
  x.fill(5);
  for (bn_layer* l : {la.get(), lb.get()}) REQUIRE(bn_set_training(l, 1) == BN_OK);
  REQUIRE(bn_forward(la.get(), shape.data(), 2, x.data(), ya.data()) == BN_OK);
  REQUIRE(bn_forward(lb.get(), shape.data(), 2, x.data(), yb.data()) == BN_OK);
  CHECK(ya.bytes == yb.bytes);
  for (bn_param p : {BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE, BN_PARAM_BATCH_VARIANCE}) {
    Tensor pa(BN_F64, 3), pb(BN_F64, 3);
    REQUIRE(bn_get_param(la.get(), p, pa.data(), 3) == BN_OK);
    REQUIRE(bn_get_param(lb.get(), p, pb.data(), 3) == BN_OK);
    CHECK(pa.bytes == pb.bytes);
  }
  // The momentum 0.5 survived: moving mean = 0.5*0 + 0.5*batch mean.
  Tensor mm(BN_F64, 3), bm(BN_F64, 3);
  REQUIRE(bn_get_param(lb.get(), BN_PARAM_MOVING_MEAN, mm.data(), 3) == BN_OK);
  REQUIRE(bn_get_param(lb.get(), BN_PARAM_BATCH_MEAN, bm.data(), 3) == BN_OK);
  for (size_t f = 0; f < 3; ++f) CHECK(mm.get(f) == Approx(0.5 * bm.get(f)).margin(1e-15));
}

TEST_CASE("bn_create refuses NULL pointers and bad ranks without writing *out", "[capi][bad_input]") {
  Config cfg = make_config();
  const std::vector<int64_t> shape = {4, 3};
  bn_layer* out = nullptr;
  poison_last_error();
  check_status(bn_create(nullptr, shape.data(), 2, &out), BN_ERR_INVALID_ARGUMENT, {"bn_create", "cfg"});
  CHECK(out == nullptr);
  poison_last_error();
  check_status(bn_create(cfg.get(), nullptr, 2, &out), BN_ERR_INVALID_ARGUMENT, {"bn_create", "input_shape"});
  CHECK(out == nullptr);
  poison_last_error();
  check_status(bn_create(cfg.get(), shape.data(), 2, nullptr), BN_ERR_INVALID_ARGUMENT, {"bn_create", "out"});

  const std::vector<int64_t> nine(9, 2);
  for (int32_t ndim : {0, 9, -1, std::numeric_limits<int32_t>::min()}) {
    CAPTURE(ndim);
    expect_create_failure(cfg.get(), nine, ndim, BN_ERR_SHAPE, {"bn_create", "ndim"});
  }
}

TEST_CASE("bn_create refuses bad sizes and axes that do not fit the rank", "[capi][bad_input]") {
  Config cfg = make_config();
  // Negative sizes anywhere, kept or not.
  expect_create_failure(cfg.get(), {-1, 3}, BN_ERR_SHAPE, {"bn_create", "input_shape[0]"});
  expect_create_failure(cfg.get(), {4, -3}, BN_ERR_SHAPE, {"bn_create", "input_shape[1]"});
  // A kept size of 0 has no features to normalize.
  expect_create_failure(cfg.get(), {4, 0}, BN_ERR_SHAPE, {"bn_create", "input_shape[1]"});

  // Axes are checked against the rank at create.
  const int32_t four[] = {4};
  REQUIRE(bn_config_set_axes(cfg.get(), four, 1) == BN_OK);
  expect_create_failure(cfg.get(), {2, 3, 4, 5}, BN_ERR_INVALID_ARGUMENT, {"bn_create", "axis"});
  const int32_t minus_five[] = {-5};
  REQUIRE(bn_config_set_axes(cfg.get(), minus_five, 1) == BN_OK);
  expect_create_failure(cfg.get(), {2, 3, 4, 5}, BN_ERR_INVALID_ARGUMENT, {"bn_create", "axis"});
  const int32_t two[] = {2};
  REQUIRE(bn_config_set_axes(cfg.get(), two, 1) == BN_OK);
  expect_create_failure(cfg.get(), {2, 3}, BN_ERR_INVALID_ARGUMENT, {"bn_create", "axis"});
  // 1 and -3 are the same axis of a rank-4 input: only create can see it.
  const int32_t dup[] = {1, -3};
  REQUIRE(bn_config_set_axes(cfg.get(), dup, 2) == BN_OK);
  expect_create_failure(cfg.get(), {2, 3, 4, 5}, BN_ERR_INVALID_ARGUMENT, {"bn_create", "axis"});
  // ... and on rank 3 they are different axes (1 and 0), which is valid.
  bn_layer* layer = nullptr;
  const int64_t rank3[] = {2, 3, 4};
  REQUIRE(bn_create(cfg.get(), rank3, 3, &layer) == BN_OK);
  CHECK(bn_num_features(layer) == 6);
  bn_destroy(layer);
}

TEST_CASE("Keras V2 rules refuse fused ON where the fused path cannot be used", "[capi][bad_input]") {
  Config cfg = make_config();
  REQUIRE(bn_config_set_keras_rules(cfg.get(), BN_KERAS_V2) == BN_OK);
  REQUIRE(bn_config_set_fused(cfg.get(), BN_FUSED_ON) == BN_OK);
  expect_create_failure(cfg.get(), {4, 3}, BN_ERR_INVALID_ARGUMENT, {"bn_create"});  // rank 2
  REQUIRE(bn_config_set_dtype(cfg.get(), BN_F64) == BN_OK);
  expect_create_failure(cfg.get(), {2, 3, 4, 5}, BN_ERR_INVALID_ARGUMENT, {"bn_create"});  // float64
  // Under the V1 rules the same request falls back silently.
  REQUIRE(bn_config_set_keras_rules(cfg.get(), BN_KERAS_V1) == BN_OK);
  Layer layer = make_layer(cfg.get(), {2, 3, 4, 5});
  int fused = -1;
  REQUIRE(bn_get_fused(layer.get(), &fused) == BN_OK);
  CHECK(fused == 0);
}
