// Facts about the machine the layer runs on, read once.
#pragma once

#include <cstdint>

namespace bn::parallel {

// Bytes of one instance of the last-level data cache (sysfs, else the C library); 0 when unknown.
int64_t last_level_cache_bytes();

// Bytes of one core's level-2 data (or unified) cache; 0 when unknown.
int64_t l2_cache_bytes();

// Makes last_level_cache_bytes() return `bytes` from now on (bytes <= 0: the machine's value
// again), so that white-box tests can reach the paths planned for tensors larger than the cache
// with small tensors. Not exported from the shared library.
void override_last_level_cache_bytes(int64_t bytes);
// The same for l2_cache_bytes(): bytes > 0 that size, < 0 unknown (0 returned), 0 the machine's.
void override_l2_cache_bytes(int64_t bytes);

}  // namespace bn::parallel
