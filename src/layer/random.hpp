// A portable random source for the initializers: the same seed gives bitwise the same
// values with every compiler, standard library and CPU. Only integer arithmetic and the
// IEEE basic operations (+ - * / sqrt, which are correctly rounded everywhere) are used;
// ln and cos are our own polynomials, because libm's differ between platforms in the last
// bit, and std::normal_distribution differs between standard libraries altogether.
// random.cpp is compiled with -ffp-contract=off so that no FMA changes a rounding.
#pragma once

#include <cstdint>

namespace bn {

// SplitMix64 (S. Vigna): state += 0x9e3779b97f4a7c15, then a bijective mix of the state.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}
  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix(state_);
  }
  // The output function; mix(0) == 0.
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

 private:
  uint64_t state_;
};

// The top 53 bits of a word as a double in [0, 1): (w >> 11) * 2^-53 (exact).
inline double unit_interval(uint64_t w) { return static_cast<double>(w >> 11) * 0x1p-53; }

// Natural logarithm of a finite u > 0 (to about 1 ulp), portable bit for bit.
double portable_log(double u);
// cos(2*pi*t) for t in [0, 1) (to about 1 ulp), portable bit for bit.
double portable_cos_2pi(double t);

// One standard normal value by Box-Muller from the next two words w1, w2:
//   u1 = ((w1 >> 11) + 1) * 2^-53 in (0, 1],  u2 = (w2 >> 11) * 2^-53 in [0, 1),
//   z = sqrt(-2 ln u1) * cos(2 pi u2)          (the sine half is not used),
// so |z| <= sqrt(106 ln 2) < 8.58.
double standard_normal(SplitMix64& rng);

}  // namespace bn
