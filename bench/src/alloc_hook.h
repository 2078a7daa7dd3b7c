/* Counts heap allocations made while counting is on, by interposing malloc & co. in the
 * bench executable (the shared libraries it loads bind to these definitions). Used to
 * check "no allocation per call" in the timed loops. */
#ifndef BN_BENCH_ALLOC_HOOK_H
#define BN_BENCH_ALLOC_HOOK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void bench_alloc_counting(int enabled);
uint64_t bench_alloc_count(void);

#ifdef __cplusplus
}
#endif

#endif
