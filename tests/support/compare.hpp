// Element-wise comparisons that report the first mismatch (for INFO on failure).
#pragma once

#include <string>
#include <vector>

namespace bn_test {

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

// Exact equality, element by element (bit patterns for the determinism tests are compared as bytes).
Comparison compare_exact(const std::string& what, const std::vector<double>& got, const std::vector<double>& want);

}  // namespace bn_test
