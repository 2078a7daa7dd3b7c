#include "timing.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

namespace bn::bench {
namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Timing time_median(const std::function<void()>& call, const TimingPolicy& policy) {
  const double warmup_budget = std::min(0.05, policy.target_seconds / 5);
  int warm_calls = 0;
  const double t0 = now();
  double elapsed = 0;
  do {
    call();
    ++warm_calls;
    elapsed = now() - t0;
  } while (warm_calls < 2 || elapsed < warmup_budget);
  const double estimate = elapsed / warm_calls;

  const int batch = std::max(1, static_cast<int>(std::ceil(policy.min_sample_seconds / estimate)));
  const int samples = std::clamp(static_cast<int>(policy.target_seconds / (batch * estimate)),
                                 policy.min_samples, policy.max_samples);
  std::vector<double> per_call(samples);
  for (int s = 0; s < samples; ++s) {
    const double start = now();
    for (int b = 0; b < batch; ++b) call();
    per_call[s] = (now() - start) / batch;
  }
  std::nth_element(per_call.begin(), per_call.begin() + samples / 2, per_call.end());
  return {per_call[samples / 2], samples * batch};
}

std::optional<double> median_of(std::vector<double> values) {
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace bn::bench
