// Element-wise comparisons for the conformance tier. A failure names the case, the dtype and
// the tensor, how many elements are off, and the worst element (flat index, coordinates, got,
// expected, |diff| and the allowed difference).
#ifndef BN_TESTS_CONFORMANCE_CHECKS_HPP
#define BN_TESTS_CONFORMANCE_CHECKS_HPP

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "case_reader.hpp"

namespace bn::conformance {

// What ran, kept across Catch's re-entries of a test case (one leaf section per pass).
struct Tally {
  std::set<std::string> completed;  // "<case id> <dtype>" whose section reached its end
  size_t tensors = 0;               // tensor comparisons made
  size_t elements = 0;              // element comparisons made
};

// One case in one dtype. Every tensor is read through get()/maybe(), so the end of a run can
// prove that no stored tensor was left unchecked.
class CaseView {
 public:
  CaseView(const Case& c, std::string dtype) : c_(c), dtype_(std::move(dtype)) {}
  const Case& info() const { return c_; }
  const std::string& dtype() const { return dtype_; }
  std::string label() const { return c_.id + " [" + dtype_ + "]"; }
  // The tensor, which must exist (REQUIRE).
  const Tensor& get(const std::string& name);
  // The tensor, or nullptr when this case does not store it.
  const Tensor* maybe(const std::string& name);
  // Names of this dtype's tensors that were never read.
  std::vector<std::string> unused() const;

 private:
  const Case& c_;
  std::string dtype_;
  std::set<std::string> used_;
};

// Passes iff |got - expected| <= atol + rtol*|expected| for every element; NaN never passes.
void check_close(Tally& tally, const std::string& label, const std::vector<int64_t>& shape,
                 const std::vector<double>& got, const std::vector<double>& expected, Tolerance tol);

// The stored output `name` of the view's dtype against `got`, with the case's own tolerance.
void check_output(Tally& tally, CaseView& view, const std::string& name, const std::vector<double>& got);

// "1.2345678901234567 (bits 0x3ff3c0ca428c59fb)": the value and its exact bit pattern.
std::string value_and_bits(float v);
std::string value_and_bits(double v);

// Bitwise identity (in-place vs out-of-place, "changes nothing").
template <class T>
void check_same_bits(Tally& tally, const std::string& label, const std::vector<T>& got,
                     const std::vector<T>& expected) {
  ++tally.tensors;
  tally.elements += expected.size();
  INFO(label);
  REQUIRE(got.size() == expected.size());
  size_t differing = 0;
  size_t first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &expected[i], sizeof(T)) != 0 && differing++ == 0) first = i;
  }
  INFO(differing << " of " << got.size() << " elements differ bitwise"
                 << (differing ? "; first at index " + std::to_string(first) + ": got " + value_and_bits(got[first]) +
                                     ", expected " + value_and_bits(expected[first])
                               : std::string()));
  CHECK(differing == 0);
}

template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// Exact for the stored inputs: the float32 files hold float32 values.
template <class T>
std::vector<T> narrow(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<T>(v[i]);
  return out;
}

}  // namespace bn::conformance

#endif
