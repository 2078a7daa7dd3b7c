// Seeded test data (std::mt19937_64): the same seed gives the same data on every run.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "reference.hpp"

namespace bn_test {

class DataGen {
 public:
  explicit DataGen(uint64_t seed) : rng_(seed) {}

  double uniform(double lo, double hi);
  int64_t integer(int64_t lo, int64_t hi);  // inclusive bounds
  bool coin(double p_true = 0.5);
  template <class T>
  const T& pick(const std::vector<T>& values) {
    return values[static_cast<size_t>(integer(0, static_cast<int64_t>(values.size()) - 1))];
  }

  // n draws of N(mean, stddev) / U(lo, hi), rounded to the dtype (float values for f32).
  std::vector<double> normal(size_t n, double mean, double stddev, RefDtype dtype);
  std::vector<double> uniform_vector(size_t n, double lo, double hi, RefDtype dtype);

  // Data whose features differ: element i of feature f is offset[f] + spread[f]*N(0,1),
  // offsets drawn from U(-offset_range, offset_range), spreads from U(spread_lo, spread_hi).
  std::vector<double> per_feature(const std::vector<int64_t>& shape, const std::vector<bool>& kept,
                                  double offset_range, double spread_lo, double spread_hi, RefDtype dtype);

  std::mt19937_64& engine() { return rng_; }

 private:
  std::mt19937_64 rng_;
};

// Large-mean data: mean + stddev*N(0,1), the case where E[x^2] - E[x]^2 cancels.
inline std::vector<double> large_mean_data(DataGen& gen, size_t n, double mean, double stddev, RefDtype dtype) {
  return gen.normal(n, mean, stddev, dtype);
}

}  // namespace bn_test
