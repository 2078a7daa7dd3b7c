#include "parallel/machine.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>

namespace bn::parallel {
namespace {

// The size of one instance of a data or unified cache of CPU 0 from sysfs: of `want_level`,
// or of the highest level when want_level is 0 (one L3 of a chiplet, not the package's sum
// that sysconf may report); 0 when unreadable.
int64_t sysfs_cache_bytes(int want_level) {
  int64_t bytes = 0;
  int top = 0;
  for (int index = 0; index < 16; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    int level = 0;
    long long size = 0;
    char unit = 0, type[32] = {};
    FILE* f = std::fopen((dir + "level").c_str(), "r");
    if (!f) break;
    const bool got_level = std::fscanf(f, "%d", &level) == 1;
    std::fclose(f);
    f = std::fopen((dir + "size").c_str(), "r");
    if (!f) break;
    const int got_size = std::fscanf(f, "%lld%c", &size, &unit);
    std::fclose(f);
    f = std::fopen((dir + "type").c_str(), "r");
    if (!f) break;
    const bool got_type = std::fscanf(f, "%31s", type) == 1;
    std::fclose(f);
    if (!got_level || got_size < 1 || !got_type || std::string(type) == "Instruction") continue;
    const int64_t b = size * (unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : 1);
    if (want_level > 0 ? level == want_level : level > top) {
      top = level;
      bytes = b;
    }
  }
  return bytes;
}

std::atomic<int64_t> overridden{0};
std::atomic<int64_t> overridden_l2{0};

}  // namespace

void override_last_level_cache_bytes(int64_t bytes) { overridden.store(bytes, std::memory_order_relaxed); }

int64_t last_level_cache_bytes() {
  if (const int64_t o = overridden.load(std::memory_order_relaxed); o > 0) return o;
  static const int64_t bytes = [] {
    if (const int64_t b = sysfs_cache_bytes(0); b > 0) return b;
    const long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return v > 0 ? static_cast<int64_t>(v) : int64_t{0};
  }();
  return bytes;
}

void override_l2_cache_bytes(int64_t bytes) { overridden_l2.store(bytes, std::memory_order_relaxed); }

int64_t l2_cache_bytes() {
  if (const int64_t o = overridden_l2.load(std::memory_order_relaxed); o != 0) return o > 0 ? o : 0;
  static const int64_t bytes = [] {
    if (const int64_t b = sysfs_cache_bytes(2); b > 0) return b;
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? static_cast<int64_t>(v) : int64_t{0};
  }();
  return bytes;
}

}  // namespace bn::parallel
