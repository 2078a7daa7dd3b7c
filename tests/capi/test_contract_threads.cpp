// The threading contract (API.md "Threads"): the last error is per thread; concurrent
// inference forwards on one layer are safe and bitwise stable; any other concurrent
// use is reported as BN_ERR_STATE, never raced. The races are provoked a bounded number
// of times; every outcome is checked against a sequential twin, so a corrupted result
// fails whatever the interleaving was.
#include <atomic>
#include <string>
#include <thread>

#include "capi_support.hpp"

using namespace capi_test;

namespace {

// Spins until every thread has arrived, so that the calls really overlap.
class StartLine {
 public:
  explicit StartLine(int threads) : waiting_(threads) {}
  void arrive_and_wait() {
    waiting_.fetch_sub(1);
    while (waiting_.load() > 0) std::this_thread::yield();
  }

 private:
  std::atomic<int> waiting_;
};

}  // namespace

TEST_CASE("the last error is thread-local", "[capi][contract][threads]") {
  REQUIRE(bn_forward(nullptr, nullptr, 0, nullptr, nullptr) == BN_ERR_INVALID_ARGUMENT);
  const std::string mine = bn_last_error();
  REQUIRE(mentions(mine, "bn_forward"));

  std::string fresh, theirs;
  std::thread other([&] {
    fresh = bn_last_error();  // a new thread has had no failed call
    bn_set_momentum(nullptr, 0.5);
    theirs = bn_last_error();
  });
  other.join();
  CHECK(fresh.empty());
  CHECK(mentions(theirs, "bn_set_momentum"));
  CHECK(bn_last_error() == mine);

  // A successful call does not clear it either: it stays until the next failure.
  Config cfg = make_config();
  REQUIRE(bn_config_set_momentum(cfg.get(), 0.5) == BN_OK);
  CHECK(bn_last_error() == mine);
}

TEST_CASE("concurrent inference forwards on one layer from 8 threads give the bits of one thread", "[capi][contract][threads]") {
  const std::vector<int64_t> shape = {64, 16, 32};
  const int32_t axes[] = {1};
  for (bn_dtype dtype : {BN_F32, BN_F64}) {
    CAPTURE(dtype);
    Config cfg = make_config();
    REQUIRE(bn_config_set_dtype(cfg.get(), dtype) == BN_OK);
    REQUIRE(bn_config_set_axes(cfg.get(), axes, 1) == BN_OK);
    const Probe p(dtype, shape, false, false, cfg.get());
    const int64_t n = element_count(shape);
    // The reference: one thread (the calling one) does all the work.
    Tensor reference(dtype, n);
    REQUIRE(bn_set_num_threads(p.get(), 1) == BN_OK);
    REQUIRE(bn_forward(p.get(), shape.data(), 3, p.x.data(), reference.data()) == BN_OK);
    REQUIRE(bn_set_num_threads(p.get(), 0) == BN_OK);

    constexpr int kThreads = 8, kCalls = 10;
    std::vector<int> mismatches(kThreads, 0), failures(kThreads, 0);
    StartLine start(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Tensor y(dtype, n);
        start.arrive_and_wait();
        for (int i = 0; i < kCalls; ++i) {
          y.poison();
          if (bn_forward(p.get(), shape.data(), 3, p.x.data(), y.data()) != BN_OK) ++failures[t];
          if (y.bytes != reference.bytes) ++mismatches[t];
        }
      });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < kThreads; ++t) {
      CAPTURE(t);
      CHECK(failures[t] == 0);
      CHECK(mismatches[t] == 0);
    }
  }
}

TEST_CASE("concurrent training forwards: each succeeds or is BN_ERR_STATE, never corrupted",
          "[capi][contract][threads]") {
  // Training output depends on x, gamma and beta only, so every successful call must
  // give the sequential result; and after k successes in total the moving statistics
  // must be those of k sequential steps on a twin.
  const std::vector<int64_t> shape = {256, 16};
  for (bn_dtype dtype : {BN_F32, BN_F64}) {
    CAPTURE(dtype);
    const Probe p(dtype, shape, true, false);
    const Probe twin(dtype, shape, true, false);
    const int64_t n = element_count(shape);
    Tensor reference(dtype, n);
    REQUIRE(bn_forward(twin.get(), shape.data(), 2, twin.x.data(), reference.data()) == BN_OK);
    int sequential = 1;

    constexpr int kThreads = 2, kCalls = 100;
    std::vector<int> ok(kThreads, 0), busy(kThreads, 0), other(kThreads, 0), corrupt(kThreads, 0);
    StartLine start(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Tensor y(dtype, n);
        start.arrive_and_wait();
        for (int i = 0; i < kCalls; ++i) {
          y.poison();
          const Bytes poisoned = y.bytes;
          const bn_status s = bn_forward(p.get(), shape.data(), 2, p.x.data(), y.data());
          if (s == BN_OK) {
            ++ok[t];
            if (y.bytes != reference.bytes) ++corrupt[t];
          } else if (s == BN_ERR_STATE) {
            ++busy[t];
            if (y.bytes != poisoned) ++corrupt[t];  // a refused call writes nothing
          } else {
            ++other[t];
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    int successes = 0;
    for (int t = 0; t < kThreads; ++t) {
      CAPTURE(t, ok[t], busy[t]);
      CHECK(other[t] == 0);
      CHECK(corrupt[t] == 0);
      successes += ok[t];
    }
    CHECK(successes >= 1);
    Tensor y(dtype, n);
    for (; sequential < successes; ++sequential) {
      REQUIRE(bn_forward(twin.get(), shape.data(), 2, twin.x.data(), y.data()) == BN_OK);
    }
    for (bn_param which : {BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE, BN_PARAM_BATCH_MEAN,
                           BN_PARAM_BATCH_VARIANCE}) {
      CAPTURE(which);
      Tensor a(dtype, 16), b(dtype, 16);
      REQUIRE(bn_get_param(p.get(), which, a.data(), 16) == BN_OK);
      REQUIRE(bn_get_param(twin.get(), which, b.data(), 16) == BN_OK);
      CHECK(a.bytes == b.bytes);
    }
  }
}

TEST_CASE("bn_set_param during inference forwards: old or new parameters, or BN_ERR_STATE",
          "[capi][contract][threads]") {
  // One writer alternates gamma between two values while readers run inference; every
  // successful read must equal the forward with one of the two gammas, never a mix.
  const std::vector<int64_t> shape = {128, 32};
  const Probe p(BN_F32, shape, false, false);
  const int64_t n = element_count(shape);
  std::vector<float> gamma[2] = {std::vector<float>(32, 0.5f), std::vector<float>(32, 2.0f)};
  Tensor expected[2] = {Tensor(BN_F32, n), Tensor(BN_F32, n)};
  for (int k = 0; k < 2; ++k) {
    REQUIRE(bn_set_param(p.get(), BN_PARAM_GAMMA, gamma[k].data(), 32) == BN_OK);
    REQUIRE(bn_forward(p.get(), shape.data(), 2, p.x.data(), expected[k].data()) == BN_OK);
  }
  REQUIRE(expected[0].bytes != expected[1].bytes);

  constexpr int kReaders = 3, kCalls = 100;
  std::vector<int> bad(kReaders + 1, 0), other(kReaders + 1, 0);
  StartLine start(kReaders + 1);
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    start.arrive_and_wait();
    for (int i = 0; i < kCalls; ++i) {
      const bn_status s = bn_set_param(p.get(), BN_PARAM_GAMMA, gamma[i % 2].data(), 32);
      if (s != BN_OK && s != BN_ERR_STATE) ++other[kReaders];
    }
  });
  for (int t = 0; t < kReaders; ++t) {
    threads.emplace_back([&, t] {
      Tensor y(BN_F32, n);
      start.arrive_and_wait();
      for (int i = 0; i < kCalls; ++i) {
        y.poison();
        const Bytes poisoned = y.bytes;
        const bn_status s = bn_forward(p.get(), shape.data(), 2, p.x.data(), y.data());
        if (s == BN_OK) {
          if (y.bytes != expected[0].bytes && y.bytes != expected[1].bytes) ++bad[t];
        } else if (s == BN_ERR_STATE) {
          if (y.bytes != poisoned) ++bad[t];
        } else {
          ++other[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t <= kReaders; ++t) {
    CAPTURE(t);
    CHECK(bad[t] == 0);
    CHECK(other[t] == 0);
  }
  // Whatever won last, gamma is one of the two values, intact.
  float g[32];
  REQUIRE(bn_get_param(p.get(), BN_PARAM_GAMMA, g, 32) == BN_OK);
  CHECK((std::memcmp(g, gamma[0].data(), sizeof g) == 0 || std::memcmp(g, gamma[1].data(), sizeof g) == 0));
}

TEST_CASE("training separate layers on 8 threads is independent of the others", "[capi][contract][threads]") {
  // Each thread owns a layer and runs training steps (forward, backward, parameter update by
  // bn_set_param) on its own data; the result must be bitwise that of the same steps run
  // alone on one thread, whatever the other threads did meanwhile.
  constexpr int kThreads = 8, kSteps = 20;
  const std::vector<int64_t> shape = {32, 8, 6};
  const int32_t axes[] = {1};
  const int64_t n = element_count(shape);
  struct Result {
    std::vector<Bytes> state;  // moving mean, moving variance, gamma, beta, dx of the last step
  };
  // No Catch2 macro inside: the threads call it too, and Catch2's assertions are not thread-safe.
  auto train = [&](int seed, Result& out) {
    bn_config* raw_cfg = nullptr;
    if (bn_config_create(&raw_cfg) != BN_OK) return false;
    Config cfg(raw_cfg, &bn_config_destroy);
    if (bn_config_set_axes(raw_cfg, axes, 1) != BN_OK || bn_config_set_momentum(raw_cfg, 0.9) != BN_OK) return false;
    bn_layer* raw = nullptr;
    if (bn_create(cfg.get(), shape.data(), 3, &raw) != BN_OK) return false;
    Layer layer(raw, &bn_destroy);
    if (bn_set_training(raw, 1) != BN_OK) return false;
    Tensor x(BN_F32, n), y(BN_F32, n), dy(BN_F32, n), dx(BN_F32, n), gamma(BN_F32, 8), beta(BN_F32, 8),
        dgamma(BN_F32, 8), dbeta(BN_F32, 8);
    for (int step = 0; step < kSteps; ++step) {
      x.fill(static_cast<uint64_t>(seed * 1000 + step));
      dy.fill(static_cast<uint64_t>(seed * 1000 + step + 500));
      if (bn_forward(raw, shape.data(), 3, x.data(), y.data()) != BN_OK) return false;
      if (bn_backward(raw, shape.data(), 3, x.data(), dy.data(), dx.data(), dgamma.data(), dbeta.data()) != BN_OK) {
        return false;
      }
      if (bn_get_param(raw, BN_PARAM_GAMMA, gamma.data(), 8) != BN_OK) return false;
      if (bn_get_param(raw, BN_PARAM_BETA, beta.data(), 8) != BN_OK) return false;
      for (size_t f = 0; f < 8; ++f) {  // plain SGD
        gamma.set(f, gamma.get(f) - 0.01 * dgamma.get(f));
        beta.set(f, beta.get(f) - 0.01 * dbeta.get(f));
      }
      if (bn_set_param(raw, BN_PARAM_GAMMA, gamma.data(), 8) != BN_OK) return false;
      if (bn_set_param(raw, BN_PARAM_BETA, beta.data(), 8) != BN_OK) return false;
    }
    for (bn_param which : {BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE, BN_PARAM_GAMMA, BN_PARAM_BETA}) {
      Tensor t(BN_F32, 8);
      if (bn_get_param(raw, which, t.data(), 8) != BN_OK) return false;
      out.state.push_back(t.bytes);
    }
    out.state.push_back(dx.bytes);
    return true;
  };

  std::vector<Result> alone(kThreads);
  for (int t = 0; t < kThreads; ++t) REQUIRE(train(t, alone[t]));

  std::vector<Result> together(kThreads);
  std::vector<int> ok(kThreads, 0);
  StartLine start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      ok[t] = train(t, together[t]) ? 1 : 0;
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    CAPTURE(t);
    REQUIRE(ok[t] == 1);
    CHECK(together[t].state == alone[t].state);
  }
  // The layers saw different data: equal results would mean the comparison proves nothing.
  CHECK(alone[0].state != alone[1].state);
}
