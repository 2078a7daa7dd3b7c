#include "tensors.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <new>

namespace bn::bench {
namespace {

// Small deterministic generator (64-bit LCG, top bits) -> uniform [0, 1).
struct Lcg {
  uint64_t state;
  float next() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<float>(state >> 40) * (1.0f / 16777216.0f);
  }
};

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even, as the library's kernels and the CPUs' conversion instructions do.
uint16_t to_bf16(float f) {
  const uint32_t u = bits_of(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }

uint16_t to_f16(float f) {
  uint32_t u = bits_of(f);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (u >= 0x477ff000u) return sign | 0x7c00u;  // rounds to infinity (>= 65520)
  if (u < 0x38800000u) {                        // below 2^-14: a subnormal half (or 0)
    // Adding 0.5 leaves an ulp of 2^-24 (the half subnormals' spacing): the FPU rounds.
    return sign | static_cast<uint16_t>(bits_of(float_of(u) + 0.5f) - 0x3f000000u);
  }
  const uint32_t odd = (u >> 13) & 1u;
  u += 0xc8000fffu + odd;  // rebias the exponent (15 - 127) and round to nearest even
  return sign | static_cast<uint16_t>(u >> 13);
}
float from_f16(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) return float_of(sign) + (sign ? -1.0f : 1.0f) * std::ldexp(static_cast<float>(m), -24);
  if (e == 31) return float_of(sign | 0x7f800000u | (m << 13));
  return float_of(sign | ((e + 112) << 23) | (m << 13));
}

}  // namespace

const char* mode_name(Mode mode) {
  switch (mode) {
    case Mode::kInference: return "fwd-infer";
    case Mode::kTraining: return "fwd-train";
    case Mode::kBackward: return "backward";
  }
  return "?";
}

Tensors::Tensors(const Case& k, const Placement& where)
    : shape(k),
      x(static_cast<size_t>(k.elements()), where.in),
      y(static_cast<size_t>(k.elements()), where.out),
      dy(static_cast<size_t>(k.elements()), where.in),
      dx(static_cast<size_t>(k.elements()), where.out),
      gamma(k.c), beta(k.c), moving_mean(k.c), moving_var(k.c), dgamma(k.c), dbeta(k.c) {
  Lcg g{0x5eed};
  for (int64_t f = 0; f < k.c; ++f) {
    gamma[f] = 0.5f + g.next();
    beta[f] = g.next() - 0.5f;
    moving_mean[f] = 0.2f * g.next() - 0.1f;
    moving_var[f] = 0.5f + g.next();
  }
  // x: uniform noise around a per-channel offset, so means differ from channel to channel.
  const int64_t m = k.elements();
  for (int64_t i = 0; i < m; ++i) {
    x[i] = 2.0f * g.next() - 1.0f + 0.1f * static_cast<float>(channel_of(i) % 7);
    dy[i] = 2.0f * g.next() - 1.0f;
  }
  if (half()) {
    x16 = HalfBuffer(static_cast<size_t>(m), where.in);
    dy16 = HalfBuffer(static_cast<size_t>(m), where.in);
    y16 = HalfBuffer(static_cast<size_t>(m), where.out);
    dx16 = HalfBuffer(static_cast<size_t>(m), where.out);
    const bool bf = k.dtype == "bf16";
    for (int64_t i = 0; i < m; ++i) {
      x16[i] = bf ? to_bf16(x[i]) : to_f16(x[i]);
      dy16[i] = bf ? to_bf16(dy[i]) : to_f16(dy[i]);
      x[i] = bf ? from_bf16(x16[i]) : from_f16(x16[i]);  // the reference sees the same values
      dy[i] = bf ? from_bf16(dy16[i]) : from_f16(dy16[i]);
    }
  }
  poison_outputs();
}

void Tensors::widen_outputs() {
  if (!half()) return;
  const bool bf = shape.dtype == "bf16";
  for (size_t i = 0; i < y16.size(); ++i) y[i] = bf ? from_bf16(y16[i]) : from_f16(y16[i]);
  for (size_t i = 0; i < dx16.size(); ++i) dx[i] = bf ? from_bf16(dx16[i]) : from_f16(dx16[i]);
}

void Tensors::poison_outputs() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (size_t i = 0; i < y.size(); ++i) y[i] = nan;
  for (size_t i = 0; i < dx.size(); ++i) dx[i] = nan;
  const uint16_t nan16 = shape.dtype == "bf16" ? 0x7fc0 : 0x7e00;
  for (size_t i = 0; i < y16.size(); ++i) y16[i] = nan16;
  for (size_t i = 0; i < dx16.size(); ++i) dx16[i] = nan16;
  for (auto& v : dgamma) v = nan;
  for (auto& v : dbeta) v = nan;
}

}  // namespace bn::bench
