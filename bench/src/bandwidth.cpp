#include "bandwidth.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "team.hpp"

namespace bn::bench {

// sysfs first: glibc's sysconf(_SC_LEVEL3_CACHE_SIZE) is wrong on some AMD guests
// (320 MiB for a 32 MiB L3 here).
size_t last_level_cache_bytes() {
  size_t best = 0;
  int best_level = 0;
  for (int index = 0; index < 16; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
    std::ifstream level_file(dir + "/level"), size_file(dir + "/size");
    int level = 0;
    std::string size_text;
    if (!(level_file >> level) || !(size_file >> size_text)) break;
    size_t size = std::strtoull(size_text.c_str(), nullptr, 10);
    if (size_text.back() == 'K') size <<= 10;
    if (size_text.back() == 'M') size <<= 20;
    if (level > best_level || (level == best_level && size > best)) {
      best_level = level;
      best = size;
    }
  }
  if (best > 0) return best;
  long llc = -1;
#ifdef _SC_LEVEL3_CACHE_SIZE
  llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
  return llc > 0 ? static_cast<size_t>(llc) : size_t{32} << 20;
}

namespace {

#if defined(__SSE2__)
// Copies with 16-byte loads and non-temporal stores (no read-for-ownership of dst).
void stream_copy(char* dst, const char* src, size_t bytes) {
  for (size_t i = 0; i < bytes; i += 64) {
    const __m128i a = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  _mm_sfence();
}
#endif

// Best rate over reps of copy(dst, src, bytes) split in 64-byte-aligned parts over the team.
template <class Copy>
double best_rate(Team& team, char* dst, const char* src, size_t bytes, int reps, Copy copy) {
  auto run = [&] {
    team.run([&](int t, int nt) {
      auto [b, e] = split_range(static_cast<int64_t>(bytes / 64), t, nt);
      copy(dst + b * 64, src + b * 64, static_cast<size_t>(e - b) * 64);
    });
  };
  run();  // warm-up (thread start, TLB)
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, 2.0 * static_cast<double>(bytes) / s);
  }
  return best;
}

}  // namespace

CopyBandwidth copy_bandwidth(size_t bytes, int threads, int reps) {
  bytes = (bytes + 4095) / 4096 * 4096;
  char* src = static_cast<char*>(std::aligned_alloc(4096, bytes));
  char* dst = static_cast<char*>(std::aligned_alloc(4096, bytes));
  if (!src || !dst) {
    std::free(src);
    std::free(dst);
    throw std::bad_alloc();
  }
  std::memset(src, 1, bytes);  // touch every page before timing
  std::memset(dst, 2, bytes);
  Team team(threads);
  CopyBandwidth bw;
  bw.memcpy_rate = best_rate(team, dst, src, bytes, reps,
                             [](char* d, const char* s, size_t n) { std::memcpy(d, s, n); });
#if defined(__SSE2__)
  bw.stream_rate = best_rate(team, dst, src, bytes, reps, stream_copy);
#endif
  std::free(src);
  std::free(dst);
  return bw;
}

}  // namespace bn::bench
