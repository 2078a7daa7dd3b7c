// Helpers for the C++ wrapper tier, shared by the Catch2 program and the -fno-exceptions
// program (so no Catch2 here): owners for raw C handles (the independent path every wrapper
// result is compared with), seeded data and a bitwise comparison.
#pragma once

#include <batchnorm/batchnorm.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace cpp_test {

using RawConfig = std::unique_ptr<bn_config, void (*)(bn_config*)>;
using RawLayer = std::unique_ptr<bn_layer, void (*)(bn_layer*)>;

// A config straight from bn_config_create (null on failure, which the callers check).
inline RawConfig raw_config() {
  bn_config* cfg = nullptr;
  bn_config_create(&cfg);
  return RawConfig(cfg, &bn_config_destroy);
}

// bn_create through the C API only; null on failure.
inline RawLayer raw_layer(const bn_config* cfg, const std::vector<int64_t>& shape) {
  bn_layer* layer = nullptr;
  bn_create(cfg, shape.data(), static_cast<int32_t>(shape.size()), &layer);
  return RawLayer(layer, &bn_destroy);
}

template <class T>
constexpr bn_dtype dtype_of() {
  return sizeof(T) == 8 ? BN_F64 : BN_F32;
}

inline std::size_t product(const std::vector<int64_t>& shape) {
  std::size_t n = 1;
  for (int64_t d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

// Values in [-2, 2) from a 64-bit LCG, shifted by `offset` (a non-zero mean exercises the
// statistics more than centred data).
template <class T>
std::vector<T> seeded(std::size_t n, uint64_t seed, double offset = 0.0) {
  std::vector<T> v(n);
  uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (auto& e : v) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    e = static_cast<T>(static_cast<double>(s >> 11) / 9007199254740992.0 * 4.0 - 2.0 + offset);
  }
  return v;
}

// Same length and the same bytes: NaN payloads and signed zeros included.
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

inline bool contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

// bn_get_param through the C API.
template <class T>
std::vector<T> raw_param(const bn_layer* layer, bn_param which) {
  const int64_t n = bn_num_features(layer);
  std::vector<T> out(n > 0 ? static_cast<std::size_t>(n) : 0);
  if (bn_get_param(layer, which, out.data(), n) != BN_OK) out.clear();
  return out;
}

// Leaves a known message in bn_last_error() (from a NULL argument), so a later check can tell
// whether a C call failed in between.
inline void mark_last_error() {
  bn_num_features(nullptr);
}

}  // namespace cpp_test
