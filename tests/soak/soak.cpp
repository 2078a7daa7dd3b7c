// Soak test: 10^6 training steps on a small layer through the C API, with the process's
// resident memory (VmRSS) and open file descriptors sampled every `interval` steps. After a
// warm-up (the first sample) neither may grow: RSS by more than the slack, descriptors not at
// all. Not part of the test suite (it runs for about a minute): bash scripts/soak.sh.
//
// Each step is a training forward and backward, an SGD update through bn_set_param; the batch
// size alternates (a new shape re-plans the layer's scratch each step), every 10th step is an
// inference forward, every 100th a refused call (the error path), every 1000th a new layer.
#include <batchnorm/batchnorm.h>

#include <dirent.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace {

int64_t vm_rss_kib() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      int64_t kib = 0;
      status >> kib;
      return kib;
    }
    std::getline(status, key);
  }
  return -1;
}

int open_fds() {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int n = 0;
  while (readdir(dir)) ++n;
  closedir(dir);
  return n - 3;  // ".", ".." and the directory's own descriptor
}

bool ok(bn_status s, const char* what) {
  if (s == BN_OK) return true;
  std::fprintf(stderr, "soak: %s failed: %s\n", what, bn_last_error());
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t steps = argc > 1 ? std::atoll(argv[1]) : 1000000;
  const int64_t interval = argc > 2 ? std::atoll(argv[2]) : 100000;
  const int64_t slack_kib = argc > 3 ? std::atoll(argv[3]) : 2048;
  constexpr int64_t kFeatures = 16, kMaxBatch = 33;
  const int32_t axes[] = {1};

  bn_config* cfg = nullptr;
  if (!ok(bn_config_create(&cfg), "bn_config_create") || !ok(bn_config_set_axes(cfg, axes, 1), "axes")) return 1;
  std::vector<float> x(kMaxBatch * kFeatures * 4), y(x.size()), dy(x.size()), dx(x.size());
  std::vector<float> gamma(kFeatures), beta(kFeatures), dgamma(kFeatures), dbeta(kFeatures);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<float>((i * 37) % 101) / 25.0f - 2.0f;
    dy[i] = static_cast<float>((i * 53) % 97) / 50.0f - 1.0f;
  }
  bn_layer* layer = nullptr;
  int64_t base_rss = -1;
  int base_fds = -1;
  int64_t max_growth = 0;
  bool failed = false;
  const auto t0 = std::chrono::steady_clock::now();
  std::printf("%10s %10s %8s %8s\n", "step", "VmRSS KiB", "growth", "fds");
  for (int64_t step = 0; step <= steps && !failed; ++step) {
    if (step > 0 && step % interval == 0) {
      const int64_t rss = vm_rss_kib();
      const int fds = open_fds();
      if (base_rss < 0) {  // the first sample is the baseline, after warm-up
        base_rss = rss;
        base_fds = fds;
      }
      const int64_t growth = rss - base_rss;
      if (growth > max_growth) max_growth = growth;
      std::printf("%10lld %10lld %+8lld %8d\n", static_cast<long long>(step), static_cast<long long>(rss),
                  static_cast<long long>(growth), fds);
      std::fflush(stdout);
      if (growth > slack_kib || fds != base_fds) {
        failed = true;
        break;
      }
    }
    if (step == steps) break;
    if (step % 1000 == 0) {
      bn_destroy(layer);
      layer = nullptr;
      const int64_t shape[] = {kMaxBatch, kFeatures, 4};
      if (!ok(bn_create(cfg, shape, 3, &layer), "bn_create") || !ok(bn_set_training(layer, 1), "training")) return 1;
    }
    const int64_t batch = step % 2 ? kMaxBatch : kMaxBatch - 8;
    const int64_t shape[] = {batch, kFeatures, 4};
    if (step % 10 == 9) {
      failed = !ok(bn_set_training(layer, 0), "inference") || !ok(bn_forward(layer, shape, 3, x.data(), y.data()), "fwd") ||
               !ok(bn_set_training(layer, 1), "training");
      continue;
    }
    if (step % 100 == 50) {
      const int64_t bad[] = {batch, kFeatures + 1, 4};
      if (bn_forward(layer, bad, 3, x.data(), y.data()) != BN_ERR_SHAPE) {
        std::fprintf(stderr, "soak: a bad shape was not refused\n");
        failed = true;
      }
    }
    failed = failed || !ok(bn_forward(layer, shape, 3, x.data(), y.data()), "bn_forward") ||
             !ok(bn_backward(layer, shape, 3, x.data(), dy.data(), dx.data(), dgamma.data(), dbeta.data()),
                 "bn_backward") ||
             !ok(bn_get_param(layer, BN_PARAM_GAMMA, gamma.data(), kFeatures), "get gamma") ||
             !ok(bn_get_param(layer, BN_PARAM_BETA, beta.data(), kFeatures), "get beta");
    if (failed) break;
    for (int64_t f = 0; f < kFeatures; ++f) {
      gamma[f] -= 1e-3f * dgamma[f];
      beta[f] -= 1e-3f * dbeta[f];
    }
    failed = !ok(bn_set_param(layer, BN_PARAM_GAMMA, gamma.data(), kFeatures), "set gamma") ||
             !ok(bn_set_param(layer, BN_PARAM_BETA, beta.data(), kFeatures), "set beta");
  }
  bn_destroy(layer);
  bn_config_destroy(cfg);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s: %lld steps in %.1f s; VmRSS growth after warm-up at most %lld KiB (slack %lld KiB); "
              "open descriptors %d throughout\n",
              failed ? "FAILED" : "passed", static_cast<long long>(steps), seconds, static_cast<long long>(max_growth),
              static_cast<long long>(slack_kib), base_fds);
  return failed ? 1 : 0;
}
