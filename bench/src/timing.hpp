// Median timing with a warm-up and repetitions adapted to a time budget.
#pragma once

#include <functional>
#include <optional>
#include <vector>

namespace bn::bench {

struct TimingPolicy {
  double target_seconds = 0.25;  // total time to spend sampling
  int min_samples = 3;
  int max_samples = 101;
  double min_sample_seconds = 5e-4;  // tiny calls are batched so one sample is not clock noise
};

struct Timing {
  double median_seconds = 0;  // per call
  int calls = 0;              // timed calls (warm-up excluded)
};

// Warms up (at least two calls and ~1/5 of the budget, at most 0.05 s), then takes
// samples of k back-to-back calls and returns the median per-call time.
Timing time_median(const std::function<void()>& call, const TimingPolicy& policy);

// The median of the values (the mean of the middle two for an even count); none when empty.
std::optional<double> median_of(std::vector<double> values);

}  // namespace bn::bench
