// Element-wise comparisons that report the first mismatch (for INFO on failure).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace bn_test {

// Central finite difference of f() in v[i], with a step of 1e-5 relative to |v[i]| (at least
// 1e-5); v[i] is restored.
inline double central_difference(std::vector<double>& v, size_t i, const std::function<double()>& f) {
  const double old = v[i];
  const double h = 1e-5 * std::max(1.0, std::fabs(old));
  v[i] = old + h;
  const double up = f();
  v[i] = old - h;
  const double down = f();
  v[i] = old;
  return (up - down) / (2.0 * h);
}


struct Comparison {
  bool ok = true;
  std::string message;  // empty when ok
};

// Passes when |got[i] - want[i]| <= rel * mag[i] + abs for every i (NaN never passes).
// `mag` is the magnitude of the terms behind want[i], so `rel` is a relative rounding budget.
Comparison compare_scaled(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
                          const std::vector<double>& mag, double rel, double abs = 0.0);

// Passes when |got[i] - want[i]| <= abs + rel*|want[i]| (NaN never passes).
Comparison compare_rel(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
                       double rel, double abs = 0.0);

// The bytes of a vector's elements, for bitwise comparisons.
template <class T>
std::vector<unsigned char> bytes_of(const std::vector<T>& v) {
  std::vector<unsigned char> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Exact equality, element by element (bit patterns for the determinism tests are compared as bytes).
Comparison compare_exact(const std::string& what, const std::vector<double>& got, const std::vector<double>& want);

}  // namespace bn_test
