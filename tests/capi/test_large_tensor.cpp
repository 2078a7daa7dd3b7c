// One call on a tensor of more than 2^31 elements (64-bit indexing): 2^31+7 floats (8 GiB),
// normalized in place (y == x) in training mode. Shape (3, 715827885), axis 0: the last
// feature's elements run from index 1431655770 to 2^31+6, across 2^31, so a 32-bit index
// anywhere would read or write the wrong elements. The data is a pattern whose statistics are
// known exactly; the batch statistics and the outputs at the end of the tensor are checked
// against them.
//
// A process of its own (test capi.large_tensor, label large): it needs MemAvailable >= 9 GiB
// and reports a skip (exit code 77) with the reason when the machine has less.
#include <batchnorm/batchnorm.h>
#include <sys/mman.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace {

constexpr int64_t kFeatures = 3;
constexpr int64_t kPerFeature = 715827885;  // 3 * 715827885 = 2^31 + 7
constexpr int64_t kElements = kFeatures * kPerFeature;
constexpr double kTailValue = 1000.0;  // the last element of each feature

// x[f][j] = (j mod 7) - 3 + f, except the last element of each feature (kTailValue).
float pattern(int64_t f, int64_t j) {
  if (j == kPerFeature - 1) return static_cast<float>(kTailValue);
  return static_cast<float>(j % 7 - 3 + f);
}

// Exact mean and biased variance of feature f, from integer sums.
void exact_statistics(int64_t f, double& mean, double& variance) {
  __int128 s = 0, q = 0;
  const int64_t full = (kPerFeature - 1) / 7, rest = (kPerFeature - 1) % 7;
  for (int64_t r = 0; r < 7; ++r) {
    const int64_t count = full + (r < rest ? 1 : 0);
    const int64_t v = r - 3 + f;
    s += static_cast<__int128>(count) * v;
    q += static_cast<__int128>(count) * v * v;
  }
  s += static_cast<int64_t>(kTailValue);
  q += static_cast<int64_t>(kTailValue * kTailValue);
  const __int128 m = kPerFeature;
  mean = static_cast<double>(s) / static_cast<double>(m);
  // (q*m - s^2) / m^2, the numerator exact in 128 bits
  variance = static_cast<double>(q * m - s * s) / (static_cast<double>(m) * static_cast<double>(m));
}

int64_t mem_available_kib() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = -1;
  while (meminfo >> key) {
    if (key == "MemAvailable:") {
      meminfo >> kib;
      break;
    }
    std::getline(meminfo, key);
  }
  return kib;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int failures = 0;
void check(bool ok, const char* what, double got, double expected) {
  std::printf("%s %s: %.9g (expected %.9g)\n", ok ? "ok  " : "FAIL", what, got, expected);
  if (!ok) ++failures;
}

}  // namespace

int main() {
  const int64_t need_kib = (kElements * 4) / 1024 + (int64_t{1} << 20);  // the tensor + 1 GiB
  const int64_t have_kib = mem_available_kib();
  if (have_kib < need_kib) {
    std::printf("SKIPPED: a tensor of 2^31+7 floats needs %lld MiB of available memory, MemAvailable is %lld MiB\n",
                static_cast<long long>(need_kib / 1024), static_cast<long long>(have_kib / 1024));
    return 77;
  }
  const auto t0 = std::chrono::steady_clock::now();
  // An anonymous mapping with transparent huge pages where available: 4 KiB page faults
  // dominated the time of filling 8 GiB.
  const size_t bytes = static_cast<size_t>(kElements) * sizeof(float);
  void* mapping = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping == MAP_FAILED) {
    std::printf("SKIPPED: could not allocate 8 GiB although MemAvailable is %lld MiB\n",
                static_cast<long long>(have_kib / 1024));
    return 77;
  }
  madvise(mapping, bytes, MADV_HUGEPAGE);  // advice only: a kernel without THP ignores it
  float* const x = static_cast<float*>(mapping);
  for (int64_t f = 0; f < kFeatures; ++f) {
    float* row = x + f * kPerFeature;
    int64_t r = 0;  // j mod 7, without a division per element
    for (int64_t j = 0; j < kPerFeature - 1; ++j) {
      row[j] = static_cast<float>(r - 3 + f);
      r = r == 6 ? 0 : r + 1;
    }
    row[kPerFeature - 1] = pattern(f, kPerFeature - 1);
  }
  std::printf("filled %lld floats (%.1f GiB) in %.1f s\n", static_cast<long long>(kElements),
              static_cast<double>(kElements) * 4.0 / (1 << 30), seconds_since(t0));

  bn_config* cfg = nullptr;
  bn_layer* layer = nullptr;
  const int32_t axis[] = {0};
  const int64_t shape[] = {kFeatures, kPerFeature};
  if (bn_config_create(&cfg) != BN_OK || bn_config_set_axes(cfg, axis, 1) != BN_OK ||
      bn_config_set_epsilon(cfg, 0.0) != BN_OK || bn_create(cfg, shape, 2, &layer) != BN_OK ||
      bn_set_training(layer, 1) != BN_OK) {
    std::printf("FAIL: set-up: %s\n", bn_last_error());
    return 1;
  }
  const auto t1 = std::chrono::steady_clock::now();
  const bn_status status = bn_forward(layer, shape, 2, x, x);  // in place
  std::printf("bn_forward (training, in place) on shape (%lld, %lld): %s in %.1f s\n",
              static_cast<long long>(kFeatures), static_cast<long long>(kPerFeature), bn_status_string(status),
              seconds_since(t1));
  if (status != BN_OK) {
    std::printf("FAIL: %s\n", bn_last_error());
    return 1;
  }
  float mean[kFeatures], var[kFeatures];
  if (bn_get_param(layer, BN_PARAM_BATCH_MEAN, mean, kFeatures) != BN_OK ||
      bn_get_param(layer, BN_PARAM_BATCH_VARIANCE, var, kFeatures) != BN_OK) {
    std::printf("FAIL: bn_get_param: %s\n", bn_last_error());
    return 1;
  }
  for (int64_t f = 0; f < kFeatures; ++f) {
    double m = 0, v = 0;
    exact_statistics(f, m, v);
    char what[64];
    // The statistics are accumulated in double and read back as float: within 2 float ulps.
    std::snprintf(what, sizeof what, "feature %lld batch mean", static_cast<long long>(f));
    check(std::fabs(mean[f] - m) <= 2.0 * std::ldexp(std::fabs(m), -23), what, mean[f], m);
    std::snprintf(what, sizeof what, "feature %lld batch variance", static_cast<long long>(f));
    check(std::fabs(var[f] - v) <= 2.0 * std::ldexp(std::fabs(v), -23), what, var[f], v);
    // y = (x - mean)/sqrt(var) (gamma 1, beta 0, epsilon 0) at the start, in the middle and at
    // the end of the feature, the tail element beyond 2^31 for the last feature.
    for (int64_t j : {int64_t{0}, kPerFeature / 2, kPerFeature - 2, kPerFeature - 1}) {
      const int64_t i = f * kPerFeature + j;
      const double expected = (static_cast<double>(pattern(f, j)) - m) / std::sqrt(v);
      const double got = x[static_cast<size_t>(i)];
      std::snprintf(what, sizeof what, "y[%lld]", static_cast<long long>(i));
      check(std::fabs(got - expected) <= 1e-5 * (1.0 + std::fabs(expected)), what, got, expected);
    }
  }
  // Moving statistics updated once with momentum 0.99 from 0 and 1 (float rounding aside).
  float moving_mean[kFeatures];
  if (bn_get_param(layer, BN_PARAM_MOVING_MEAN, moving_mean, kFeatures) != BN_OK) return 1;
  double m2 = 0, v2 = 0;
  exact_statistics(2, m2, v2);
  check(std::fabs(moving_mean[2] - 0.01 * m2) <= 1e-6, "feature 2 moving mean", moving_mean[2], 0.01 * m2);
  bn_destroy(layer);
  bn_config_destroy(cfg);
  munmap(mapping, bytes);
  std::printf("%s in %.1f s\n", failures ? "FAILED" : "passed", seconds_since(t0));
  return failures ? 1 : 0;
}
