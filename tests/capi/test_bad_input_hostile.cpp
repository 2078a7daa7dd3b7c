// Hostile input, call by call: every pointer argument NULL, ranks 0 and above 8, negative and
// zero sizes in every position, size products that overflow int64 or the address space,
// unknown enumeration values in every setter, renorm and momentum settings out of range,
// ghost batches that do not divide the batch. Every refusal is checked as in
// test_bad_input.cpp: its status, a message naming the function and the argument, the layer
// bitwise as before (capi_support.hpp's snapshot) and the caller's outputs unwritten.
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>

#include "capi_support.hpp"

using namespace capi_test;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kMax64 = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin64 = std::numeric_limits<int64_t>::min();
constexpr int32_t kMax32 = std::numeric_limits<int32_t>::max();
constexpr int32_t kMin32 = std::numeric_limits<int32_t>::min();

// The four shape-taking layer calls, with buffers of `n` elements and every output poisoned.
// Returns the call's status; `written` is set if any output buffer changed.
struct Calls {
  const Probe& p;
  size_t n;
  Tensor x, res, y, dy, dx, dres, dg, db;
  explicit Calls(const Probe& probe, size_t elements)
      : p(probe),
        n(elements),
        x(probe.dtype, static_cast<int64_t>(elements)),
        res(probe.dtype, static_cast<int64_t>(elements)),
        y(probe.dtype, static_cast<int64_t>(elements)),
        dy(probe.dtype, static_cast<int64_t>(elements)),
        dx(probe.dtype, static_cast<int64_t>(elements)),
        dres(probe.dtype, static_cast<int64_t>(elements)),
        dg(param_dtype(probe.dtype), probe.features()),
        db(param_dtype(probe.dtype), probe.features()) {
    x.fill(1);
    res.fill(2);
    dy.fill(3);
    for (Tensor* t : {&y, &dx, &dres, &dg, &db}) t->poison();
  }
  bool outputs_untouched() const {
    for (const Tensor* t : {&y, &dx, &dres, &dg, &db}) {
      Tensor fresh = *t;
      fresh.poison();
      if (fresh.bytes != t->bytes) return false;
    }
    return true;
  }
};

using ShapeCall = std::function<bn_status(Calls&, const int64_t*, int32_t)>;

std::vector<std::pair<const char*, ShapeCall>> shape_calls() {
  return {
      {"bn_forward", [](Calls& c, const int64_t* s, int32_t nd) { return bn_forward(c.p.get(), s, nd, c.x.data(), c.y.data()); }},
      {"bn_forward_residual",
       [](Calls& c, const int64_t* s, int32_t nd) {
         return bn_forward_residual(c.p.get(), s, nd, c.x.data(), c.res.data(), c.y.data());
       }},
      {"bn_backward",
       [](Calls& c, const int64_t* s, int32_t nd) {
         return bn_backward(c.p.get(), s, nd, c.x.data(), c.dy.data(), c.dx.data(), c.dg.data(), c.db.data());
       }},
      {"bn_backward_residual",
       [](Calls& c, const int64_t* s, int32_t nd) {
         return bn_backward_residual(c.p.get(), s, nd, c.x.data(), c.y.data(), c.dy.data(), c.dx.data(),
                                     c.dres.data(), c.dg.data(), c.db.data());
       }},
  };
}

// Runs every shape-taking call on `shape`, which each must refuse with `expected`.
void expect_all_refuse(const Probe& p, const std::vector<int64_t>& shape, int32_t ndim, bn_status expected,
                       std::initializer_list<const char*> needles) {
  for (const auto& [name, call] : shape_calls()) {
    CAPTURE(name);
    Calls c(p, 64);
    std::vector<const char*> all{name};
    all.insert(all.end(), needles.begin(), needles.end());
    const Snapshot before = snapshot(p);
    poison_last_error();
    const bn_status got = call(c, shape.data(), ndim);
    const std::string message = bn_last_error();
    INFO("message: \"" << message << "\"");
    CHECK(got == expected);
    for (const char* needle : all) {
      INFO("the message should name: " << needle);
      CHECK(mentions(message, needle));
    }
    CHECK(snapshot(p) == before);
    CHECK(c.outputs_untouched());
  }
}

std::vector<std::pair<bn_dtype, bool>> kinds() {
  return {{BN_F32, true}, {BN_F32, false}, {BN_F64, true}, {BN_BF16, false}, {BN_F16, true}};
}

// A rank-4 probe normalizing axis 1 (NCHW-like, 3 features).
Probe rank4(bn_dtype dtype, bool training) {
  Config cfg = make_config();
  const int32_t axis[] = {1};
  REQUIRE(bn_config_set_dtype(cfg.get(), dtype) == BN_OK);
  REQUIRE(bn_config_set_axes(cfg.get(), axis, 1) == BN_OK);
  return Probe(dtype, {2, 3, 2, 2}, training, true, cfg.get());
}

}  // namespace

TEST_CASE("every pointer argument, NULL, is refused and changes nothing", "[capi][bad_input][hostile]") {
  for (auto [dtype, training] : kinds()) {
    CAPTURE(dtype, training);
    const Probe p(dtype, {6, 4}, training);
    const int64_t* s = p.shape.data();
    Calls c(p, 24);
    bn_mode mode = -1;
    int fused = -1;
    double loss = -1;
    void* x = c.x.data();
    void* dy = c.dy.data();
    void* out = c.y.data();
    void* params = c.dg.data();
    void* params2 = c.db.data();
    struct Case {
      const char* function;
      const char* argument;
      std::function<bn_status()> call;
    };
    const std::vector<Case> cases = {
        {"bn_set_training", "layer", [&] { return bn_set_training(nullptr, 1); }},
        {"bn_set_trainable", "layer", [&] { return bn_set_trainable(nullptr, 1); }},
        {"bn_set_momentum", "layer", [&] { return bn_set_momentum(nullptr, 0.5); }},
        {"bn_set_renorm_clipping", "layer", [&] { return bn_set_renorm_clipping(nullptr, kInf, 0.0, kInf); }},
        {"bn_set_renorm_momentum", "layer", [&] { return bn_set_renorm_momentum(nullptr, 0.5); }},
        {"bn_set_mode", "layer", [&] { return bn_set_mode(nullptr, 0); }},
        {"bn_get_mode", "layer", [&] { return bn_get_mode(nullptr, &mode); }},
        {"bn_get_mode", "flags", [&] { return bn_get_mode(p.get(), nullptr); }},
        {"bn_set_num_threads", "layer", [&] { return bn_set_num_threads(nullptr, 1); }},
        {"bn_get_fused", "layer", [&] { return bn_get_fused(nullptr, &fused); }},
        {"bn_get_fused", "fused_out", [&] { return bn_get_fused(p.get(), nullptr); }},
        {"bn_forward", "layer", [&] { return bn_forward(nullptr, s, 2, x, out); }},
        {"bn_forward", "shape", [&] { return bn_forward(p.get(), nullptr, 2, x, out); }},
        {"bn_forward", "x", [&] { return bn_forward(p.get(), s, 2, nullptr, out); }},
        {"bn_forward", "y", [&] { return bn_forward(p.get(), s, 2, x, nullptr); }},
        {"bn_forward_residual", "layer", [&] { return bn_forward_residual(nullptr, s, 2, x, x, out); }},
        {"bn_forward_residual", "shape", [&] { return bn_forward_residual(p.get(), nullptr, 2, x, x, out); }},
        {"bn_forward_residual", "x", [&] { return bn_forward_residual(p.get(), s, 2, nullptr, x, out); }},
        {"bn_forward_residual", "residual", [&] { return bn_forward_residual(p.get(), s, 2, x, nullptr, out); }},
        {"bn_forward_residual", "y", [&] { return bn_forward_residual(p.get(), s, 2, x, x, nullptr); }},
        {"bn_backward", "layer", [&] { return bn_backward(nullptr, s, 2, x, dy, out, params, params2); }},
        {"bn_backward", "shape", [&] { return bn_backward(p.get(), nullptr, 2, x, dy, out, params, params2); }},
        {"bn_backward", "x", [&] { return bn_backward(p.get(), s, 2, nullptr, dy, out, params, params2); }},
        {"bn_backward", "dy", [&] { return bn_backward(p.get(), s, 2, x, nullptr, out, params, params2); }},
        {"bn_backward_residual", "layer",
         [&] { return bn_backward_residual(nullptr, s, 2, x, x, dy, out, nullptr, params, params2); }},
        {"bn_backward_residual", "shape",
         [&] { return bn_backward_residual(p.get(), nullptr, 2, x, x, dy, out, nullptr, params, params2); }},
        {"bn_backward_residual", "x",
         [&] { return bn_backward_residual(p.get(), s, 2, nullptr, x, dy, out, nullptr, params, params2); }},
        {"bn_backward_residual", "y",
         [&] { return bn_backward_residual(p.get(), s, 2, x, nullptr, dy, out, nullptr, params, params2); }},
        {"bn_backward_residual", "dy",
         [&] { return bn_backward_residual(p.get(), s, 2, x, x, nullptr, out, nullptr, params, params2); }},
        {"bn_get_param", "layer", [&] { return bn_get_param(nullptr, BN_PARAM_GAMMA, params, 4); }},
        {"bn_get_param", "out", [&] { return bn_get_param(p.get(), BN_PARAM_GAMMA, nullptr, 4); }},
        {"bn_set_param", "layer", [&] { return bn_set_param(nullptr, BN_PARAM_GAMMA, params, 4); }},
        {"bn_set_param", "values", [&] { return bn_set_param(p.get(), BN_PARAM_GAMMA, nullptr, 4); }},
        {"bn_fold", "layer", [&] { return bn_fold(nullptr, params, params2, 4); }},
        {"bn_fold", "scale", [&] { return bn_fold(p.get(), nullptr, params2, 4); }},
        {"bn_fold", "shift", [&] { return bn_fold(p.get(), params, nullptr, 4); }},
        {"bn_fold_into", "layer", [&] { return bn_fold_into(nullptr, out, 2, nullptr, params, 4); }},
        {"bn_fold_into", "weights", [&] { return bn_fold_into(p.get(), nullptr, 2, nullptr, params, 4); }},
        {"bn_fold_into", "bias_out", [&] { return bn_fold_into(p.get(), out, 2, params2, nullptr, 4); }},
        {"bn_regularization_loss", "layer", [&] { return bn_regularization_loss(nullptr, &loss); }},
        {"bn_regularization_loss", "loss_out", [&] { return bn_regularization_loss(p.get(), nullptr); }},
        {"bn_apply_constraints", "layer", [&] { return bn_apply_constraints(nullptr); }},
    };
    for (const Case& k : cases) {
      CAPTURE(k.function, k.argument);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {k.function, k.argument}, k.call);
      CHECK(c.outputs_untouched());
    }
    CHECK(mode == -1);
    CHECK(fused == -1);
    CHECK(loss == -1);
  }
  // The config functions not covered by test_bad_input_config.cpp's table.
  poison_last_error();
  check_status(bn_config_set_relu(nullptr, 1), BN_ERR_INVALID_ARGUMENT, {"bn_config_set_relu", "cfg"});
}

TEST_CASE("ranks 0, negative and above 8 are BN_ERR_SHAPE in every call that takes a shape",
          "[capi][bad_input][hostile]") {
  const std::vector<int64_t> nine(9, 1);
  for (auto [dtype, training] : kinds()) {
    CAPTURE(dtype, training);
    const Probe p(dtype, {6, 4}, training);
    for (int32_t ndim : {0, -1, 9, 64, kMin32, kMax32}) {
      CAPTURE(ndim);
      expect_all_refuse(p, nine, ndim, BN_ERR_SHAPE, {"ndim"});
    }
  }
  Config cfg = make_config();
  for (int32_t ndim : {0, -1, 9, kMin32, kMax32}) {
    CAPTURE(ndim);
    bn_layer* out = nullptr;
    poison_last_error();
    check_status(bn_create(cfg.get(), nine.data(), ndim, &out), BN_ERR_SHAPE, {"bn_create", "ndim"});
    CHECK(out == nullptr);
  }
}

TEST_CASE("a negative size in any position is BN_ERR_SHAPE, at create and in every call",
          "[capi][bad_input][hostile]") {
  for (auto [dtype, training] : kinds()) {
    CAPTURE(dtype, training);
    const Probe p = rank4(dtype, training);
    for (int32_t d = 0; d < 4; ++d) {
      for (int64_t bad : {int64_t{-1}, kMin64}) {
        CAPTURE(d, bad);
        std::vector<int64_t> shape = p.shape;
        shape[static_cast<size_t>(d)] = bad;
        const std::string arg = "shape[" + std::to_string(d) + "]";
        expect_all_refuse(p, shape, 4, BN_ERR_SHAPE, {arg.c_str()});
      }
    }
  }
  Config cfg = make_config();
  const int32_t axis[] = {1};
  REQUIRE(bn_config_set_axes(cfg.get(), axis, 1) == BN_OK);
  for (int32_t d = 0; d < 4; ++d) {
    for (int64_t bad : {int64_t{-1}, kMin64}) {
      CAPTURE(d, bad);
      int64_t shape[] = {2, 3, 2, 2};
      shape[d] = bad;
      bn_layer* out = nullptr;
      poison_last_error();
      const std::string arg = "input_shape[" + std::to_string(d) + "]";
      check_status(bn_create(cfg.get(), shape, 4, &out), BN_ERR_SHAPE, {"bn_create", arg.c_str()});
      CHECK(out == nullptr);
    }
  }
}

TEST_CASE("products of sizes beyond int64 or beyond 2^63-1 bytes are BN_ERR_SHAPE", "[capi][bad_input][hostile]") {
  const int64_t k31 = int64_t{1} << 31, k32 = int64_t{1} << 32;
  for (auto [dtype, training] : kinds()) {
    CAPTURE(dtype, training);
    const Probe p = rank4(dtype, training);
    const int64_t esize = dtype == BN_F64 ? 8 : (dtype == BN_F32 ? 4 : 2);
    // Overflowing int64: spread over the reduced positions, in every order, with and
    // without a zero size (an empty tensor whose other sizes still multiply past 2^63).
    const std::vector<std::vector<int64_t>> overflow = {
        {kMax64, 3, 2, 2},         {2, 3, kMax64, 2},      {2, 3, 2, kMax64},     {k32, 3, k32, 1},
        {1, 3, k31, k32},          {3037000500, 3, 3037000500, 1},                {kMax64, 3, kMax64, kMax64},
        {0, 3, kMax64, kMax64},    {kMax64, 3, 0, kMax64}, {k32, 3, k32, 0}};
    for (const auto& shape : overflow) {
      CAPTURE(shape);
      expect_all_refuse(p, shape, 4, BN_ERR_SHAPE, {"shape"});
    }
    // Fitting int64 but not the address space: elements * element size > 2^63-1 bytes. On a
    // 32-bit-style count of bytes (size_t) the same product would wrap; no buffer can hold it.
    const int64_t elements_limit = kMax64 / esize;  // the largest count whose bytes fit
    const int64_t rows = elements_limit / 3 + 1;    // rows * 3 elements: just past it
    expect_all_refuse(p, {rows, 3, 1, 1}, 4, BN_ERR_SHAPE, {"shape", "bytes"});
    expect_all_refuse(p, {1, 3, rows, 1}, 4, BN_ERR_SHAPE, {"shape", "bytes"});
  }
  // bn_create: a shape of more than 2^63-1 elements, even though only its kept sizes are kept.
  Config cfg = make_config();
  for (const std::vector<int64_t>& shape :
       {std::vector<int64_t>{kMax64, 2}, std::vector<int64_t>{k32, k32, 4}, std::vector<int64_t>{0, kMax64, 2, 4}}) {
    CAPTURE(shape);
    bn_layer* out = nullptr;
    poison_last_error();
    check_status(bn_create(cfg.get(), shape.data(), static_cast<int32_t>(shape.size()), &out), BN_ERR_SHAPE,
                 {"bn_create", "shape"});
    CHECK(out == nullptr);
  }
  // More than 2^31-1 features: refused before anything is allocated.
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{2, k31}, std::vector<int64_t>{2, k32 + 1}}) {
    CAPTURE(shape);
    bn_layer* out = nullptr;
    poison_last_error();
    check_status(bn_create(cfg.get(), shape.data(), 2, &out), BN_ERR_SHAPE, {"bn_create", "features"});
    CHECK(out == nullptr);
  }
}

TEST_CASE("a zero size: refused on a normalized axis, an empty batch elsewhere", "[capi][bad_input][hostile]") {
  // bn_create: a normalized axis of size 0 has no features; a reduced one may be 0.
  Config cfg = make_config();
  const int32_t axis[] = {1};
  REQUIRE(bn_config_set_axes(cfg.get(), axis, 1) == BN_OK);
  for (int32_t d = 0; d < 4; ++d) {
    CAPTURE(d);
    int64_t shape[] = {2, 3, 2, 2};
    shape[d] = 0;
    bn_layer* out = nullptr;
    poison_last_error();
    const bn_status s = bn_create(cfg.get(), shape, 4, &out);
    if (d == 1) {
      check_status(s, BN_ERR_SHAPE, {"bn_create", "input_shape[1]"});
      CHECK(out == nullptr);
    } else {
      CHECK(s == BN_OK);
      CHECK(bn_num_features(out) == 3);
      bn_destroy(out);
    }
  }
  // In a call: the normalized axis is refused as any other size that does not fit.
  for (auto [dtype, training] : kinds()) {
    CAPTURE(dtype, training);
    const Probe p = rank4(dtype, training);
    expect_all_refuse(p, {2, 0, 2, 2}, 4, BN_ERR_SHAPE, {"shape[1]"});
  }
}

TEST_CASE("an empty batch normalizes nothing, leaves every statistic alone and has a zero gradient",
          "[capi][bad_input][hostile]") {
  // Defined behaviour (docs/errors.md): a call whose shape has a 0 on a reduced axis succeeds,
  // writes no element, does not update the moving (or renorm) statistics, does not count as a
  // step of the cumulative average, and becomes the saved forward: its backward succeeds with
  // dgamma = dbeta = 0 (sums over nothing).
  for (auto [dtype, training] : kinds()) {
    for (int32_t d : {0, 2, 3}) {
      CAPTURE(dtype, training, d);
      Probe p = rank4(dtype, training);
      std::vector<int64_t> shape = p.shape;
      shape[static_cast<size_t>(d)] = 0;
      const Snapshot before = snapshot(p);
      Calls c(p, 1);
      REQUIRE(bn_forward(p.get(), shape.data(), 4, c.x.data(), c.y.data()) == BN_OK);
      REQUIRE(bn_forward_residual(p.get(), shape.data(), 4, c.x.data(), c.res.data(), c.y.data()) == BN_OK);
      CHECK(c.outputs_untouched());
      // The parameters and statistics are as they were (the first 9 entries of the snapshot).
      p.forwarded = false;  // the saved forward is now the empty one
      const Snapshot after = snapshot(p);
      for (size_t i = 0; i < 9; ++i) {
        CAPTURE(i);
        CHECK(after.status[i] == before.status[i]);
        CHECK(after.bytes[i] == before.bytes[i]);
      }
      REQUIRE(bn_backward_residual(p.get(), shape.data(), 4, c.x.data(), c.y.data(), c.dy.data(), c.dx.data(),
                                   c.dres.data(), c.dg.data(), c.db.data()) == BN_OK);
      Tensor poisoned_dx = c.dx;
      poisoned_dx.poison();
      CHECK(c.dx.bytes == poisoned_dx.bytes);
      for (size_t f = 0; f < 3; ++f) {
        CHECK(c.dg.get(f) == 0.0);
        CHECK(c.db.get(f) == 0.0);
      }
      // The previous forward's shape is no longer the saved one.
      Calls old(p, 24);
      CHECK(bn_backward(p.get(), p.shape.data(), 4, old.x.data(), old.dy.data(), old.dx.data(), nullptr, nullptr) ==
            BN_ERR_STATE);
    }
  }
  // Cumulative average: an empty batch is not a step (the next real batch is the first).
  Config cfg = make_config();
  REQUIRE(bn_config_set_cumulative_average(cfg.get(), 1) == BN_OK);
  const std::vector<int64_t> shape = {6, 4}, empty = {0, 4};
  Layer a = make_layer(cfg.get(), shape), b = make_layer(cfg.get(), shape);
  Tensor x(BN_F32, 24), y(BN_F32, 24);
  x.fill(9);
  for (bn_layer* l : {a.get(), b.get()}) REQUIRE(bn_set_training(l, 1) == BN_OK);
  REQUIRE(bn_forward(b.get(), empty.data(), 2, x.data(), y.data()) == BN_OK);
  REQUIRE(bn_forward(a.get(), shape.data(), 2, x.data(), y.data()) == BN_OK);
  REQUIRE(bn_forward(b.get(), shape.data(), 2, x.data(), y.data()) == BN_OK);
  Tensor ma(BN_F32, 4), mb(BN_F32, 4);
  REQUIRE(bn_get_param(a.get(), BN_PARAM_MOVING_MEAN, ma.data(), 4) == BN_OK);
  REQUIRE(bn_get_param(b.get(), BN_PARAM_MOVING_MEAN, mb.data(), 4) == BN_OK);
  CHECK(ma.bytes == mb.bytes);
}

TEST_CASE("feature sizes that differ from the layer's are BN_ERR_SHAPE on every normalized axis",
          "[capi][bad_input][hostile]") {
  Config cfg = make_config();
  const int32_t axes[] = {1, 3};
  REQUIRE(bn_config_set_axes(cfg.get(), axes, 2) == BN_OK);
  const Probe p(BN_F32, {2, 3, 2, 5}, true, true, cfg.get());
  REQUIRE(p.features() == 15);
  for (const auto& [shape, arg] : std::vector<std::pair<std::vector<int64_t>, const char*>>{
           {{2, 4, 2, 5}, "shape[1]"}, {{2, 2, 2, 5}, "shape[1]"}, {{2, 3, 2, 4}, "shape[3]"},
           {{2, 3, 2, 15}, "shape[3]"}, {{2, 15, 2, 1}, "shape[1]"}, {{2, 5, 2, 3}, "shape[1]"}}) {
    CAPTURE(shape);
    expect_all_refuse(p, shape, 4, BN_ERR_SHAPE, {arg});
  }
}

TEST_CASE("unknown values of every enumeration and flag are refused", "[capi][bad_input][hostile]") {
  // Config setters (the config is checked unchanged by test_bad_input_config.cpp's twin test).
  Config cfg = make_config();
  struct EnumCase {
    const char* function;
    const char* argument;
    std::function<bn_status(int32_t)> set;
    int32_t first_unknown;  // one past the last pinned value
  };
  const std::vector<EnumCase> enums = {
      {"bn_config_set_dtype", "dtype", [&](int32_t v) { return bn_config_set_dtype(cfg.get(), v); }, 4},
      {"bn_config_set_fused", "fused", [&](int32_t v) { return bn_config_set_fused(cfg.get(), v); }, 3},
      {"bn_config_set_keras_rules", "rules", [&](int32_t v) { return bn_config_set_keras_rules(cfg.get(), v); }, 2},
      {"bn_config_set_moving_variance", "convention",
       [&](int32_t v) { return bn_config_set_moving_variance(cfg.get(), v); }, 3},
      {"bn_config_set_single_value_policy", "policy",
       [&](int32_t v) { return bn_config_set_single_value_policy(cfg.get(), v); }, 2},
      {"bn_config_set_initializer", "which",
       [&](int32_t v) { return bn_config_set_initializer(cfg.get(), v, BN_INITIALIZER_ONES, 0, 0, 0); }, 9},
      {"bn_config_set_initializer", "kind",
       [&](int32_t v) { return bn_config_set_initializer(cfg.get(), BN_PARAM_GAMMA, v, 0, 1, 0); }, 6},
      {"bn_config_set_regularizer", "which",
       [&](int32_t v) { return bn_config_set_regularizer(cfg.get(), v, 0.1, 0.1); }, 2},
      {"bn_config_set_constraint", "which",
       [&](int32_t v) {
         return bn_config_set_constraint(cfg.get(), v, BN_CONSTRAINT_NON_NEG, 0, 0, 0, nullptr, 0);
       },
       2},
      {"bn_config_set_constraint", "kind",
       [&](int32_t v) { return bn_config_set_constraint(cfg.get(), BN_PARAM_GAMMA, v, 0, 0, 0, nullptr, 0); }, 5},
  };
  for (const EnumCase& e : enums) {
    for (int32_t v : {e.first_unknown, e.first_unknown + 1, -1, kMin32, kMax32}) {
      CAPTURE(e.function, e.argument, v);
      poison_last_error();
      check_status(e.set(v), BN_ERR_INVALID_ARGUMENT, {e.function, e.argument});
    }
  }
  for (int v : {2, -1, kMin32, kMax32}) {
    CAPTURE(v);
    poison_last_error();
    check_status(bn_config_set_relu(cfg.get(), v), BN_ERR_INVALID_ARGUMENT, {"bn_config_set_relu", "enabled"});
  }
  // Layer calls, with the snapshot.
  for (auto [dtype, training] : kinds()) {
    CAPTURE(dtype, training);
    const Probe p(dtype, {6, 4}, training);
    Tensor v(param_dtype(dtype), 4);
    for (size_t i = 0; i < 4; ++i) v.set(i, 1.0);
    for (int32_t bad : {9, 10, -1, kMin32, kMax32}) {
      CAPTURE(bad);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_get_param", "which"},
                     [&] { return bn_get_param(p.get(), bad, v.data(), 4); });
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_param", "which"},
                     [&] { return bn_set_param(p.get(), bad, v.data(), 4); });
    }
    for (int32_t bad : {4097, -1, kMin32, kMax32}) {
      CAPTURE(bad);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_num_threads", "max_threads"},
                     [&] { return bn_set_num_threads(p.get(), bad); });
    }
    for (bn_mode bad : {8, 15, -1, kMin32, kMax32}) {
      CAPTURE(bad);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_mode", "flags"}, [&] { return bn_set_mode(p.get(), bad); });
    }
    for (int bad : {2, -1, kMin32, kMax32}) {
      CAPTURE(bad);
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_training", "training"},
                     [&] { return bn_set_training(p.get(), bad); });
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_set_trainable", "trainable"},
                     [&] { return bn_set_trainable(p.get(), bad); });
    }
  }
}

TEST_CASE("renorm settings out of range on a live layer are refused and change nothing",
          "[capi][bad_input][hostile]") {
  // Twin renorm layers with one history; b also receives every refused call. Both then train
  // a step: any change to the clipping or the momenta would show in the outputs or statistics.
  Config cfg = make_config();
  REQUIRE(bn_config_set_renorm(cfg.get(), 1, 3.0, 1.0 / 3.0, 5.0, 0.9) == BN_OK);
  const Probe a(BN_F32, {6, 4}, true, true, cfg.get());
  const Probe b(BN_F32, {6, 4}, true, true, cfg.get());
  struct Bad {
    double rmax, rmin, dmax;
    const char* arg;
  };
  for (const Bad& c : {Bad{1.0, 2.0, 5.0, "rmax"}, Bad{3.0, -1.0, 5.0, "rmin"}, Bad{kInf, kInf, 5.0, "rmin"},
                       Bad{3.0, 0.5, -1.0, "dmax"}, Bad{kNaN, 0.5, 5.0, "rmax"}, Bad{3.0, kNaN, 5.0, "rmin"},
                       Bad{3.0, 0.5, kNaN, "dmax"}, Bad{3.0, 0.5, -kInf, "dmax"}}) {
    CAPTURE(c.rmax, c.rmin, c.dmax);
    expect_failure(b, BN_ERR_INVALID_ARGUMENT, {"bn_set_renorm_clipping", c.arg},
                   [&] { return bn_set_renorm_clipping(b.get(), c.rmax, c.rmin, c.dmax); });
  }
  for (double m : {-0.5, 1.5, kNaN, kInf, -kInf}) {
    CAPTURE(m);
    expect_failure(b, BN_ERR_INVALID_ARGUMENT, {"bn_set_renorm_momentum", "renorm_momentum"},
                   [&] { return bn_set_renorm_momentum(b.get(), m); });
    expect_failure(b, BN_ERR_INVALID_ARGUMENT, {"bn_set_momentum", "momentum"},
                   [&] { return bn_set_momentum(b.get(), m); });
  }
  CHECK(snapshot(a) == snapshot(b));
  Tensor ya(BN_F32, 24), yb(BN_F32, 24), x(BN_F32, 24);
  x.fill(77);
  for (int step = 0; step < 3; ++step) {
    REQUIRE(bn_forward(a.get(), a.shape.data(), 2, x.data(), ya.data()) == BN_OK);
    REQUIRE(bn_forward(b.get(), b.shape.data(), 2, x.data(), yb.data()) == BN_OK);
    CHECK(ya.bytes == yb.bytes);
  }
  CHECK(snapshot(a) == snapshot(b));
  // On a layer without renorm the same calls are BN_ERR_STATE, and change nothing either.
  const Probe plain(BN_F32, {6, 4}, true);
  expect_failure(plain, BN_ERR_STATE, {"bn_set_renorm_clipping"},
                 [&] { return bn_set_renorm_clipping(plain.get(), 3.0, 0.5, 5.0); });
  expect_failure(plain, BN_ERR_STATE, {"bn_set_renorm_momentum"},
                 [&] { return bn_set_renorm_momentum(plain.get(), 0.5); });
}

TEST_CASE("a batch the virtual batch size does not divide is BN_ERR_SHAPE and changes nothing",
          "[capi][bad_input][hostile]") {
  for (bn_dtype dtype : {BN_F32, BN_F64, BN_BF16}) {
    CAPTURE(dtype);
    Config cfg = make_config();
    REQUIRE(bn_config_set_dtype(cfg.get(), dtype) == BN_OK);
    REQUIRE(bn_config_set_virtual_batch_size(cfg.get(), 4) == BN_OK);
    const Probe p(dtype, {8, 3}, true, true, cfg.get());
    for (int64_t batch : {6, 2, 9, 1}) {
      CAPTURE(batch);
      const std::vector<int64_t> shape = {batch, 3};
      for (const char* name : {"bn_forward", "bn_forward_residual"}) {
        CAPTURE(name);
        Calls c(p, static_cast<size_t>(batch * 3));
        const bool residual = std::string(name) == "bn_forward_residual";
        expect_failure(p, BN_ERR_SHAPE, {name, "virtual_batch_size"}, [&] {
          return residual ? bn_forward_residual(p.get(), shape.data(), 2, c.x.data(), c.res.data(), c.y.data())
                          : bn_forward(p.get(), shape.data(), 2, c.x.data(), c.y.data());
        });
        CHECK(c.outputs_untouched());
      }
    }
    // An empty batch is divisible: it succeeds and changes no statistic.
    Calls c(p, 1);
    const std::vector<int64_t> empty = {0, 3};
    CHECK(bn_forward(p.get(), empty.data(), 2, c.x.data(), c.y.data()) == BN_OK);
  }
}

TEST_CASE("counts that are not the feature count are BN_ERR_SHAPE in every call that takes one",
          "[capi][bad_input][hostile]") {
  for (auto [dtype, training] : kinds()) {
    CAPTURE(dtype, training);
    const Probe p(dtype, {6, 4}, training);
    Tensor a(param_dtype(dtype), 8), b(param_dtype(dtype), 8), w(param_dtype(dtype), 64);
    for (size_t i = 0; i < 8; ++i) a.set(i, 1.0);
    w.fill(4);
    for (int64_t count : {int64_t{0}, int64_t{3}, int64_t{5}, int64_t{-1}, kMax64, kMin64}) {
      CAPTURE(count);
      const Tensor w0 = w;
      b.poison();
      const Bytes pristine = b.bytes;
      expect_failure(p, BN_ERR_SHAPE, {"bn_get_param", "count"},
                     [&] { return bn_get_param(p.get(), BN_PARAM_GAMMA, b.data(), count); });
      expect_failure(p, BN_ERR_SHAPE, {"bn_set_param", "count"},
                     [&] { return bn_set_param(p.get(), BN_PARAM_BETA, a.data(), count); });
      expect_failure(p, BN_ERR_SHAPE, {"bn_fold", "count"},
                     [&] { return bn_fold(p.get(), b.data(), b.data(), count); });
      expect_failure(p, BN_ERR_SHAPE, {"bn_fold_into", "count"},
                     [&] { return bn_fold_into(p.get(), w.data(), 2, a.data(), b.data(), count); });
      CHECK(b.bytes == pristine);
      CHECK(w.bytes == w0.bytes);
    }
    for (int64_t per : {int64_t{0}, int64_t{-1}, kMin64}) {
      CAPTURE(per);
      const Tensor w0 = w;
      expect_failure(p, BN_ERR_INVALID_ARGUMENT, {"bn_fold_into", "weights_per_feature"},
                     [&] { return bn_fold_into(p.get(), w.data(), per, nullptr, b.data(), 4); });
      CHECK(w.bytes == w0.bytes);
    }
  }
}

TEST_CASE("ghost batches on a rank-8 input are BN_ERR_UNSUPPORTED at create", "[capi][bad_input][hostile]") {
  // The virtual reshape adds a dimension, and 8 is the largest rank.
  Config cfg = make_config();
  REQUIRE(bn_config_set_virtual_batch_size(cfg.get(), 2) == BN_OK);
  const std::vector<int64_t> rank8 = {4, 1, 1, 1, 1, 1, 1, 3};
  bn_layer* const sentinel = reinterpret_cast<bn_layer*>(static_cast<uintptr_t>(0x5a5a5a50));
  bn_layer* out = sentinel;
  poison_last_error();
  check_status(bn_create(cfg.get(), rank8.data(), 8, &out), BN_ERR_UNSUPPORTED, {"bn_create", "virtual_batch_size"});
  CHECK(out == sentinel);
  // Rank 7 is served.
  const std::vector<int64_t> rank7 = {4, 1, 1, 1, 1, 1, 3};
  Layer layer = make_layer(cfg.get(), rank7);
  CHECK(bn_num_features(layer.get()) == 3);
}
