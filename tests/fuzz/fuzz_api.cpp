// Fuzz target: random sequences of C API calls with random shapes, options and values, through
// the public header only. The input bytes are decoded into calls: config setters with random
// and hostile values, bn_create with random ranks, sizes (zero, huge, negative) and axes,
// forwards and backwards whose shapes sometimes do not fit, parameters with wrong counts and
// non-finite values, modes, thread counts, folding, constraints, NaN/inf data.
//
// Invariants checked after every call (a violation aborts, which libFuzzer reports):
//  - the status is one of BN_OK .. BN_ERR_INTERNAL, and never BN_ERR_INTERNAL;
//  - a failing call leaves a message that starts with the function's name;
//  - a failing call on a layer changes nothing: every parameter and statistic, the mode, the
//    fused flag, the regularization loss and the backward of the last successful forward are
//    bitwise as before, and the caller's output buffers are not written.
// Allocation stays bounded: a call that the library would have to accept with more than
// kMaxElements elements (or features) is not made; calls it must refuse (negative sizes,
// products that overflow) are made with small buffers, which the library must not touch.
#include <batchnorm/batchnorm.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

constexpr int64_t kMaxElements = int64_t{1} << 14;
constexpr int kMaxCalls = 64;

[[noreturn]] void violated(const char* what, const char* detail) {
  std::fprintf(stderr, "fuzz_api: invariant violated: %s (%s)\n", what, detail);
  std::abort();
}

// ---------------------------------------------------------------------------
// Decoding: every read succeeds (zeros once the input is exhausted).
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool done() const { return pos_ >= size_; }
  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | u8();
    return v;
  }
  bool coin() { return (u8() & 1) != 0; }
  int flag() {  // mostly valid 0/1, sometimes not
    const uint8_t b = u8();
    static const int bad[] = {2, -1, 256, std::numeric_limits<int>::min()};
    return b < 224 ? (b & 1) : bad[b % 4];
  }
  int32_t enum_value(int32_t valid_count) {
    const uint8_t b = u8();
    if (b < 200) return static_cast<int32_t>(b % static_cast<uint8_t>(valid_count));
    static const int32_t bad[] = {-1, 100, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()};
    if (b < 240) return bad[b % 4];
    return valid_count + (b % 4);  // just past the last valid value
  }
  double real() {
    const uint8_t b = u8();
    static const double table[] = {0.0,
                                   1.0,
                                   -1.0,
                                   0.5,
                                   0.99,
                                   1e-3,
                                   2.0,
                                   -0.0,
                                   1.0000000000000002,
                                   1e-300,
                                   4.9e-324,
                                   std::numeric_limits<double>::max(),
                                   std::numeric_limits<double>::quiet_NaN(),
                                   std::numeric_limits<double>::infinity(),
                                   -std::numeric_limits<double>::infinity(),
                                   3.0e38};
    if (b < 224) return table[b % 16];
    const uint64_t bits = u64();
    double v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
  int64_t size() {
    const uint8_t b = u8();
    if (b < 160) return b % 9;  // small sizes, zero included
    static const int64_t table[] = {16,
                                    -1,
                                    -2,
                                    int64_t{1} << 31,
                                    (int64_t{1} << 31) - 1,
                                    int64_t{1} << 32,
                                    int64_t{1} << 62,
                                    std::numeric_limits<int64_t>::max(),
                                    std::numeric_limits<int64_t>::min(),
                                    33,
                                    64,
                                    int64_t{3037000500},  // its square overflows int64
                                    4096,
                                    100000,
                                    int64_t{1} << 21,
                                    5};
    if (b < 248) return table[b % 16];
    return static_cast<int64_t>(u64());
  }
  int32_t small_int(int32_t lo, int32_t hi) {  // mostly in [lo, hi], sometimes outside
    const uint8_t b = u8();
    if (b < 240) return lo + static_cast<int32_t>(b % static_cast<uint8_t>(hi - lo + 1));
    static const int32_t bad[] = {-1, 9, 4097, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max(),
                                  -9, 8, 1000};
    return bad[b % 8];
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------------------
// Buffers of the layer's element types.
size_t element_size(bn_dtype dtype) { return dtype == BN_F64 ? 8 : (dtype == BN_BF16 || dtype == BN_F16) ? 2 : 4; }
size_t param_size(bn_dtype dtype) { return dtype == BN_F64 ? 8 : 4; }

using Bytes = std::vector<unsigned char>;

// Values of one buffer: a pattern derived from the input, with NaN/inf/huge values injected.
void fill(Bytes& b, bn_dtype dtype, Input& in) {
  const size_t es = element_size(dtype);
  const size_t n = b.size() / es;
  uint64_t s = in.u64() | 1;
  const uint8_t special = in.u8();
  for (size_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    double v = static_cast<double>(s >> 11) / 9007199254740992.0 * 4.0 - 2.0;
    if (special >= 192 && (s >> 60) == 0) {
      static const double odd[] = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                                   -std::numeric_limits<double>::infinity(), 3.0e38};
      v = odd[special % 4];
    }
    if (es == 8) {
      std::memcpy(&b[i * 8], &v, 8);
    } else if (es == 4) {
      const float f = static_cast<float>(v);
      std::memcpy(&b[i * 4], &f, 4);
    } else {
      const float f = static_cast<float>(v);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      const uint16_t h = static_cast<uint16_t>(u >> 16);  // bfloat16 bits; any bits are valid f16 too
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
}

Bytes poisoned(size_t bytes) { return Bytes(bytes, 0xA5); }

// Elements of a shape when the library could accept it (docs/errors.md): -1 if ndim is out of
// range or a size is negative, -2 if the product of the non-zero sizes times the element size
// exceeds 2^63-1 (no buffer holds it, even when another size is 0); both must be refused.
int64_t acceptable_elements(const int64_t* shape, int32_t ndim, int64_t element_bytes) {
  if (ndim < 1 || ndim > 8) return -1;
  for (int32_t i = 0; i < ndim; ++i) {
    if (shape[i] < 0) return -1;
  }
  const int64_t limit = std::numeric_limits<int64_t>::max() / element_bytes;
  int64_t n = 1;
  bool zero = false;
  for (int32_t i = 0; i < ndim; ++i) {
    if (shape[i] == 0) {
      zero = true;
      continue;
    }
    if (n > limit / shape[i]) return -2;
    n *= shape[i];
  }
  return zero ? 0 : n;
}

// ---------------------------------------------------------------------------
// The harness state: one config, up to two layers.
struct LayerSlot {
  bn_layer* layer = nullptr;
  bn_dtype dtype = BN_F32;
  int32_t ndim = 0;
  int64_t shape[8] = {};  // the shape at create
  int64_t features = 0;
  // The last successful forward (for the snapshot's backward).
  bool forwarded = false;
  int64_t fshape[8] = {};
  Bytes fx, fy;
};

struct ConfigState {
  bn_config* cfg = nullptr;
  bn_dtype dtype = BN_F32;
  std::vector<int32_t> axes{-1};
};

struct Snapshot {
  std::vector<bn_status> status;
  std::vector<Bytes> bytes;
  int64_t features = 0;
  bool operator==(const Snapshot& o) const {
    return status == o.status && bytes == o.bytes && features == o.features;
  }
};

// Everything a caller can observe about a layer, without changing it.
Snapshot snapshot(const LayerSlot& s) {
  Snapshot snap;
  snap.features = bn_num_features(s.layer);
  const size_t ps = param_size(s.dtype);
  const auto f = static_cast<size_t>(s.features);
  for (bn_param which = BN_PARAM_GAMMA; which <= BN_PARAM_MOVING_STDDEV; ++which) {
    Bytes out = poisoned(f * ps);
    snap.status.push_back(bn_get_param(s.layer, which, out.data(), s.features));
    snap.bytes.push_back(out);
  }
  bn_mode mode = -1;
  int fused = -1;
  double loss = -1.0;
  snap.status.push_back(bn_get_mode(s.layer, &mode));
  snap.status.push_back(bn_get_fused(s.layer, &fused));
  snap.status.push_back(bn_regularization_loss(s.layer, &loss));
  Bytes scalars(sizeof mode + sizeof fused + sizeof loss);
  std::memcpy(scalars.data(), &mode, sizeof mode);
  std::memcpy(scalars.data() + sizeof mode, &fused, sizeof fused);
  std::memcpy(scalars.data() + sizeof mode + sizeof fused, &loss, sizeof loss);
  snap.bytes.push_back(scalars);
  if (s.forwarded) {
    const size_t n = s.fx.size();
    Bytes dy(n), dx = poisoned(n), dres = poisoned(n), dg = poisoned(f * ps), db = poisoned(f * ps);
    Input exhausted(nullptr, 0);  // fill()'s fixed pattern: the same dy before and after
    fill(dy, s.dtype, exhausted);
    snap.status.push_back(bn_backward_residual(s.layer, s.fshape, s.ndim, s.fx.data(), s.fy.data(), dy.data(),
                                               dx.data(), dres.data(), dg.data(), db.data()));
    for (Bytes* b : {&dx, &dres, &dg, &db}) snap.bytes.push_back(*b);
  }
  return snap;
}

// Before a call: a known message so that a stale one cannot pass for a fresh one.
void poison_message() {
  if (bn_num_features(nullptr) != -1) violated("bn_num_features(NULL) != -1", "");
}

// After a call: the status is known and a failure explains itself.
void check_status(bn_status s, const char* function) {
  if (s < BN_OK || s > BN_ERR_INTERNAL) violated("status out of range", function);
  if (s == BN_ERR_INTERNAL) violated("BN_ERR_INTERNAL", bn_last_error());
  if (s == BN_OK) return;
  const std::string message = bn_last_error();
  const std::string prefix = std::string(function) + ":";
  if (message.compare(0, prefix.size(), prefix) != 0 || message.size() <= prefix.size() + 1) {
    violated("a failure without its own message", (std::string(function) + " -> \"" + message + "\"").c_str());
  }
  if (std::string(bn_status_string(s)).rfind("BN_ERR_", 0) != 0) violated("bn_status_string", function);
}

// A call on a layer: the status checks, and on failure the snapshot comparison.
template <class Call>
bn_status layer_call(LayerSlot& s, const char* function, Call&& call) {
  const Snapshot before = snapshot(s);
  poison_message();
  const bn_status status = call();
  check_status(status, function);
  if (status != BN_OK && !(snapshot(s) == before)) violated("a failed call changed the layer", function);
  return status;
}

bn_status adjustment(void* user_data, const int64_t*, int32_t, double* scale, double* bias, int64_t features) {
  const int kind = *static_cast<const int*>(user_data);
  if (kind == 1) return BN_ERR_INVALID_ARGUMENT;  // the callback reports failure
  for (int64_t f = 0; f < features; ++f) {
    scale[f] = kind == 2 ? std::numeric_limits<double>::quiet_NaN() : 1.0 + 0.125 * static_cast<double>(f % 3);
    bias[f] = kind == 3 ? std::numeric_limits<double>::infinity() : 0.25;
  }
  return BN_OK;
}

class Harness {
 public:
  explicit Harness(Input& in) : in_(in) {
    if (bn_config_create(&config_.cfg) != BN_OK) violated("bn_config_create", bn_last_error());
  }
  ~Harness() {
    for (LayerSlot& s : slots_) bn_destroy(s.layer);
    bn_config_destroy(config_.cfg);
  }

  void step() {
    switch (in_.u8() % 16) {
      case 0: config_axes(); break;
      case 1: config_scalars(); break;
      case 2: config_enums(); break;
      case 3: config_renorm_and_more(); break;
      case 4: config_keras_params(); break;
      case 5:
      case 6: create(); break;
      case 7: layer_settings(); break;
      case 8:
      case 9:
      case 10: forward(); break;
      case 11:
      case 12: backward(); break;
      case 13: params(); break;
      case 14: fold_and_constraints(); break;
      default: misc(); break;
    }
  }

 private:
  template <class Call>
  void config_call(const char* function, Call&& call) {
    poison_message();
    check_status(call(), function);
  }

  void config_axes() {
    const int32_t count = in_.small_int(0, 3);
    std::vector<int32_t> axes(9);
    for (int32_t& a : axes) a = in_.small_int(-8, 7);
    const bool null_axes = in_.u8() > 250;
    poison_message();
    const bn_status s = bn_config_set_axes(config_.cfg, null_axes ? nullptr : axes.data(), count);
    check_status(s, "bn_config_set_axes");
    if (s == BN_OK) config_.axes.assign(axes.begin(), axes.begin() + count);
  }

  void config_scalars() {
    bn_config* cfg = config_.cfg;
    switch (in_.u8() % 8) {
      case 0: config_call("bn_config_set_momentum", [&] { return bn_config_set_momentum(cfg, in_.real()); }); break;
      case 1: config_call("bn_config_set_epsilon", [&] { return bn_config_set_epsilon(cfg, in_.real()); }); break;
      case 2: config_call("bn_config_set_center", [&] { return bn_config_set_center(cfg, in_.flag()); }); break;
      case 3: config_call("bn_config_set_scale", [&] { return bn_config_set_scale(cfg, in_.flag()); }); break;
      case 4: config_call("bn_config_set_trainable", [&] { return bn_config_set_trainable(cfg, in_.flag()); }); break;
      case 5:
        config_call("bn_config_set_cumulative_average",
                    [&] { return bn_config_set_cumulative_average(cfg, in_.flag()); });
        break;
      case 6: config_call("bn_config_set_relu", [&] { return bn_config_set_relu(cfg, in_.flag()); }); break;
      default:
        config_call("bn_config_set_virtual_batch_size",
                    [&] { return bn_config_set_virtual_batch_size(cfg, in_.size()); });
        break;
    }
  }

  void config_enums() {
    bn_config* cfg = config_.cfg;
    switch (in_.u8() % 5) {
      case 0: {
        const bn_dtype d = in_.enum_value(4);
        poison_message();
        const bn_status s = bn_config_set_dtype(cfg, d);
        check_status(s, "bn_config_set_dtype");
        if (s == BN_OK) config_.dtype = d;
        break;
      }
      case 1: config_call("bn_config_set_fused", [&] { return bn_config_set_fused(cfg, in_.enum_value(3)); }); break;
      case 2:
        config_call("bn_config_set_keras_rules", [&] { return bn_config_set_keras_rules(cfg, in_.enum_value(2)); });
        break;
      case 3:
        config_call("bn_config_set_moving_variance",
                    [&] { return bn_config_set_moving_variance(cfg, in_.enum_value(3)); });
        break;
      default:
        config_call("bn_config_set_single_value_policy",
                    [&] { return bn_config_set_single_value_policy(cfg, in_.enum_value(2)); });
        break;
    }
  }

  void config_renorm_and_more() {
    bn_config* cfg = config_.cfg;
    switch (in_.u8() % 3) {
      case 0: {
        const int enabled = in_.flag();
        const double rmax = in_.real(), rmin = in_.real(), dmax = in_.real(), m = in_.real();
        config_call("bn_config_set_renorm", [&] { return bn_config_set_renorm(cfg, enabled, rmax, rmin, dmax, m); });
        break;
      }
      case 1: {
        adjustment_kind_ = in_.u8() % 4;
        const bool on = in_.coin();
        config_call("bn_config_set_adjustment",
                    [&] { return bn_config_set_adjustment(cfg, on ? &adjustment : nullptr, &adjustment_kind_); });
        break;
      }
      default:
        config_call("bn_config_set_allreduce", [&] { return bn_config_set_allreduce(cfg, nullptr, nullptr); });
        break;
    }
  }

  void config_keras_params() {
    bn_config* cfg = config_.cfg;
    const bn_param which = in_.enum_value(4);
    switch (in_.u8() % 3) {
      case 0: {
        const bn_initializer kind = in_.enum_value(6);
        const double a = in_.real(), b = in_.real();
        const uint64_t seed = in_.u64();
        config_call("bn_config_set_initializer",
                    [&] { return bn_config_set_initializer(cfg, which, kind, a, b, seed); });
        break;
      }
      case 1: {
        const double l1 = in_.real(), l2 = in_.real();
        config_call("bn_config_set_regularizer", [&] { return bn_config_set_regularizer(cfg, which, l1, l2); });
        break;
      }
      default: {
        const bn_constraint kind = in_.enum_value(5);
        const double lo = in_.real(), hi = in_.real(), rate = in_.real();
        int32_t axes[9];
        for (int32_t& a : axes) a = in_.small_int(-3, 3);
        const int32_t count = in_.small_int(0, 3);
        config_call("bn_config_set_constraint",
                    [&] { return bn_config_set_constraint(cfg, which, kind, lo, hi, rate, axes, count); });
        break;
      }
    }
  }

  // An upper bound of the features bn_create could accept for this shape: the kept sizes as
  // the configured axes resolve, or every size when they do not resolve (then it refuses).
  int64_t feature_bound(const int64_t* shape, int32_t ndim) const {
    std::vector<bool> kept(static_cast<size_t>(ndim), false);
    bool resolved = !config_.axes.empty();
    for (int32_t a : config_.axes) {
      if (a < -ndim || a >= ndim) {
        resolved = false;
        break;
      }
      kept[static_cast<size_t>(a < 0 ? a + ndim : a)] = true;
    }
    int64_t f = 1;
    for (int32_t d = 0; d < ndim; ++d) {
      if (resolved && !kept[static_cast<size_t>(d)]) continue;
      if (shape[d] <= 0) continue;
      if (f > kMaxElements / shape[d]) return kMaxElements + 1;
      f *= shape[d];
    }
    return f;
  }

  void create() {
    LayerSlot& s = slots_[in_.u8() % 2];
    const int32_t ndim = in_.small_int(1, 5);
    int64_t shape[9];
    for (int64_t& d : shape) d = in_.size();
    const bool valid_rank = ndim >= 1 && ndim <= 8;
    if (valid_rank) {
      bool negative = false;
      for (int32_t d = 0; d < ndim; ++d) negative = negative || shape[d] < 0;
      // A shape it could accept with too many features would allocate without bound.
      if (!negative && feature_bound(shape, ndim) > kMaxElements) return;
    }
    bn_layer* const sentinel = reinterpret_cast<bn_layer*>(static_cast<uintptr_t>(0x5a5a5a50));
    bn_layer* out = sentinel;
    poison_message();
    const bn_status st = bn_create(config_.cfg, shape, ndim, &out);
    check_status(st, "bn_create");
    if (st != BN_OK) {
      if (out != sentinel) violated("a failed bn_create wrote *out", "bn_create");
      return;
    }
    if (!out) violated("bn_create returned BN_OK and NULL", "bn_create");
    if (acceptable_elements(shape, ndim, 1) < 0) violated("bn_create accepted a shape it must refuse", "bn_create");
    bn_destroy(s.layer);
    s = LayerSlot();
    s.layer = out;
    s.dtype = config_.dtype;
    s.ndim = ndim;
    std::memcpy(s.shape, shape, sizeof(int64_t) * static_cast<size_t>(ndim));
    s.features = bn_num_features(out);
    if (s.features < 1 || s.features > kMaxElements) violated("bn_num_features out of bounds", "bn_create");
  }

  LayerSlot* live_slot() {
    LayerSlot& s = slots_[in_.u8() % 2];
    return s.layer ? &s : nullptr;
  }

  void layer_settings() {
    LayerSlot* s = live_slot();
    if (!s) return;
    bn_layer* l = s->layer;
    switch (in_.u8() % 7) {
      case 0: {
        const int v = in_.flag();
        layer_call(*s, "bn_set_training", [&] { return bn_set_training(l, v); });
        break;
      }
      case 1: {
        const int v = in_.flag();
        layer_call(*s, "bn_set_trainable", [&] { return bn_set_trainable(l, v); });
        break;
      }
      case 2: {
        const double m = in_.real();
        layer_call(*s, "bn_set_momentum", [&] { return bn_set_momentum(l, m); });
        break;
      }
      case 3: {
        const double rmax = in_.real(), rmin = in_.real(), dmax = in_.real();
        layer_call(*s, "bn_set_renorm_clipping", [&] { return bn_set_renorm_clipping(l, rmax, rmin, dmax); });
        break;
      }
      case 4: {
        const double m = in_.real();
        layer_call(*s, "bn_set_renorm_momentum", [&] { return bn_set_renorm_momentum(l, m); });
        break;
      }
      case 5: {
        const bn_mode flags = in_.small_int(0, 7);
        layer_call(*s, "bn_set_mode", [&] { return bn_set_mode(l, flags); });
        break;
      }
      default: {
        const int32_t t = in_.small_int(0, 3);
        layer_call(*s, "bn_set_num_threads", [&] { return bn_set_num_threads(l, t); });
        break;
      }
    }
  }

  // A call shape: mostly the layer's own (another batch size), sometimes mutated.
  int32_t call_shape(const LayerSlot& s, int64_t* shape) {
    int32_t ndim = s.ndim;
    std::memcpy(shape, s.shape, sizeof(int64_t) * 8);
    if (s.forwarded && in_.coin()) std::memcpy(shape, s.fshape, sizeof(int64_t) * 8);
    const uint8_t m = in_.u8();
    if (m < 96) {
      shape[0] = in_.size();  // another batch (the kept axes usually do not include 0)
    } else if (m < 160) {
      shape[in_.u8() % 8] = in_.size();  // any position, kept or not, past ndim too
    } else if (m < 176) {
      ndim = in_.small_int(0, 8);
      if (ndim >= 1 && ndim <= 8) {
        for (int32_t d = s.ndim; d < ndim; ++d) shape[d] = in_.size();
      }
    }
    return ndim;
  }

  // Buffers for a call on `shape`: the element count if the library could accept it and it is
  // small enough, a small buffer if it must refuse; false if the call would be too large.
  static bool buffer_elements(const int64_t* shape, int32_t ndim, bn_dtype dtype, size_t& n) {
    const int64_t e = acceptable_elements(shape, ndim, static_cast<int64_t>(element_size(dtype)));
    if (e > kMaxElements) return false;
    n = e > 0 ? static_cast<size_t>(e) : 1;
    return true;
  }

  void forward() {
    LayerSlot* s = live_slot();
    if (!s) return;
    int64_t shape[8];
    const int32_t ndim = call_shape(*s, shape);
    size_t n = 0;
    if (!buffer_elements(shape, ndim, s->dtype, n)) return;
    const size_t es = element_size(s->dtype);
    Bytes x(n * es), res(n * es), y = poisoned(n * es);
    fill(x, s->dtype, in_);
    fill(res, s->dtype, in_);
    const uint8_t how = in_.u8();
    const bool residual = (how & 1) != 0, in_place = (how & 2) != 0;
    const bool null_x = how == 252, null_y = how == 254;
    Bytes& out = in_place ? x : y;
    const Bytes pristine_x = x, pristine_y = y;
    const bn_status st = residual
        ? layer_call(*s, "bn_forward_residual", [&] {
            return bn_forward_residual(s->layer, shape, ndim, null_x ? nullptr : x.data(), res.data(),
                                       null_y ? nullptr : out.data());
          })
        : layer_call(*s, "bn_forward", [&] {
            return bn_forward(s->layer, shape, ndim, null_x ? nullptr : x.data(), null_y ? nullptr : out.data());
          });
    if (st != BN_OK) {
      if (x != pristine_x || y != pristine_y) violated("a failed forward wrote its output", "bn_forward");
      return;
    }
    s->forwarded = true;
    std::memcpy(s->fshape, shape, sizeof shape);
    s->fx = in_place ? pristine_x : x;
    s->fy = out;
  }

  void backward() {
    LayerSlot* s = live_slot();
    if (!s) return;
    int64_t shape[8];
    int32_t ndim = s->ndim;
    const bool same = s->forwarded && in_.u8() < 192;
    if (same) {
      std::memcpy(shape, s->fshape, sizeof shape);
    } else {
      ndim = call_shape(*s, shape);
    }
    size_t n = 0;
    if (!buffer_elements(shape, ndim, s->dtype, n)) return;
    const size_t es = element_size(s->dtype), ps = param_size(s->dtype);
    const auto f = static_cast<size_t>(s->features);
    Bytes x(n * es), y(n * es), dy(n * es);
    if (same && s->fx.size() == x.size() && in_.u8() < 224) {
      x = s->fx;  // the forward's own x and y (another x is the caller's error, not detectable)
      y = s->fy;
    } else {
      fill(x, s->dtype, in_);
      fill(y, s->dtype, in_);
    }
    fill(dy, s->dtype, in_);
    Bytes dx = poisoned(n * es), dres = poisoned(n * es), dg = poisoned(f * ps), db = poisoned(f * ps);
    const uint8_t how = in_.u8();
    const bool residual = (how & 1) != 0, dx_is_dy = (how & 2) != 0;
    void* dxp = (how & 4) ? nullptr : (dx_is_dy ? dy.data() : dx.data());
    void* dgp = (how & 8) ? nullptr : dg.data();
    void* dbp = (how & 16) ? nullptr : db.data();
    void* drp = (how & 32) ? nullptr : ((how & 64) && dxp ? dxp : dres.data());  // sometimes dx == dresidual
    const Bytes pristine_dy = dy, pristine_dx = dx, pristine_dres = dres, pristine_dg = dg, pristine_db = db;
    const bn_status st = residual
        ? layer_call(*s, "bn_backward_residual", [&] {
            return bn_backward_residual(s->layer, shape, ndim, x.data(), y.data(), dy.data(), dxp, drp, dgp, dbp);
          })
        : layer_call(*s, "bn_backward", [&] {
            return bn_backward(s->layer, shape, ndim, x.data(), dy.data(), dxp, dgp, dbp);
          });
    if (st != BN_OK && (dy != pristine_dy || dx != pristine_dx || dres != pristine_dres || dg != pristine_dg ||
                        db != pristine_db)) {
      violated("a failed backward wrote an output", "bn_backward");
    }
  }

  int64_t count_for(const LayerSlot& s) {
    const uint8_t b = in_.u8();
    if (b < 192) return s.features;
    static const int64_t off[] = {-1, 1, 0, -1};
    if (b < 240) return b % 4 == 2 ? 0 : s.features + off[b % 4];
    return in_.size();
  }

  void params() {
    LayerSlot* s = live_slot();
    if (!s) return;
    const bn_param which = in_.enum_value(9);
    const int64_t count = count_for(*s);
    const size_t ps = param_size(s->dtype);
    // Room for the layer's count only: a library that accepted another count would overrun it.
    Bytes buf = poisoned(static_cast<size_t>(s->features) * ps);
    if (in_.coin()) {
      const bn_status st =
          layer_call(*s, "bn_get_param", [&] { return bn_get_param(s->layer, which, buf.data(), count); });
      if (st != BN_OK && buf != poisoned(buf.size())) violated("a failed bn_get_param wrote out", "bn_get_param");
      return;
    }
    fill(buf, ps == 8 ? BN_F64 : BN_F32, in_);
    if (in_.coin()) {  // a hostile value at a random index
      const double v = in_.real();
      const size_t i = in_.u8() % static_cast<size_t>(s->features);
      if (ps == 8) {
        std::memcpy(&buf[i * 8], &v, 8);
      } else {
        const float fv = static_cast<float>(v);
        std::memcpy(&buf[i * 4], &fv, 4);
      }
    }
    // A set parameter invalidates the saved forward: the snapshot's backward then records
    // BN_ERR_STATE, which a later failing call must not change either.
    layer_call(*s, "bn_set_param", [&] { return bn_set_param(s->layer, which, buf.data(), count); });
  }

  void fold_and_constraints() {
    LayerSlot* s = live_slot();
    if (!s) return;
    const size_t ps = param_size(s->dtype);
    const auto f = static_cast<size_t>(s->features);
    switch (in_.u8() % 4) {
      case 0: {
        const int64_t count = count_for(*s);
        Bytes scale = poisoned(f * ps), shift = poisoned(f * ps);
        const bn_status st =
            layer_call(*s, "bn_fold", [&] { return bn_fold(s->layer, scale.data(), shift.data(), count); });
        if (st != BN_OK && (scale != poisoned(f * ps) || shift != poisoned(f * ps))) violated("bn_fold wrote", "");
        break;
      }
      case 1: {
        const int64_t count = count_for(*s);
        int64_t per = in_.size();
        size_t wn = 1;
        if (per >= 1) {
          if (per > kMaxElements / s->features) return;
          wn = static_cast<size_t>(per) * f;
        }
        Bytes w(wn * ps), bias(f * ps), bias_out = poisoned(f * ps);
        fill(w, ps == 8 ? BN_F64 : BN_F32, in_);
        fill(bias, ps == 8 ? BN_F64 : BN_F32, in_);
        const bool null_bias = in_.coin(), alias = in_.coin();
        const Bytes pristine_w = w, pristine_out = bias_out, pristine_bias = bias;
        void* out = alias ? bias.data() : bias_out.data();
        const bn_status st = layer_call(*s, "bn_fold_into", [&] {
          return bn_fold_into(s->layer, w.data(), per, null_bias ? nullptr : bias.data(), out, count);
        });
        if (st != BN_OK && (w != pristine_w || bias_out != pristine_out || bias != pristine_bias)) {
          violated("a failed bn_fold_into wrote", "bn_fold_into");
        }
        break;
      }
      case 2: {
        double loss = 0;
        layer_call(*s, "bn_regularization_loss", [&] { return bn_regularization_loss(s->layer, &loss); });
        break;
      }
      default: {
        layer_call(*s, "bn_apply_constraints", [&] { return bn_apply_constraints(s->layer); });
        break;
      }
    }
  }

  void misc() {
    switch (in_.u8() % 4) {
      case 0: {
        const bn_status v = static_cast<bn_status>(in_.u64());
        if (!bn_status_string(v)) violated("bn_status_string returned NULL", "");
        break;
      }
      case 1: {  // NULL handles everywhere
        poison_message();
        check_status(bn_forward(nullptr, nullptr, 0, nullptr, nullptr), "bn_forward");
        poison_message();
        check_status(bn_get_mode(nullptr, nullptr), "bn_get_mode");
        poison_message();
        check_status(bn_config_set_momentum(nullptr, 0.5), "bn_config_set_momentum");
        break;
      }
      case 2: {  // a fresh config
        bn_config* cfg = nullptr;
        poison_message();
        check_status(bn_config_create(&cfg), "bn_config_create");
        bn_config_destroy(config_.cfg);
        config_ = ConfigState();
        config_.cfg = cfg;
        break;
      }
      default: {
        LayerSlot& s = slots_[in_.u8() % 2];
        bn_destroy(s.layer);
        s = LayerSlot();
        break;
      }
    }
  }

  Input& in_;
  ConfigState config_;
  LayerSlot slots_[2];
  int adjustment_kind_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  Harness harness(in);
  for (int call = 0; call < kMaxCalls && !in.done(); ++call) harness.step();
  return 0;
}
