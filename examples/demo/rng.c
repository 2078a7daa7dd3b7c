#include "rng.h"

#include <math.h>

/* PCG32 (XSH RR): a 64-bit LCG whose output is the high bits xor-shifted and rotated by
 * an amount taken from the top bits of the state. */
static const uint64_t kPcgMultiplier = 6364136223846793005ULL;

uint32_t rng_u32(Rng* rng) {
  uint64_t old = rng->state;
  rng->state = old * kPcgMultiplier + rng->inc;
  uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
  uint32_t rot = (uint32_t)(old >> 59u);
  return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

void rng_seed(Rng* rng, uint64_t seed, uint64_t stream) {
  rng->state = 0;
  rng->inc = (stream << 1u) | 1u;
  rng_u32(rng);
  rng->state += seed;
  rng_u32(rng);
}

double rng_uniform(Rng* rng) {
  return (double)(rng_u32(rng) >> 8) * (1.0 / 16777216.0);
}

uint32_t rng_below(Rng* rng, uint32_t bound) {
  /* Reject the top partial copy of [0, bound) in [0, 2^32) so every value is equally likely. */
  uint32_t threshold = (uint32_t)(-bound) % bound;
  for (;;) {
    uint32_t r = rng_u32(rng);
    if (r >= threshold) return r % bound;
  }
}

double rng_normal(Rng* rng) {
  /* Box-Muller: for u1 in (0, 1] and u2 in [0, 1), sqrt(-2 ln u1) cos(2 pi u2) ~ N(0, 1).
   * (The sine twin is discarded to keep the generator stateless beyond PCG.) */
  const double two_pi = 6.283185307179586;
  double u1 = 1.0 - rng_uniform(rng);
  double u2 = rng_uniform(rng);
  return sqrt(-2.0 * log(u1)) * cos(two_pi * u2);
}

void rng_shuffle(Rng* rng, int* idx, int n) {
  for (int i = n - 1; i > 0; --i) {
    int j = (int)rng_below(rng, (uint32_t)(i + 1));
    int t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
  }
}
