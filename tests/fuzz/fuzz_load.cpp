// libFuzzer target: arbitrary bytes as a state blob (public C header only).
//
// Each input is tried as it is and, when long enough, "resealed" (the size field and the
// CRC-32C recomputed, as docs/state_format.md defines them) so that mutations get past the
// checksum and reach the checks of the fields and values. Each candidate goes to bn_load on
// a few freshly made layers and to bn_create_from_state. Beyond "no crash, no leak, no
// sanitizer report", the target checks:
//   - a refusal is BN_ERR_CORRUPT_DATA, _INVALID_ARGUMENT or _SHAPE, and leaves the layer's
//     blob bitwise as it was;
//   - a blob that loads saves back to the same bytes (but for the writer's library version
//     and so the checksum), and the layer then runs training and inference forwards, a
//     backward and another save without BN_ERR_INTERNAL.
// Seeds: tests/fuzz/corpus/load/ (valid blobs of several configurations and damaged ones).
#include <batchnorm/batchnorm.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using Bytes = std::vector<uint8_t>;

[[noreturn]] void bug() {
  __builtin_trap();
}

void check(bool ok) {
  if (!ok) bug();
}

void not_internal(bn_status s) {
  check(s != BN_ERR_INTERNAL && s != BN_ERR_OUT_OF_MEMORY);
}

uint32_t crc32c(const uint8_t* p, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void put_le(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t get_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

Bytes save(const bn_layer* layer) {
  int64_t size = 0;
  check(bn_save(layer, nullptr, 0, &size) == BN_OK && size > 0);
  Bytes blob(static_cast<size_t>(size));
  check(bn_save(layer, blob.data(), size, &size) == BN_OK);
  return blob;
}

// Equal but for the writer's version (bytes 12..15) and the checksum (last 4 bytes).
bool same_state(const Bytes& a, const uint8_t* b, size_t n) {
  if (a.size() != n || n < 36) return false;
  return std::memcmp(a.data(), b, 12) == 0 && std::memcmp(a.data() + 16, b + 16, n - 20) == 0;
}

size_t element_size(bn_dtype d) {
  return d == BN_F64 ? 8 : (d == BN_BF16 || d == BN_F16) ? 2 : 4;
}

// A training forward, a backward, an inference forward and a save on `shape`.
void exercise(bn_layer* layer, const int64_t* shape, int32_t ndim) {
  bn_dtype dtype = -1;
  check(bn_get_dtype(layer, &dtype) == BN_OK);
  int64_t n = 1;
  for (int32_t d = 0; d < ndim; ++d) {
    if (shape[d] < 0 || (shape[d] > 0 && n > (int64_t{1} << 14) / shape[d])) return;  // keep it small
    n *= shape[d];
  }
  const int64_t c = bn_num_features(layer);
  check(c >= 1);
  if (c > (int64_t{1} << 14)) return;
  const size_t es = element_size(dtype), ps = dtype == BN_F64 ? 8 : 4;
  std::vector<uint8_t> x(static_cast<size_t>(n) * es), y(x.size()), dx(x.size());
  std::vector<uint8_t> dgamma(static_cast<size_t>(c) * ps), dbeta(dgamma.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<uint8_t>(i * 37 % 61);  // finite in every type
  not_internal(bn_set_training(layer, 1));
  const bn_status f = bn_forward(layer, shape, ndim, x.data(), y.data());
  not_internal(f);
  if (f == BN_OK) {
    not_internal(bn_backward(layer, shape, ndim, x.data(), y.data(), dx.data(), dgamma.data(), dbeta.data()));
  }
  not_internal(bn_set_training(layer, 0));
  not_internal(bn_forward(layer, shape, ndim, x.data(), y.data()));
  save(layer);
}

// The layers bn_load is tried on: different dtypes and structures, so that some blobs fit.
struct Prepared {
  bn_dtype dtype;
  int64_t shape[4];
  int32_t ndim;
  int32_t axis;  // the single kept axis
  int renorm;
  int64_t virtual_batch_size;
};
constexpr Prepared kPrepared[] = {
    {BN_F32, {6, 5}, 2, -1, 0, 0}, {BN_F64, {4, 3, 2, 2}, 4, 1, 0, 0}, {BN_BF16, {2, 2, 2, 4}, 4, -1, 0, 0},
    {BN_F32, {8, 4}, 2, -1, 1, 0}, {BN_F32, {8, 3}, 2, -1, 0, 2},
};

bn_layer* make(const Prepared& p) {
  bn_config* cfg = nullptr;
  check(bn_config_create(&cfg) == BN_OK);
  check(bn_config_set_dtype(cfg, p.dtype) == BN_OK);
  check(bn_config_set_axes(cfg, &p.axis, 1) == BN_OK);
  if (p.renorm) check(bn_config_set_renorm(cfg, 1, 3.0, 0.25, 5.0, 0.99) == BN_OK);
  check(bn_config_set_virtual_batch_size(cfg, p.virtual_batch_size) == BN_OK);
  bn_layer* layer = nullptr;
  check(bn_create(cfg, p.shape, p.ndim, &layer) == BN_OK);
  bn_config_destroy(cfg);
  return layer;
}

void try_blob(const uint8_t* data, size_t size) {
  const auto n = static_cast<int64_t>(size);
  for (const Prepared& p : kPrepared) {
    bn_layer* layer = make(p);
    const Bytes before = save(layer);
    const bn_status st = bn_load(layer, data, n);
    if (st == BN_OK) {
      check(same_state(save(layer), data, size));
      exercise(layer, p.shape, p.ndim);
    } else {
      check(st == BN_ERR_CORRUPT_DATA || st == BN_ERR_INVALID_ARGUMENT || st == BN_ERR_SHAPE);
      check(bn_last_error()[0] != '\0');
      check(save(layer) == before);
    }
    bn_destroy(layer);
  }
  bn_layer* created = nullptr;
  const bn_status st = bn_create_from_state(data, n, &created);
  if (st != BN_OK) {
    // No bytes at all (libFuzzer's and the replay's empty input: data may be NULL) is a NULL
    // argument; any bytes that do not make a state are a damaged blob.
    check((st == BN_ERR_CORRUPT_DATA || (data == nullptr && st == BN_ERR_INVALID_ARGUMENT)) && created == nullptr);
    return;
  }
  check(same_state(save(created), data, size));
  // The input shape it was built for (docs/state_format.md: ndim at 36, sizes from 40).
  int64_t shape[8] = {};
  const auto ndim = static_cast<int32_t>(get_le(data + 36, 4));
  for (int32_t d = 0; d < ndim && d < 8; ++d) shape[d] = static_cast<int64_t>(get_le(data + 40 + 8 * d, 8));
  exercise(created, shape, ndim);
  check(bn_load(created, data, n) == BN_OK);  // its own blob always fits
  bn_destroy(created);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try_blob(data, size);
  // Resealed: the size field and the checksum made valid.
  if (size >= 36) {
    Bytes fixed(data, data + size);
    put_le(fixed.data() + 16, size, 8);
    put_le(fixed.data() + size - 4, crc32c(fixed.data(), size - 4), 4);
    if (fixed != Bytes(data, data + size)) try_blob(fixed.data(), fixed.size());
  }
  return 0;
}
