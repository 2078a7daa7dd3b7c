// The machine's copy bandwidth: the yardstick of the bandwidth bound.
#pragma once

#include <cstddef>

namespace bn::bench {

// Last-level cache size in bytes (sysfs, then sysconf; 32 MiB when unknown).
size_t last_level_cache_bytes();

// Bytes moved per second, counting the read and the write (2 * bytes / time), for a copy of
// `bytes` (much larger than the LLC) split over `threads` threads; best of `reps`.
struct CopyBandwidth {
  double memcpy_rate = 0;  // glibc memcpy
  double stream_rate = 0;  // SSE2 loads + non-temporal stores (0 where not compiled in)
  // The bound uses the faster: both are copies the hardware sustains, and an output that is
  // not read back can be written with non-temporal stores.
  double best() const { return memcpy_rate > stream_rate ? memcpy_rate : stream_rate; }
};
CopyBandwidth copy_bandwidth(size_t bytes, int threads, int reps);

}  // namespace bn::bench
