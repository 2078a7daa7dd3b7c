// Facts about the machine the layer runs on, read once.
#pragma once

#include <cstdint>

namespace bn::parallel {

// Bytes of one instance of the last-level data cache (sysfs, else the C library); 0 when unknown.
int64_t last_level_cache_bytes();

}  // namespace bn::parallel
