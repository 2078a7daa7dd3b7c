#include "data_gen.hpp"

namespace bn_test {

double DataGen::uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng_); }

int64_t DataGen::integer(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }

bool DataGen::coin(double p_true) { return std::bernoulli_distribution(p_true)(rng_); }

std::vector<double> DataGen::normal(size_t n, double mean, double stddev, RefDtype dtype) {
  std::normal_distribution<double> dist(mean, stddev);
  std::vector<double> v(n);
  for (double& e : v) e = round_to(dist(rng_), dtype);
  return v;
}

std::vector<double> DataGen::uniform_vector(size_t n, double lo, double hi, RefDtype dtype) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (double& e : v) e = round_to(dist(rng_), dtype);
  return v;
}

std::vector<double> DataGen::per_feature(const std::vector<int64_t>& shape, const std::vector<bool>& kept,
                                         double offset_range, double spread_lo, double spread_hi, RefDtype dtype) {
  const std::vector<int64_t> fmap = feature_index_map(shape, kept);
  int64_t features = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (kept[d]) features *= shape[d];
  }
  std::vector<double> offset(static_cast<size_t>(features)), spread(static_cast<size_t>(features));
  for (auto& o : offset) o = uniform(-offset_range, offset_range);
  for (auto& s : spread) s = uniform(spread_lo, spread_hi);
  std::normal_distribution<double> unit(0.0, 1.0);
  std::vector<double> v(fmap.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const auto f = static_cast<size_t>(fmap[i]);
    v[i] = round_to(offset[f] + spread[f] * unit(rng_), dtype);
  }
  return v;
}

}  // namespace bn_test
