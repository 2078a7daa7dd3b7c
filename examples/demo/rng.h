/* A small seeded PRNG of our own (PCG32, O'Neill 2014) plus Box-Muller normals.
 * Everything random in the demo (init, shuffles, synthetic data) comes from here, so a
 * run is reproducible from its seed on any platform. */
#ifndef BN_DEMO_RNG_H
#define BN_DEMO_RNG_H

#include <stdint.h>

typedef struct {
  uint64_t state;
  uint64_t inc; /* odd: selects one of 2^63 streams */
} Rng;

void rng_seed(Rng* rng, uint64_t seed, uint64_t stream);
uint32_t rng_u32(Rng* rng);
/* Uniform in [0, 1) with 24 random bits (exactly representable as float). */
double rng_uniform(Rng* rng);
/* Uniform integer in [0, bound), without modulo bias. bound >= 1. */
uint32_t rng_below(Rng* rng, uint32_t bound);
/* Standard normal N(0, 1). */
double rng_normal(Rng* rng);
/* Fisher-Yates shuffle of idx[0..n). */
void rng_shuffle(Rng* rng, int* idx, int n);

#endif
