// 16-bit floating-point element types and their scalar conversions, in portable C++.
//
//  - f16:  IEEE 754 binary16 (1 sign, 5 exponent, 10 fraction bits; subnormals, inf, NaN).
//  - bf16: bfloat16, the top half of a binary32 (1 sign, 8 exponent, 7 fraction bits).
//
// Both are tags over the raw bits, so the caller's uint16_t buffers are read as they are.
// Widening to float is exact. Narrowing rounds to nearest, ties to even; a float beyond the
// largest finite value (after rounding) becomes inf; NaN stays NaN (quiet, sign and the top
// payload bits kept), which is what the x86 conversion instructions (F16C, AVX-512) do, so
// the scalar and the vector paths agree bit for bit.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace bn::kernels {

struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline uint32_t float_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}
inline float bits_float(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// --- bf16 -----------------------------------------------------------------------------
inline float to_float(bf16 h) { return bits_float(static_cast<uint32_t>(h.bits) << 16); }

inline bf16 to_bf16(float v) {
  const uint32_t b = float_bits(v);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return bf16{static_cast<uint16_t>((b >> 16) | 0x0040u)};  // quiet NaN
  // Round to nearest even on the 16 dropped bits: adding 0x7FFF (+1 when the kept part is
  // odd) carries into the kept part exactly when the dropped part is above half (or half
  // and odd). A carry out of the largest finite value gives the bits of inf, as it should.
  return bf16{static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16)};
}

// --- f16 ------------------------------------------------------------------------------
inline float to_float(f16 h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1Fu;
  const uint32_t fraction = h.bits & 0x3FFu;
  if (exponent == 0x1F) {  // inf, or NaN made quiet
    return bits_float(sign | 0x7F800000u | (fraction << 13) | (fraction ? 0x00400000u : 0u));
  }
  if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (fraction << 13));  // rebias 15 -> 127
  // Zero or subnormal: fraction * 2^-24, exact in float.
  const float magnitude = static_cast<float>(fraction) * 0x1p-24f;
  return bits_float(sign | float_bits(magnitude));
}

inline f16 to_f16(float v) {
  const uint32_t b = float_bits(v);
  const auto sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return f16{static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu))};  // quiet NaN
  // 65520 = 65504 (the largest f16) + half an ulp: a tie that rounds to the even 2^16, i.e. inf.
  if (a >= 0x477FF000u) return f16{static_cast<uint16_t>(sign | 0x7C00u)};
  if (a >= 0x38800000u) {  // normal f16 (>= 2^-14): rebias the exponent, round the 13 dropped bits
    const uint32_t r = a - 0x38000000u;
    return f16{static_cast<uint16_t>(sign | ((r + 0xFFFu + ((r >> 13) & 1u)) >> 13))};
  }
  // Subnormal f16 (or zero): round(|v| * 2^24) with |v| = m * 2^(e - 150), m the 24-bit
  // significand, so the result is m / 2^(126 - e) rounded to nearest even. A carry to 0x400
  // is the smallest normal, correctly.
  const uint32_t e = a >> 23;
  if (e < 102) return f16{sign};  // |v| < 2^-25: rounds to zero (2^-25 itself is a tie to even 0)
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - e;  // 14 .. 24
  uint32_t q = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (q & 1u))) ++q;
  return f16{static_cast<uint16_t>(sign | q)};
}

// --- generic access for kernels written over an element type E --------------------------
inline float to_float(float v) { return v; }
inline double to_float(double v) { return v; }

template <class E>
struct ComputeOf {
  using type = float;
};
template <>
struct ComputeOf<double> {
  using type = double;
};
// The type kernels compute in for elements E: double for double, float otherwise.
template <class E>
using Compute = typename ComputeOf<E>::type;

template <class E>
inline E from_compute(Compute<E> v) {
  if constexpr (std::is_same_v<E, bf16>) {
    return to_bf16(v);
  } else if constexpr (std::is_same_v<E, f16>) {
    return to_f16(v);
  } else {
    return v;
  }
}

// The forward's ReLU is open where its rounded output is > 0, i.e. where the value z before
// the rounding exceeds this threshold: half the smallest subnormal of E (that tie rounds to
// the even 0), 0 for float and double.
template <class E>
constexpr Compute<E> relu_threshold() {
  if constexpr (std::is_same_v<E, f16>) {
    return 0x1p-25f;
  } else if constexpr (std::is_same_v<E, bf16>) {
    return 0x1p-134f;
  } else {
    return Compute<E>(0);
  }
}

}  // namespace bn::kernels
