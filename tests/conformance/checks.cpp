#include "checks.hpp"

#include <cmath>
#include <iomanip>
#include <limits>
#include <sstream>

namespace bn::conformance {
namespace {

std::string coordinates(const std::vector<int64_t>& shape, size_t flat) {
  std::vector<int64_t> idx(shape.size());
  auto rest = static_cast<int64_t>(flat);
  for (size_t d = shape.size(); d-- > 0;) {
    const int64_t size = shape[d] > 0 ? shape[d] : 1;
    idx[d] = rest % size;
    rest /= size;
  }
  std::ostringstream os;
  os << '(';
  for (size_t d = 0; d < idx.size(); ++d) os << (d ? "," : "") << idx[d];
  os << ')';
  return os.str();
}

}  // namespace

const Tensor& CaseView::get(const std::string& name) {
  const Tensor* t = maybe(name);
  INFO(label() << ": the case stores no tensor '" << name << "'");
  REQUIRE(t != nullptr);
  return *t;
}

const Tensor* CaseView::maybe(const std::string& name) {
  const Tensor* t = c_.find(name, dtype_);
  if (t != nullptr) used_.insert(name);
  return t;
}

std::vector<std::string> CaseView::unused() const {
  std::vector<std::string> out;
  for (const Tensor& t : c_.tensors) {
    if (t.dtype == dtype_ && used_.count(t.name) == 0) out.push_back(t.name);
  }
  return out;
}

std::string value_and_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  std::ostringstream os;
  os << std::setprecision(9) << v << " (bits 0x" << std::hex << std::setw(8) << std::setfill('0') << bits << ')';
  return os.str();
}

std::string value_and_bits(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  std::ostringstream os;
  os << std::setprecision(17) << v << " (bits 0x" << std::hex << std::setw(16) << std::setfill('0') << bits << ')';
  return os.str();
}

void check_close(Tally& tally, const std::string& label, const std::vector<int64_t>& shape,
                 const std::vector<double>& got, const std::vector<double>& expected, Tolerance tol) {
  ++tally.tensors;
  tally.elements += expected.size();
  INFO(label);
  REQUIRE(got.size() == expected.size());

  // The worst element is the one with the largest |diff| / allowed; a NaN is worst of all.
  size_t failing = 0;
  size_t worst = 0;
  double worst_ratio = -1.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::fabs(got[i] - expected[i]);
    const double allowed = tol.atol + tol.rtol * std::fabs(expected[i]);
    const bool ok = diff <= allowed;  // false for NaN
    if (!ok) ++failing;
    const double ratio = std::isnan(diff) ? std::numeric_limits<double>::infinity()
                         : allowed > 0.0  ? diff / allowed
                         : diff > 0.0     ? std::numeric_limits<double>::infinity()
                                          : 0.0;
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  std::ostringstream os;
  os << std::setprecision(17) << failing << " of " << got.size()
     << " elements outside |got-expected| <= atol + rtol*|expected| (atol " << tol.atol << ", rtol " << tol.rtol
     << "); worst at index " << worst << ' ' << coordinates(shape, worst);
  if (!got.empty()) {
    os << ": got " << got[worst] << ", expected " << expected[worst] << ", |diff| "
       << std::fabs(got[worst] - expected[worst]) << ", allowed " << tol.atol + tol.rtol * std::fabs(expected[worst]);
  }
  INFO(os.str());
  CHECK(failing == 0);
}

void check_output(Tally& tally, CaseView& view, const std::string& name, const std::vector<double>& got) {
  const Tensor& expected = view.get(name);
  const Tolerance tol = view.info().tolerance(view.dtype(), name);
  check_close(tally, view.label() + " tensor " + name, expected.shape, got, expected.data, tol);
}

}  // namespace bn::conformance
