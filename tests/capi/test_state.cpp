// State blobs through the C API: bitwise round trips for every dtype and option, a loaded
// layer that goes on computing bitwise what the saved one computes, the size query, layers
// that do not fit the blob, adjustment and allreduce callbacks, the non-finite policy, the step
// counter, NULL arguments.
#include <atomic>
#include <cmath>
#include <thread>

#include "state_support.hpp"

using namespace state_test;

namespace {

// Re-saving what was loaded gives the same bytes; a layer made from the blob (B) and a
// layer of the same structure that loads it (C) then compute bitwise what the original (A)
// computes, step after step.
void check_round_trip(const Spec& s) {
  Layer a = spec_layer(s);
  give_history(a.get(), s);
  const Bytes blob = save(a.get());

  bn_layer* raw = nullptr;
  INFO(bn_last_error());
  REQUIRE(bn_create_from_state(blob.data(), static_cast<int64_t>(blob.size()), &raw) == BN_OK);
  Layer b(raw, &bn_destroy);
  CHECK(save(b.get()) == blob);

  // C starts elsewhere: other momentum, inference mode, a saved forward of its own.
  Layer c = spec_layer(s);
  REQUIRE(bn_set_momentum(c.get(), 0.125) == BN_OK);
  REQUIRE(bn_set_training(c.get(), 1) == BN_OK);
  train_step(c.get(), s, 99);
  REQUIRE(bn_load(c.get(), blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
  CHECK(save(c.get()) == blob);

  bn_dtype dtype = -1;
  REQUIRE(bn_get_dtype(b.get(), &dtype) == BN_OK);
  CHECK(dtype == s.dtype);
  CHECK(bn_num_features(b.get()) == bn_num_features(a.get()));
  int fa = -1, fb = -2;
  REQUIRE(bn_get_fused(a.get(), &fa) == BN_OK);
  REQUIRE(bn_get_fused(b.get(), &fb) == BN_OK);
  CHECK(fa == fb);
  bn_mode ma = -1, mb = -2, mc = -3;
  REQUIRE(bn_get_mode(a.get(), &ma) == BN_OK);
  REQUIRE(bn_get_mode(b.get(), &mb) == BN_OK);
  REQUIRE(bn_get_mode(c.get(), &mc) == BN_OK);
  CHECK((ma == mb && ma == mc));
  int64_t steps_a = -1, steps_b = -2;
  REQUIRE(bn_get_step_count(a.get(), &steps_a) == BN_OK);
  REQUIRE(bn_get_step_count(b.get(), &steps_b) == BN_OK);
  CHECK(steps_a == 4);
  CHECK(steps_a == steps_b);

  // A loaded layer has no saved forward and no batch statistics.
  for (bn_layer* loaded : {b.get(), c.get()}) {
    Tensor x(s.dtype, element_count(s.shape)), dx(s.dtype, element_count(s.shape));
    CHECK(bn_backward(loaded, s.shape.data(), rank(s.shape), x.data(), x.data(), dx.data(), nullptr, nullptr) ==
          BN_ERR_STATE);
    Tensor mean(param_dtype(s.dtype), bn_num_features(loaded));
    CHECK(bn_get_param(loaded, BN_PARAM_BATCH_MEAN, mean.data(), bn_num_features(loaded)) == BN_ERR_STATE);
  }

  for (uint64_t step = 10; step < 14; ++step) {
    CAPTURE(step);
    const std::vector<Bytes> ra = train_step(a.get(), s, step);
    CHECK(train_step(b.get(), s, step) == ra);
    CHECK(train_step(c.get(), s, step) == ra);
    const Bytes after = save(a.get());
    CHECK(save(b.get()) == after);
    CHECK(save(c.get()) == after);
  }
  for (bn_layer* l : {a.get(), b.get(), c.get()}) REQUIRE(bn_set_training(l, 0) == BN_OK);
  const Bytes ya = infer(a.get(), s);
  CHECK(infer(b.get(), s) == ya);
  CHECK(infer(c.get(), s) == ya);
}

}  // namespace

TEST_CASE("save, load and create from state round-trip bitwise, and the loaded layer keeps computing the same",
          "[capi][state]") {
  for (const Spec& s : specs()) {
    SECTION(s.name) {
      check_round_trip(s);
    }
  }
}

TEST_CASE("a fresh layer round-trips, and its blob has the documented size", "[capi][state]") {
  const Spec s{"f32", BN_F32, {2, 3, 4, 5}, nullptr};
  Layer a = spec_layer(s);
  const Bytes blob = save(a.get());
  // 572 bytes of header, configuration, state and checksum, then gamma, beta, moving mean and
  // moving variance as floats.
  CHECK(blob.size() == 572u + 4u * 5u * 4u);
  bn_layer* raw = nullptr;
  REQUIRE(bn_create_from_state(blob.data(), static_cast<int64_t>(blob.size()), &raw) == BN_OK);
  Layer b(raw, &bn_destroy);
  CHECK(save(b.get()) == blob);
  int64_t steps = -1;
  REQUIRE(bn_get_step_count(b.get(), &steps) == BN_OK);
  CHECK(steps == 0);
  CHECK(infer(a.get(), s) == infer(b.get(), s));
}

TEST_CASE("bn_save: size query, exact and larger buffers, too-small buffers write nothing", "[capi][state]") {
  const Spec s{"f64", BN_F64, {4, 3}, nullptr};
  Layer layer = spec_layer(s);
  int64_t size = -1;
  REQUIRE(bn_save(layer.get(), nullptr, 0, &size) == BN_OK);
  CHECK(size == 572 + 4 * 3 * 8);

  Bytes big(static_cast<size_t>(size) + 16, 0xA5);
  int64_t written = -1;
  REQUIRE(bn_save(layer.get(), big.data(), static_cast<int64_t>(big.size()), &written) == BN_OK);
  CHECK(written == size);
  for (size_t i = static_cast<size_t>(size); i < big.size(); ++i) CHECK(big[i] == 0xA5);  // past the blob: untouched
  const Bytes blob(big.begin(), big.begin() + size);
  CHECK(save(layer.get()) == blob);

  for (int64_t capacity : {int64_t{1}, size - 1, int64_t{32}}) {
    CAPTURE(capacity);
    Bytes small(static_cast<size_t>(capacity), 0xA5);
    int64_t out = -7;
    poison_last_error();
    check_status(bn_save(layer.get(), small.data(), capacity, &out), BN_ERR_INVALID_ARGUMENT,
                 {"bn_save", "capacity", std::to_string(size).c_str()});
    CHECK(out == -7);
    CHECK(small == Bytes(static_cast<size_t>(capacity), 0xA5));
  }
  int64_t out = -7;
  check_status(bn_save(layer.get(), big.data(), 0, &out), BN_ERR_INVALID_ARGUMENT, {"bn_save", "capacity"});
  check_status(bn_save(layer.get(), nullptr, 16, &out), BN_ERR_INVALID_ARGUMENT, {"bn_save", "buffer"});
  check_status(bn_save(layer.get(), big.data(), -1, &out), BN_ERR_INVALID_ARGUMENT, {"bn_save", "capacity"});
  CHECK(out == -7);
  check_status(bn_save(layer.get(), big.data(), size, nullptr), BN_ERR_INVALID_ARGUMENT, {"bn_save", "size_out"});
  check_status(bn_save(nullptr, big.data(), size, &out), BN_ERR_INVALID_ARGUMENT, {"bn_save", "layer"});
}

TEST_CASE("NULL and negative arguments of the state functions are refused", "[capi][state]") {
  const Spec s{"f32", BN_F32, {4, 3}, nullptr};
  Target t(s);
  const Bytes blob = save(t.layer.get());
  const auto n = static_cast<int64_t>(blob.size());
  const Observed before = t.observe();
  bn_layer* out = reinterpret_cast<bn_layer*>(&out);  // a value no call may write
  bn_layer* const sentinel = out;
  bn_dtype dtype = -1;
  int64_t count = -1;
  struct Case {
    const char* function;
    const char* argument;
    std::function<bn_status()> call;
  };
  const std::vector<Case> cases = {
      {"bn_load", "layer", [&] { return bn_load(nullptr, blob.data(), n); }},
      {"bn_load", "data", [&] { return bn_load(t.layer.get(), nullptr, n); }},
      {"bn_load", "size", [&] { return bn_load(t.layer.get(), blob.data(), -1); }},
      {"bn_create_from_state", "data", [&] { return bn_create_from_state(nullptr, n, &out); }},
      {"bn_create_from_state", "size", [&] { return bn_create_from_state(blob.data(), -5, &out); }},
      {"bn_create_from_state", "out", [&] { return bn_create_from_state(blob.data(), n, nullptr); }},
      {"bn_save_file", "layer", [&] { return bn_save_file(nullptr, "x"); }},
      {"bn_save_file", "path", [&] { return bn_save_file(t.layer.get(), nullptr); }},
      {"bn_load_file", "layer", [&] { return bn_load_file(nullptr, "x"); }},
      {"bn_load_file", "path", [&] { return bn_load_file(t.layer.get(), nullptr); }},
      {"bn_create_from_file", "path", [&] { return bn_create_from_file(nullptr, &out); }},
      {"bn_create_from_file", "out", [&] { return bn_create_from_file("x", nullptr); }},
      {"bn_get_dtype", "layer", [&] { return bn_get_dtype(nullptr, &dtype); }},
      {"bn_get_dtype", "dtype_out", [&] { return bn_get_dtype(t.layer.get(), nullptr); }},
      {"bn_get_step_count", "layer", [&] { return bn_get_step_count(nullptr, &count); }},
      {"bn_get_step_count", "count_out", [&] { return bn_get_step_count(t.layer.get(), nullptr); }},
      {"bn_set_step_count", "layer", [&] { return bn_set_step_count(nullptr, 3); }},
      {"bn_set_step_count", "count", [&] { return bn_set_step_count(t.layer.get(), -1); }},
  };
  for (const Case& c : cases) {
    CAPTURE(c.function, c.argument);
    poison_last_error();
    check_status(c.call(), BN_ERR_INVALID_ARGUMENT, {c.function, c.argument});
  }
  CHECK(out == sentinel);
  CHECK(dtype == -1);
  CHECK(count == -1);
  CHECK(t.observe() == before);
}

TEST_CASE("the step counter counts moving updates, can be set, and is saved", "[capi][state]") {
  const Spec s{"f32", BN_F32, {4, 3}, [](bn_config* c) { REQUIRE(bn_config_set_cumulative_average(c, 1) == BN_OK); }};
  Layer a = spec_layer(s), b = spec_layer(s);
  int64_t steps = -1;
  REQUIRE(bn_get_step_count(a.get(), &steps) == BN_OK);
  CHECK(steps == 0);
  REQUIRE(bn_set_training(a.get(), 1) == BN_OK);
  train_step(a.get(), s, 1);
  train_step(a.get(), s, 2);
  REQUIRE(bn_get_step_count(a.get(), &steps) == BN_OK);
  CHECK(steps == 2);
  // An inference forward does not count.
  REQUIRE(bn_set_training(a.get(), 0) == BN_OK);
  infer(a.get(), s);
  REQUIRE(bn_get_step_count(a.get(), &steps) == BN_OK);
  CHECK(steps == 2);
  // B gets A's parameters, statistics and count by hand: the cumulative average then
  // continues alike.
  const int64_t c = bn_num_features(a.get());
  for (bn_param which : {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE}) {
    std::vector<float> v(static_cast<size_t>(c));
    REQUIRE(bn_get_param(a.get(), which, v.data(), c) == BN_OK);
    REQUIRE(bn_set_param(b.get(), which, v.data(), c) == BN_OK);
  }
  REQUIRE(bn_set_step_count(b.get(), 2) == BN_OK);
  REQUIRE(bn_set_training(a.get(), 1) == BN_OK);
  REQUIRE(bn_set_training(b.get(), 1) == BN_OK);
  CHECK(train_step(a.get(), s, 3) == train_step(b.get(), s, 3));
  CHECK(save(a.get()) == save(b.get()));
  const Bytes blob = save(a.get());
  CHECK(get<int64_t>(blob, offset::step_count) == 3);
  // With a wrong count the next update differs (the count matters).
  REQUIRE(bn_set_step_count(b.get(), 0) == BN_OK);
  train_step(a.get(), s, 4);
  train_step(b.get(), s, 4);
  CHECK(save(a.get()) != save(b.get()));
}

// ---------------------------------------------------------------------------
// Layers that do not fit the blob.
TEST_CASE("bn_load refuses a blob of a layer of another structure and changes nothing", "[capi][state]") {
  const Spec base{"f32 (6, 4)", BN_F32, {6, 4}, nullptr};
  struct Other {
    Spec spec;
    bn_status status;
    std::vector<const char*> needles;
  };
  auto cfg = [](std::function<void(bn_config*)> f) { return f; };
  const std::vector<Other> others = {
      {{"f64", BN_F64, {6, 4}, nullptr}, BN_ERR_INVALID_ARGUMENT, {"dtype", "BN_F64", "BN_F32"}},
      {{"bf16", BN_BF16, {6, 4}, nullptr}, BN_ERR_INVALID_ARGUMENT, {"dtype", "BN_BF16"}},
      {{"rank 3", BN_F32, {6, 1, 4}, nullptr}, BN_ERR_SHAPE, {"rank"}},
      {{"other kept sizes", BN_F32, {6, 5}, nullptr}, BN_ERR_SHAPE, {"sizes"}},
      {{"other kept axis", BN_F32, {4, 4}, cfg([](bn_config* c) {
          const int32_t axes[] = {0};
          REQUIRE(bn_config_set_axes(c, axes, 1) == BN_OK);
        })},
       BN_ERR_SHAPE,
       {"dims"}},
      {{"no scale", BN_F32, {6, 4}, cfg([](bn_config* c) { REQUIRE(bn_config_set_scale(c, 0) == BN_OK); })},
       BN_ERR_INVALID_ARGUMENT,
       {"scale"}},
      {{"no center", BN_F32, {6, 4}, cfg([](bn_config* c) { REQUIRE(bn_config_set_center(c, 0) == BN_OK); })},
       BN_ERR_INVALID_ARGUMENT,
       {"center"}},
      {{"renorm", BN_F32, {6, 4}, cfg([](bn_config* c) {
          REQUIRE(bn_config_set_renorm(c, 1, 3.0, 0.3, 5.0, 0.99) == BN_OK);
        })},
       BN_ERR_INVALID_ARGUMENT,
       {"renorm"}},
      {{"ghost batches", BN_F32, {6, 4}, cfg([](bn_config* c) {
          REQUIRE(bn_config_set_virtual_batch_size(c, 3) == BN_OK);
        })},
       BN_ERR_INVALID_ARGUMENT,
       {"ghost"}},
  };
  for (const Other& o : others) {
    SECTION(o.spec.name) {
      // Each way round: the other layer's blob into the base, the base's into the other.
      Target t(base), u(o.spec);
      const Bytes into_t = save(u.layer.get()), into_u = save(t.layer.get());
      for (auto [target, blob] : {std::pair{&t, &into_t}, {&u, &into_u}}) {
        const Observed before = target->observe();
        poison_last_error();
        const bn_status st = bn_load(target->layer.get(), blob->data(), static_cast<int64_t>(blob->size()));
        check_status(st, o.status, {"bn_load"});
        for (const char* needle : o.needles) {
          INFO("the message should mention: " << needle << " (" << bn_last_error() << ")");
          CHECK(std::string(bn_last_error()).find(needle) != std::string::npos);
        }
        CHECK(target->observe() == before);
      }
    }
  }
}

TEST_CASE("a compatible layer with other settings loads the blob and takes all of them", "[capi][state]") {
  // Same structure, everything else different: the blob's settings replace the layer's.
  const Spec saved{"saved", BN_F32, {4, 2, 2, 3}, [](bn_config* c) {
                     REQUIRE(bn_config_set_momentum(c, 0.5) == BN_OK);
                     REQUIRE(bn_config_set_epsilon(c, 0.25) == BN_OK);
                     REQUIRE(bn_config_set_relu(c, 1) == BN_OK);
                     REQUIRE(bn_config_set_moving_variance(c, BN_MOVING_VARIANCE_BIASED) == BN_OK);
                   }};
  const Spec other{"other", BN_F32, {1, 2, 2, 3}, [](bn_config* c) {
                     REQUIRE(bn_config_set_fused(c, BN_FUSED_OFF) == BN_OK);
                     REQUIRE(bn_config_set_keras_rules(c, BN_KERAS_V2) == BN_OK);
                   }};
  Layer a = spec_layer(saved), b = spec_layer(other);
  give_history(a.get(), saved);
  int fa = -1, fb = -1;
  REQUIRE(bn_get_fused(a.get(), &fa) == BN_OK);
  REQUIRE(bn_get_fused(b.get(), &fb) == BN_OK);
  CHECK(fa == 1);  // rank 4, one channel axis, float32: Keras' fused path
  CHECK(fb == 0);
  const Bytes blob = save(a.get());
  REQUIRE(bn_load(b.get(), blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
  REQUIRE(bn_get_fused(b.get(), &fb) == BN_OK);
  CHECK(fb == 1);
  CHECK(save(b.get()) == blob);
  CHECK(train_step(a.get(), saved, 20) == train_step(b.get(), saved, 20));
  CHECK(save(a.get()) == save(b.get()));
}

// ---------------------------------------------------------------------------
// Adjustment callbacks cannot be saved: a loading layer keeps its own.
namespace {

struct Calls {
  int n = 0;
};
bn_status count_adjustment(void* user_data, const int64_t*, int32_t, double* scale, double*, int64_t features) {
  ++static_cast<Calls*>(user_data)->n;
  for (int64_t f = 0; f < features; ++f) scale[f] = 1.5;
  return BN_OK;
}

Spec adjusted(Calls* calls, std::vector<int64_t> shape) {
  return {"with adjustment", BN_F32, std::move(shape),
          [calls](bn_config* c) { REQUIRE(bn_config_set_adjustment(c, &count_adjustment, calls) == BN_OK); }};
}

}  // namespace

TEST_CASE("a layer with an adjustment callback keeps it through bn_load", "[capi][state]") {
  Calls calls;
  const Spec plain{"plain", BN_F32, {6, 4}, nullptr};
  const Spec with = adjusted(&calls, {6, 4});
  Layer a = spec_layer(plain), b = spec_layer(with);
  give_history(a.get(), plain);
  const Bytes blob = save(a.get());
  CHECK(get<int32_t>(blob, offset::callbacks) == 0);
  REQUIRE(bn_load(b.get(), blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
  const int before = calls.n;
  train_step(b.get(), with, 3);
  CHECK(calls.n == before + 1);
  // b's blob records its callback; a layer made from it has none but the same decisions.
  const Bytes with_blob = save(b.get());
  CHECK(get<int32_t>(with_blob, offset::callbacks) == 1);
  bn_layer* raw = nullptr;
  REQUIRE(bn_create_from_state(with_blob.data(), static_cast<int64_t>(with_blob.size()), &raw) == BN_OK);
  Layer c(raw, &bn_destroy);
  CHECK(save(c.get()) == with_blob);
  train_step(c.get(), with, 4);
  CHECK(calls.n == before + 1);
}

TEST_CASE("a blob whose fused decision an adjustment callback rules out is refused by a layer with one",
          "[capi][state]") {
  Calls calls;
  const Spec fused{"fused", BN_F32, {2, 2, 2, 3}, nullptr};
  const Spec with = adjusted(&calls, {2, 2, 2, 3});
  Layer a = spec_layer(fused);
  int f = -1;
  REQUIRE(bn_get_fused(a.get(), &f) == BN_OK);
  REQUIRE(f == 1);
  give_history(a.get(), fused);
  const Bytes blob = save(a.get());
  Target t(with);
  const Observed before = t.observe();
  poison_last_error();
  check_status(bn_load(t.layer.get(), blob.data(), static_cast<int64_t>(blob.size())), BN_ERR_INVALID_ARGUMENT,
               {"bn_load", "adjustment"});
  CHECK(t.observe() == before);
  // The saved layer of an adjusted fused-shape layer took the non-fused path, and so does a
  // layer made from its blob.
  const Bytes adjusted_blob = save(t.layer.get());
  bn_layer* raw = nullptr;
  REQUIRE(bn_create_from_state(adjusted_blob.data(), static_cast<int64_t>(adjusted_blob.size()), &raw) == BN_OK);
  Layer c(raw, &bn_destroy);
  REQUIRE(bn_get_fused(c.get(), &f) == BN_OK);
  CHECK(f == 0);
}

// ---------------------------------------------------------------------------
// The non-finite policy is part of the configuration: saved, loaded, made from.
namespace {

// A training forward of a batch with a NaN: its status, output and the blob after it.
struct NanStep {
  bn_status status;
  Bytes y, blob;
  bool operator==(const NanStep& o) const { return status == o.status && y == o.y && blob == o.blob; }
};

NanStep nan_step(bn_layer* layer, const Spec& s) {
  const int64_t n = element_count(s.shape);
  Tensor x(s.dtype, n), y(s.dtype, n);
  x.fill(31);
  x.set(1, std::nan(""));
  y.poison();
  REQUIRE(bn_set_training(layer, 1) == BN_OK);
  const bn_status st = bn_forward(layer, s.shape.data(), rank(s.shape), x.data(), y.data());
  return {st, y.bytes, save(layer)};
}

}  // namespace

TEST_CASE("the non-finite policy survives bn_load and bn_create_from_state", "[capi][state]") {
  for (bn_nonfinite_policy policy : {BN_NONFINITE_PROPAGATE, BN_NONFINITE_SKIP_UPDATE}) {
    CAPTURE(policy);
    for (bool live : {false, true}) {  // set in the configuration, or on the live layer
      CAPTURE(live);
      const Spec s{"policy", BN_F32, {6, 4}, [policy, live](bn_config* c) {
                     if (!live) REQUIRE(bn_config_set_nonfinite_policy(c, policy) == BN_OK);
                   }};
      Layer a = spec_layer(s);
      if (live) REQUIRE(bn_set_nonfinite_policy(a.get(), policy) == BN_OK);
      give_history(a.get(), s);
      const Bytes blob = save(a.get());
      CHECK(get<int32_t>(blob, offset::nonfinite_policy) == policy);
      // b has the default (REFUSE) and loads the blob; c is made from it.
      const Spec plain{"plain", BN_F32, {6, 4}, nullptr};
      Layer b = spec_layer(plain);
      REQUIRE(bn_load(b.get(), blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
      CHECK(save(b.get()) == blob);
      bn_layer* raw = nullptr;
      REQUIRE(bn_create_from_state(blob.data(), static_cast<int64_t>(blob.size()), &raw) == BN_OK);
      Layer c(raw, &bn_destroy);
      CHECK(save(c.get()) == blob);
      // A batch with a NaN: accepted by all three alike (REFUSE would be BN_ERR_NONFINITE).
      const NanStep ra = nan_step(a.get(), s);
      CHECK(ra.status == BN_OK);
      CHECK(nan_step(b.get(), s) == ra);
      CHECK(nan_step(c.get(), s) == ra);
      // SKIP_UPDATE left the moving statistics (and the step counter) as they were.
      if (policy == BN_NONFINITE_SKIP_UPDATE) {
        CHECK(get<int64_t>(ra.blob, offset::step_count) == get<int64_t>(blob, offset::step_count));
      }
    }
  }
  // And back: a REFUSE blob makes a PROPAGATE layer refuse again.
  const Spec propagate{"propagate", BN_F32, {6, 4}, [](bn_config* c) {
                         REQUIRE(bn_config_set_nonfinite_policy(c, BN_NONFINITE_PROPAGATE) == BN_OK);
                       }};
  Layer refusing = spec_layer({"plain", BN_F32, {6, 4}, nullptr});
  const Bytes blob = save(refusing.get());
  CHECK(get<int32_t>(blob, offset::nonfinite_policy) == BN_NONFINITE_REFUSE);
  Layer d = spec_layer(propagate);
  REQUIRE(bn_load(d.get(), blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
  CHECK(nan_step(d.get(), propagate).status == BN_ERR_NONFINITE);
}

// ---------------------------------------------------------------------------
// Allreduce callbacks cannot be saved either: a loading layer keeps its own, and the blob
// records whether the saved layer had one (its fused decision counted it).
namespace {

bn_status count_allreduce(void* user_data, double*, int64_t) {  // one replica: sums are its own values
  ++static_cast<Calls*>(user_data)->n;
  return BN_OK;
}

Spec synchronized(Calls* calls, std::vector<int64_t> shape) {
  return {"synchronized", BN_F32, std::move(shape), [calls](bn_config* c) {
            REQUIRE(bn_config_set_allreduce(c, &count_allreduce, calls) == BN_OK);
            REQUIRE(bn_config_set_epsilon(c, 1e-7) == BN_OK);  // below the fused path's clamp
          }};
}

int fused_of(const bn_layer* layer) {
  int f = -1;
  REQUIRE(bn_get_fused(layer, &f) == BN_OK);
  return f;
}

}  // namespace

TEST_CASE("a synchronized layer keeps synchronizing after bn_load", "[capi][state][sync]") {
  Calls calls_a, calls_b;
  const Spec sa = synchronized(&calls_a, {6, 4}), sb = synchronized(&calls_b, {6, 4});
  Layer a = spec_layer(sa), b = spec_layer(sb);
  give_history(a.get(), sa);
  const Bytes blob = save(a.get());
  CHECK(get<int32_t>(blob, offset::callbacks) == 2);
  // Its own blob, and another synchronized layer's.
  for (bn_layer* target : {a.get(), b.get()}) {
    REQUIRE(bn_load(target, blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
    CHECK(save(target) == blob);
  }
  const int before_a = calls_a.n, before_b = calls_b.n;
  for (uint64_t step = 10; step < 13; ++step) CHECK(train_step(a.get(), sa, step) == train_step(b.get(), sb, step));
  CHECK(calls_a.n == before_a + 6);  // a forward and a backward per step
  CHECK(calls_b.n == before_b + 6);
  CHECK(save(a.get()) == save(b.get()));
  // A plain layer's blob loaded by a synchronized layer: it still synchronizes.
  const Spec ps{"plain", BN_F32, {6, 4}, nullptr};
  Layer plain = spec_layer(ps);
  give_history(plain.get(), ps);  // in training mode
  const Bytes plain_blob = save(plain.get());
  CHECK(get<int32_t>(plain_blob, offset::callbacks) == 0);
  REQUIRE(bn_load(b.get(), plain_blob.data(), static_cast<int64_t>(plain_blob.size())) == BN_OK);
  CHECK(save(b.get()) == plain_blob);
  const int before = calls_b.n;
  train_step(b.get(), sb, 20);
  CHECK(calls_b.n == before + 2);
}

TEST_CASE("a synchronized float32 NHWC layer with fused AUTO round-trips with its non-fused decision",
          "[capi][state][sync]") {
  Calls calls;
  const Spec s = synchronized(&calls, {2, 2, 2, 3});
  Layer a = spec_layer(s);
  REQUIRE(fused_of(a.get()) == 0);  // AUTO with a callback: non-fused
  give_history(a.get(), s);
  REQUIRE(bn_set_training(a.get(), 0) == BN_OK);
  const Bytes blob = save(a.get()), ya = infer(a.get(), s);
  CHECK(get<int32_t>(blob, offset::fused_resolved) == 0);
  CHECK(get<int32_t>(blob, offset::callbacks) == 2);

  // Its own blob.
  REQUIRE(bn_load(a.get(), blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
  CHECK(save(a.get()) == blob);
  CHECK(infer(a.get(), s) == ya);
  // A layer made from it (no callback) and a plain layer that loads it (an inference server's:
  // fused AUTO without a callback takes the fused path) keep the non-fused decision, so the
  // epsilon below the fused clamp and the outputs stay the saved layer's, bitwise.
  bn_layer* raw = nullptr;
  REQUIRE(bn_create_from_state(blob.data(), static_cast<int64_t>(blob.size()), &raw) == BN_OK);
  Layer b(raw, &bn_destroy);
  const Spec plain{"plain", BN_F32, {2, 2, 2, 3}, nullptr};
  Layer c = spec_layer(plain);
  REQUIRE(fused_of(c.get()) == 1);
  const Bytes fused_y = infer(c.get(), plain);
  REQUIRE(bn_load(c.get(), blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
  for (bn_layer* l : {b.get(), c.get()}) {
    CHECK(fused_of(l) == 0);
    CHECK(save(l) == blob);  // parameters and statistics bitwise, the decision and its reason
    CHECK(infer(l, s) == ya);
    for (bn_param which : {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE}) {
      Tensor pa(BN_F32, 3), pl(BN_F32, 3);
      REQUIRE(bn_get_param(a.get(), which, pa.data(), 3) == BN_OK);
      REQUIRE(bn_get_param(l, which, pl.data(), 3) == BN_OK);
      CHECK(pa.bytes == pl.bytes);
    }
  }
  CHECK(ya != fused_y);  // sanity: the two paths differ here, so the decision mattered
  // They go on training as the saved layer (one replica: the global batch is the local one).
  const int before = calls.n;
  for (bn_layer* l : {a.get(), b.get(), c.get()}) REQUIRE(bn_set_training(l, 1) == BN_OK);
  for (uint64_t step = 30; step < 33; ++step) {
    const std::vector<Bytes> ra = train_step(a.get(), s, step);
    CHECK(train_step(b.get(), s, step) == ra);
    CHECK(train_step(c.get(), plain, step) == ra);
  }
  CHECK(calls.n == before + 6);  // only a synchronizes
  CHECK(save(b.get()) == save(a.get()));
  CHECK(save(c.get()) == save(a.get()));
}

TEST_CASE("a fused blob loaded by a synchronized layer keeps the fused path and synchronizes", "[capi][state][sync]") {
  Calls calls;
  const Spec plain{"plain", BN_F32, {2, 2, 2, 3}, nullptr};
  const Spec s = synchronized(&calls, {2, 2, 2, 3});
  Layer a = spec_layer(plain), b = spec_layer(s);
  REQUIRE(fused_of(a.get()) == 1);
  REQUIRE(fused_of(b.get()) == 0);
  give_history(a.get(), plain);
  const Bytes blob = save(a.get());
  REQUIRE(bn_load(b.get(), blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
  CHECK(fused_of(b.get()) == 1);
  CHECK(save(b.get()) == blob);  // the decision did not count a callback, and says so
  const int before = calls.n;
  CHECK(train_step(a.get(), plain, 40) == train_step(b.get(), s, 40));
  CHECK(calls.n == before + 2);
  CHECK(save(a.get()) == save(b.get()));
}

TEST_CASE("bn_save runs alongside inference forwards; an overlapping bn_load is refused as busy, never raced",
          "[capi][state]") {
  const Spec s{"f32 (1024, 64)", BN_F32, {1024, 64}, nullptr};
  Layer layer = spec_layer(s);
  const Bytes blob = save(layer.get());
  const Bytes y0 = infer(layer.get(), s);
  std::atomic<bool> stop{false};
  std::atomic<int> forwards{0}, busy_forwards{0}, bad_forwards{0};
  std::thread reader([&] {
    const int64_t n = element_count(s.shape);
    Tensor x(s.dtype, n), y(s.dtype, n);
    x.fill(77);
    while (!stop.load()) {
      // A forward that overlaps a bn_load is refused as busy, as the load is when it comes
      // second; one that runs gives the same bits (the blob holds the same state).
      const bn_status st = bn_forward(layer.get(), s.shape.data(), 2, x.data(), y.data());
      if (st == BN_ERR_STATE) {
        ++busy_forwards;
      } else if (st != BN_OK || y.bytes != y0) {
        ++bad_forwards;
      }
      ++forwards;
    }
  });
  int saves = 0, bad_saves = 0, refused_loads = 0, other_loads = 0;
  for (int k = 0; k < 300; ++k) {
    int64_t size = 0;
    Bytes b(blob.size());
    if (bn_save(layer.get(), b.data(), static_cast<int64_t>(b.size()), &size) != BN_OK || b != blob) ++bad_saves;
    ++saves;
    // An exclusive call overlapping a forward is refused (BN_ERR_STATE), never raced.
    const bn_status st = bn_load(layer.get(), blob.data(), static_cast<int64_t>(blob.size()));
    if (st == BN_ERR_STATE) {
      ++refused_loads;
    } else if (st != BN_OK) {
      ++other_loads;
    }
  }
  stop = true;
  reader.join();
  INFO(saves << " saves, " << forwards << " forwards (" << busy_forwards << " refused as busy), " << refused_loads
             << " loads refused as busy");
  CHECK(bad_saves == 0);
  CHECK(bad_forwards == 0);
  CHECK(other_loads == 0);
  CHECK(save(layer.get()) == blob);
}
