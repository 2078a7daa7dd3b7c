#include "compare.hpp"

#include <cmath>
#include <sstream>

namespace bn_test {
namespace {

template <class Tol>
Comparison compare_with(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
                        Tol&& tolerance) {
  Comparison c;
  std::ostringstream msg;
  msg.precision(17);
  if (got.size() != want.size()) {
    msg << what << ": size " << got.size() << " but expected " << want.size();
    return {false, msg.str()};
  }
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = tolerance(i);
    const double diff = std::fabs(got[i] - want[i]);
    if (diff <= tol) continue;  // false for NaN
    if (bad++ == 0) {
      msg << what << "[" << i << "]: got " << got[i] << " expected " << want[i] << " (diff " << diff << ", tolerance "
          << tol << ")";
    }
  }
  if (bad > 0) {
    msg << "; " << bad << " of " << got.size() << " elements differ";
    c.ok = false;
    c.message = msg.str();
  }
  return c;
}

}  // namespace

Comparison compare_scaled(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
                          const std::vector<double>& mag, double rel, double abs) {
  if (mag.size() != want.size()) return {false, what + ": magnitude vector has the wrong size"};
  return compare_with(what, got, want, [&](size_t i) { return rel * mag[i] + abs; });
}

Comparison compare_rel(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
                       double rel, double abs) {
  return compare_with(what, got, want, [&](size_t i) { return abs + rel * std::fabs(want[i]); });
}

Comparison compare_exact(const std::string& what, const std::vector<double>& got, const std::vector<double>& want) {
  return compare_with(what, got, want, [](size_t) { return 0.0; });
}

}  // namespace bn_test
