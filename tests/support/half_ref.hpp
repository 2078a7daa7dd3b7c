// An independent model of the 16-bit floating-point formats for the tests: values are
// decoded with ldexp from (sign, exponent, fraction) and encoded by scaling to an integer
// significand and rounding with std::nearbyint (round to nearest even in the default
// rounding mode), in double. It shares nothing with src/kernels/half.hpp, which works on
// the bit patterns of float.
//
// A format has `frac` fraction bits and `ebits` exponent bits (bias 2^(ebits-1) - 1):
//   binary16: frac 10, ebits 5;   bfloat16: frac 7, ebits 8.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace bn_test {

struct HalfFormat {
  int frac;
  int ebits;
  int bias() const { return (1 << (ebits - 1)) - 1; }
  int emax_field() const { return (1 << ebits) - 1; }
  // Smallest normal exponent (1 - bias) and the largest finite value.
  int emin() const { return 1 - bias(); }
  double max_finite() const { return std::ldexp(2.0 - std::ldexp(1.0, -frac), bias()); }
  // Distance to the next representable magnitude above |v| (finite v below max_finite):
  // 2^(e - frac) for |v| in [2^e, 2^(e+1)), e >= emin; 2^(emin - frac) below.
  double ulp(double v) const {
    const double a = std::fabs(v);
    int e = emin();
    if (a >= std::ldexp(1.0, emin())) e = std::ilogb(a);
    return std::ldexp(1.0, e - frac);
  }
};

inline constexpr HalfFormat kBinary16{10, 5};
inline constexpr HalfFormat kBfloat16{7, 8};

// The value of a bit pattern (NaN for every NaN pattern).
inline double half_decode(HalfFormat f, uint16_t bits) {
  const bool negative = (bits >> (f.frac + f.ebits)) & 1u;
  const int exponent = (bits >> f.frac) & f.emax_field();
  const uint32_t fraction = bits & ((1u << f.frac) - 1u);
  double magnitude;
  if (exponent == f.emax_field()) {
    magnitude = fraction ? NAN : INFINITY;
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<double>(fraction), f.emin() - f.frac);
  } else {
    magnitude = std::ldexp(static_cast<double>(fraction + (1u << f.frac)), exponent - f.bias() - f.frac);
  }
  return negative ? -magnitude : magnitude;
}

// Round to nearest even; beyond the largest finite value (after rounding) gives inf. NaN
// gives the canonical quiet NaN with v's sign (callers compare NaN-ness, not payloads).
inline uint16_t half_encode(HalfFormat f, double v) {
  const uint32_t sign = std::signbit(v) ? (1u << (f.frac + f.ebits)) : 0u;
  const uint32_t exp_all = static_cast<uint32_t>(f.emax_field()) << f.frac;
  if (std::isnan(v)) return static_cast<uint16_t>(sign | exp_all | (1u << (f.frac - 1)));
  const double a = std::fabs(v);
  if (a == 0) return static_cast<uint16_t>(sign);
  if (std::isinf(a)) return static_cast<uint16_t>(sign | exp_all);
  // a = q * 2^(e - frac) with q an integer of frac+1 bits (or fewer below the normal range).
  int e = std::max(std::ilogb(a), f.emin());
  double q = std::nearbyint(std::ldexp(a, f.frac - e));
  if (q == std::ldexp(1.0, f.frac + 1)) {  // rounded up to the next binade
    q /= 2;
    ++e;
  }
  if (e > f.bias()) return static_cast<uint16_t>(sign | exp_all);  // overflow: inf
  const auto qi = static_cast<uint32_t>(q);
  if (qi < (1u << f.frac)) return static_cast<uint16_t>(sign | qi);  // subnormal (or zero), e == emin
  const auto field = static_cast<uint32_t>(e + f.bias());
  return static_cast<uint16_t>(sign | (field << f.frac) | (qi - (1u << f.frac)));
}

// v rounded to the format (the decoded value of half_encode).
inline double half_round(HalfFormat f, double v) { return half_decode(f, half_encode(f, v)); }

inline bool half_is_nan(HalfFormat f, uint16_t bits) {
  const uint32_t exp_all = static_cast<uint32_t>(f.emax_field()) << f.frac;
  return (bits & exp_all) == exp_all && (bits & ((1u << f.frac) - 1u)) != 0;
}

}  // namespace bn_test
