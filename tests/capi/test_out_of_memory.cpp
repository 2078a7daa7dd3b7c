// BN_ERR_OUT_OF_MEMORY, provoked for real: this program (a process of its own, test
// capi.out_of_memory) lowers its address-space limit (RLIMIT_AS) a little above what it uses,
// so that the library's large allocations fail as they would on a machine without the memory.
// Every refusal must return BN_ERR_OUT_OF_MEMORY with a message naming the function, and
// change nothing (the snapshot of capi_support.hpp, bitwise).
//
// Not run under AddressSanitizer, ThreadSanitizer or valgrind: they reserve terabytes of
// address space for themselves, so an address-space limit cannot be set (the test reports a
// skip, exit code 77).
#include <sys/mman.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "capi_support.hpp"

using namespace capi_test;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define BN_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define BN_TEST_SANITIZED 1
#endif
#endif

namespace {

// The process's current address-space size (VmSize), in bytes.
size_t address_space_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmSize:") {
      size_t kib = 0;
      status >> kib;
      return kib * 1024;
    }
    std::getline(status, key);
  }
  return 0;
}

// Lowers RLIMIT_AS to the current size plus `headroom` bytes for the lifetime of the object.
class AddressSpaceLimit {
 public:
  explicit AddressSpaceLimit(size_t headroom) {
    REQUIRE(getrlimit(RLIMIT_AS, &saved_) == 0);
    const size_t now = address_space_bytes();
    REQUIRE(now > 0);
    rlimit lowered = saved_;
    lowered.rlim_cur = static_cast<rlim_t>(now + headroom);
    REQUIRE(setrlimit(RLIMIT_AS, &lowered) == 0);
  }
  ~AddressSpaceLimit() { setrlimit(RLIMIT_AS, &saved_); }
  AddressSpaceLimit(const AddressSpaceLimit&) = delete;
  AddressSpaceLimit& operator=(const AddressSpaceLimit&) = delete;

 private:
  rlimit saved_{};
};

bool skip_reason(std::string& why) {
#ifdef BN_TEST_SANITIZED
  why = "built with a sanitizer, which reserves the address space an RLIMIT_AS would have to cover";
  return true;
#else
  const char* preload = std::getenv("LD_PRELOAD");
  if (preload && std::string(preload).find("vgpreload") != std::string::npos) {
    why = "running under valgrind, which manages the address space itself";
    return true;
  }
  return false;
#endif
}

// Ends the process with CTest's skip code (SKIP_RETURN_CODE 77) and the reason.
void skip_if_unsupported() {
  std::string why;
  if (!skip_reason(why)) return;
  std::printf("SKIPPED: %s\n", why.c_str());
  std::fflush(stdout);
  std::exit(77);
}

constexpr size_t kHeadroom = size_t{256} << 20;  // 256 MiB: every small allocation still succeeds

}  // namespace

TEST_CASE("bn_create with more features than memory is BN_ERR_OUT_OF_MEMORY", "[capi][out_of_memory]") {
  skip_if_unsupported();
  for (bn_dtype dtype : {BN_F32, BN_F64, BN_F16}) {
    Config cfg = make_config();
    REQUIRE(bn_config_set_dtype(cfg.get(), dtype) == BN_OK);
    // 2^31-1 features is the most bn_create accepts; 2^28 features need 2 GiB per statistic.
    for (int64_t features : {int64_t{2147483647}, int64_t{1} << 28, int64_t{3} << 25}) {
      CAPTURE(dtype, features);
      const int64_t shape[] = {4, features};
      bn_layer* const sentinel = reinterpret_cast<bn_layer*>(static_cast<uintptr_t>(0x5a5a5a50));
      bn_layer* out = sentinel;
      bn_status status;
      {
        AddressSpaceLimit limit(kHeadroom);
        poison_last_error();
        status = bn_create(cfg.get(), shape, 2, &out);
      }
      check_status(status, BN_ERR_OUT_OF_MEMORY, {"bn_create"});
      CHECK(std::string(bn_last_error()).find("out of memory") != std::string::npos);
      CHECK(out == sentinel);
    }
    // The config is still usable and a layer that fits is built.
    Layer layer = make_layer(cfg.get(), {4, 1024});
    CHECK(bn_num_features(layer.get()) == 1024);
  }
}

TEST_CASE("a forward whose scratch cannot be allocated is BN_ERR_OUT_OF_MEMORY and changes nothing",
          "[capi][out_of_memory]") {
  skip_if_unsupported();
  // The first call with a new shape plans it and allocates per-block partial sums (about 1/16
  // of x in bytes). x is an untouched anonymous mapping: no memory is used, the forward must
  // fail on its allocation before reading it.
  constexpr int64_t kFeatures = int64_t{1} << 16;
  constexpr int64_t kRows = int64_t{1} << 13;  // x: 2^29 elements, 2 or 4 GiB of address space
  // A training forward (an inference forward needs no partial sums).
  for (bn_dtype dtype : {BN_F32, BN_F64}) {
    CAPTURE(dtype);
    const Probe p(dtype, {64, kFeatures}, true);
    const size_t bytes = static_cast<size_t>(kFeatures * kRows) * (dtype == BN_F64 ? 8 : 4);
    void* x = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    REQUIRE(x != MAP_FAILED);
    const int64_t shape[] = {kRows, kFeatures};
    const Snapshot before = snapshot(p);
    bn_status status;
    {
      AddressSpaceLimit limit(size_t{64} << 20);  // the partials need 2 x 64 MiB
      poison_last_error();
      status = bn_forward(p.get(), shape, 2, x, x);  // in place: y == x
    }
    check_status(status, BN_ERR_OUT_OF_MEMORY, {"bn_forward"});
    CHECK(snapshot(p) == before);
    // Nothing was written into y (== x): the mapping is still all zero pages.
    const auto* words = static_cast<const uint64_t*>(x);
    bool untouched = true;
    for (size_t i = 0; i < bytes / 8; i += 4096 / 8) untouched = untouched && words[i] == 0;
    CHECK(untouched);
    munmap(x, bytes);
  }
}
