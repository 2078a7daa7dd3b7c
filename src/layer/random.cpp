#include "layer/random.hpp"

#include <cmath>

namespace bn {
namespace {

// 1/n! for n = 0..19, for the Taylor series (computed at compile time, so identical everywhere).
struct InverseFactorials {
  double v[20] = {};
  constexpr InverseFactorials() {
    double f = 1.0;
    for (int n = 0; n < 20; ++n) {
      if (n > 1) f *= n;
      v[n] = 1.0 / f;
    }
  }
};
constexpr InverseFactorials kInverseFactorial{};

// ln 2 split so that e*kLn2Hi is exact for |e| < 2^11 (the low 32 bits of kLn2Hi are zero).
constexpr double kLn2Hi = 6.93147180369123816490e-01;
constexpr double kLn2Lo = 1.90821492927058770002e-10;
constexpr double kSqrtHalf = 0.70710678118654752440;
constexpr double kTwoPi = 6.28318530717958647692;

}  // namespace

// u = m * 2^e with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), s = f/(2 + f):
//   ln m = ln((1 + s)/(1 - s)) = 2*atanh(s) = 2*(s + s^3/3 + s^5/5 + ...),  |s| <= 0.1716,
// and s^25/25 is below 2^-53 relative to s, so the terms up to s^23/23 suffice.
double portable_log(double u) {
  int e = 0;
  double m = std::frexp(u, &e);  // exact: m in [0.5, 1)
  if (m < kSqrtHalf) {
    m *= 2.0;
    --e;
  }
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double s2 = s * s;
  double p = 1.0 / 23.0;
  for (int k = 21; k >= 3; k -= 2) p = p * s2 + 1.0 / k;
  const double log_m = 2.0 * s + 2.0 * s * (s2 * p);
  const double de = static_cast<double>(e);
  return de * kLn2Hi + (de * kLn2Lo + log_m);
}

// t = q/4 + r with q = floor(4t + 1/2) and |r| <= 1/8 (t - q/4 is exact), x = 2*pi*r in
// [-pi/4, pi/4]; then cos(2 pi t) is cos x, -sin x, -cos x or sin x for q mod 4 = 0..3.
// Taylor series up to x^18 (cos) and x^19 (sin): the next terms are below 2^-60.
double portable_cos_2pi(double t) {
  const double q = std::floor(4.0 * t + 0.5);
  const double r = t - q * 0.25;
  const double x = r * kTwoPi;
  const double x2 = x * x;
  // cos x = sum_k (-1)^k x^2k/(2k)!,  sin x = x * sum_k (-1)^k x^2k/(2k+1)!,  k = 0..9 (Horner in x^2).
  double c = 0.0, s = 0.0;
  for (int k = 9; k >= 0; --k) {
    const double sign = k % 2 ? -1.0 : 1.0;
    c = c * x2 + sign * kInverseFactorial.v[2 * k];
    s = s * x2 + sign * kInverseFactorial.v[2 * k + 1];
  }
  s *= x;
  switch (static_cast<int>(q) & 3) {
    case 0: return c;
    case 1: return -s;
    case 2: return -c;
    default: return s;
  }
}

double standard_normal(SplitMix64& rng) {
  const double u1 = static_cast<double>((rng.next() >> 11) + 1) * 0x1p-53;
  const double u2 = unit_interval(rng.next());
  return std::sqrt(-2.0 * portable_log(u1)) * portable_cos_2pi(u2);
}

}  // namespace bn
