// The C++ wrapper compiled with -fno-exceptions (and -fno-rtti): every call returns a
// batchnorm::Status. Results are compared bitwise with the same C calls on a twin layer; the
// error paths check the status, the message and that nothing changed. A plain main: exit
// status 1 if any check failed.
#include <batchnorm/batchnorm.hpp>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "cpp_support.hpp"

#ifdef __cpp_exceptions
#error "this test must be compiled with -fno-exceptions"
#endif
static_assert(BATCHNORM_EXCEPTIONS == 0, "no exceptions: status mode");
static_assert(std::is_same<batchnorm::Result, batchnorm::Status>::value, "calls return Status");

namespace {

using namespace cpp_test;

int g_failures = 0;

void check(bool ok, const char* what, int line, const std::string& detail = "") {
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "noexcept_main.cpp:%d: FAILED: %s %s\n", line, what, detail.c_str());
  }
}
#define CHECK(cond) check((cond), #cond, __LINE__)
#define CHECK_OK(call)                                                       \
  do {                                                                       \
    const batchnorm::Status check_ok_status = (call);                        \
    check(check_ok_status.ok(), #call, __LINE__, check_ok_status.message()); \
  } while (0)

void forward_backward_match_c() {
  const std::vector<int64_t> shape{5, 2, 3};
  const std::size_t n = product(shape), c = 3;
  batchnorm::Config cfg;
  cfg.set_dtype(BN_F64).set_momentum(0.75).set_epsilon(1e-5);
  CHECK_OK(cfg.status());
  batchnorm::Layer layer;
  CHECK_OK(batchnorm::Layer::create(cfg, shape, layer));
  if (!layer) return;
  RawConfig raw_cfg = raw_config();
  bn_config_set_dtype(raw_cfg.get(), BN_F64);
  bn_config_set_momentum(raw_cfg.get(), 0.75);
  bn_config_set_epsilon(raw_cfg.get(), 1e-5);
  RawLayer raw = raw_layer(raw_cfg.get(), shape);
  CHECK(raw != nullptr);
  if (!raw) return;

  CHECK_OK(layer.set_training(true));
  CHECK(bn_set_training(raw.get(), 1) == BN_OK);
  for (uint64_t step = 0; step < 2; ++step) {
    const std::vector<double> x = seeded<double>(n, 100 + step, 2.0), dy = seeded<double>(n, 200 + step);
    std::vector<double> y(n), dx(n), dg(c), db(c), ry(n), rdx(n), rdg(c), rdb(c);
    if (step == 0) {
      CHECK_OK(layer.forward(shape, x.data(), y.data()));
      CHECK_OK(layer.backward(shape, x.data(), dy.data(), dx.data(), dg.data(), db.data()));
    } else {
      CHECK_OK(layer.forward({x.data(), shape}, {y.data(), shape}));
      CHECK_OK(layer.backward({x.data(), shape}, {dy.data(), shape}, {dx.data(), shape}, dg, db));
    }
    CHECK(bn_forward(raw.get(), shape.data(), 3, x.data(), ry.data()) == BN_OK);
    CHECK(bn_backward(raw.get(), shape.data(), 3, x.data(), dy.data(), rdx.data(), rdg.data(), rdb.data()) == BN_OK);
    CHECK(same_bits(y, ry));
    CHECK(same_bits(dx, rdx));
    CHECK(same_bits(dg, rdg));
    CHECK(same_bits(db, rdb));
  }
  std::vector<double> mm;
  CHECK_OK(layer.get_param(BN_PARAM_MOVING_MEAN, mm));
  CHECK(same_bits(mm, raw_param<double>(raw.get(), BN_PARAM_MOVING_MEAN)));

  bool fused = true;
  int raw_fused = -1;
  CHECK_OK(layer.get_fused(fused));
  CHECK(bn_get_fused(raw.get(), &raw_fused) == BN_OK);
  CHECK(fused == (raw_fused != 0));
  double loss = -1.0;
  CHECK_OK(layer.regularization_loss(loss));
  CHECK(loss == 0.0);  // no regularizer configured

  // Error path: a shape that does not fit -> the C API's status and message, state unchanged.
  std::vector<double> x(10), y(10);
  const batchnorm::Status st = layer.forward({5, 2}, x.data(), y.data());
  CHECK(!st);
  CHECK(!st.ok());
  CHECK(st.status() == BN_ERR_SHAPE);
  CHECK(std::string(st.name()) == "BN_ERR_SHAPE");
  CHECK(contains(st.message(), "bn_forward"));
  CHECK(st.message() == bn_last_error());
  std::vector<double> mm_after;
  CHECK_OK(layer.get_param(BN_PARAM_MOVING_MEAN, mm_after));
  CHECK(same_bits(mm_after, mm));

  // The wrong element type: refused by the wrapper, no C call made.
  mark_last_error();
  std::vector<float> xf(n), yf(n);
  const batchnorm::Status wrong = layer.forward(shape, xf.data(), yf.data());
  CHECK(wrong.status() == BN_ERR_INVALID_ARGUMENT);
  CHECK(contains(wrong.message(), "batchnorm::Layer::forward: float elements but the layer's dtype is BN_F64"));
  CHECK(contains(bn_last_error(), "bn_num_features"));

  // A span of the wrong length for dgamma.
  std::vector<double> dg_short(2), dx(n);
  const std::vector<double> xs = seeded<double>(n, 1), dys = seeded<double>(n, 2);
  std::vector<double> ys(n);
  CHECK_OK(layer.forward(shape, xs.data(), ys.data()));
  const batchnorm::Status span_st =
      layer.backward({xs.data(), shape}, {dys.data(), shape}, {dx.data(), shape}, dg_short);
  CHECK(span_st.status() == BN_ERR_SHAPE);
  CHECK(contains(span_st.message(), "dgamma has 2 values"));
}

void config_keeps_the_first_failure() {
  batchnorm::Config cfg;
  // Both setters would fail; the second must not run, so bn_last_error() still names the first.
  cfg.set_momentum(2.0).set_epsilon(-1.0).set_dtype(BN_F64);
  CHECK(cfg.status().status() == BN_ERR_INVALID_ARGUMENT);
  CHECK(contains(cfg.status().message(), "bn_config_set_momentum"));
  CHECK(contains(bn_last_error(), "bn_config_set_momentum"));
  CHECK(cfg.dtype() == BN_F32);  // set_dtype was skipped too

  batchnorm::Layer layer;
  const batchnorm::Status st = batchnorm::Layer::create(cfg, {2, 2}, layer);
  CHECK(st.status() == BN_ERR_INVALID_ARGUMENT);
  CHECK(contains(st.message(), "bn_config_set_momentum"));
  CHECK(!layer);  // unchanged on failure

  // bn_create's own failure.
  batchnorm::Config good;
  const batchnorm::Status bad_shape = batchnorm::Layer::create(good, {0}, layer);
  CHECK(!bad_shape);
  CHECK(contains(bad_shape.message(), "bn_create"));
  CHECK(!layer);
}

void moves_and_empty_layers() {
  batchnorm::Config cfg;
  batchnorm::Layer a;
  CHECK_OK(batchnorm::Layer::create(cfg, {3, 4}, a));
  bn_layer* handle = a.get();
  batchnorm::Layer b(std::move(a));
  CHECK(b.get() == handle);
  CHECK(a.get() == nullptr);
  const batchnorm::Status st = a.set_training(true);
  CHECK(st.status() == BN_ERR_INVALID_ARGUMENT);
  CHECK(contains(st.message(), "bn_set_training"));
  CHECK(a.num_features() == -1);
  CHECK(b.num_features() == 4);
  batchnorm::Config moved(std::move(cfg));
  const batchnorm::Status cst = batchnorm::Layer::create(cfg, {3, 4}, a);  // moved-from config
  CHECK(cst.status() == BN_ERR_INVALID_ARGUMENT);
  CHECK(contains(cst.message(), "bn_create"));
}

// State blobs in status mode: save, load, create_from_state, and a refusal as a Status.
void state_round_trip() {
  batchnorm::Config cfg;
  cfg.set_dtype(BN_F64).set_momentum(0.5);
  batchnorm::Layer a;
  CHECK_OK(batchnorm::Layer::create(cfg, {4, 3}, a));
  CHECK_OK(a.set_training(true));
  const std::vector<double> x{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13};
  std::vector<double> y(12);
  CHECK_OK(a.forward({4, 3}, x.data(), y.data()));
  std::vector<uint8_t> blob;
  CHECK_OK(a.save(blob));
  CHECK(blob.size() == 572u + 4u * 3u * 8u);
  batchnorm::Layer b;
  CHECK_OK(batchnorm::Layer::create_from_state(blob, b));
  CHECK(b.dtype() == BN_F64);
  int64_t steps = -1;
  CHECK_OK(b.get_step_count(steps));
  CHECK(steps == 1);
  std::vector<uint8_t> again;
  CHECK_OK(b.save(again));
  CHECK(again == blob);
  std::vector<uint8_t> damaged = blob;
  damaged[100] ^= 1;
  const batchnorm::Status st = b.load(damaged);
  CHECK(st.status() == BN_ERR_CORRUPT_DATA);
  CHECK(contains(st.message(), "bn_load"));
  batchnorm::Layer c;
  CHECK(batchnorm::Layer::create_from_state(damaged, c).status() == BN_ERR_CORRUPT_DATA);
  CHECK(!c);
}

}  // namespace

int main() {
  state_round_trip();
  forward_backward_match_c();
  config_keeps_the_first_failure();
  moves_and_empty_layers();
  if (g_failures) {
    std::fprintf(stderr, "cpp.noexcept: %d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("cpp.noexcept: all checks passed\n");
  return 0;
}
