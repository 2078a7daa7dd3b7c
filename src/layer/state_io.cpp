// The state format, version 1 (docs/state_format.md has the byte layout; keep the two in
// step). Every multi-byte field is little-endian, whatever the host; doubles and floats are
// their IEEE 754 bits, so a round trip is bitwise exact.
#include "layer/state_io.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "io/crc32c.hpp"
#include "layer/error.hpp"
#include "layer/keras_params.hpp"
#include "layer/shape_plan.hpp"

namespace bn {
namespace {

// "\x89BNS\r\n\x1a\n": a non-ASCII first byte, then the line endings and the DOS end-of-file
// that text-mode transfers mangle (the PNG trick).
constexpr uint8_t kMagic[8] = {0x89, 'B', 'N', 'S', '\r', '\n', 0x1A, '\n'};
constexpr uint32_t kConfigSize = 512;                           // bytes 32..543
constexpr size_t kStateBegin = kStateHeaderSize + kConfigSize;  // 544
constexpr size_t kArraysBegin = kStateBegin + 24;               // 568
constexpr size_t kChecksumSize = 4;
constexpr int32_t kMaxMode = 7;
// The bits of the "callbacks" field: the callbacks the saved layer's build decisions counted.
constexpr int32_t kCallbackAdjustment = 1;
constexpr int32_t kCallbackAllreduce = 2;

// ---------------------------------------------------------------------------
// Writing
class Writer {
 public:
  explicit Writer(size_t capacity) { bytes_.reserve(capacity); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void i32(int32_t v) { u32(static_cast<uint32_t>(v)); }
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  void flag(bool v) { u32(v ? 1u : 0u); }
  void f64(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    u64(bits);
  }
  void f32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    u32(bits);
  }
  void raw(const uint8_t* p, size_t n) { bytes_.insert(bytes_.end(), p, p + n); }
  size_t size() const { return bytes_.size(); }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

template <class T>
void fixed_ints(Writer& w, const std::vector<T>& v) {  // 8 slots, unused ones 0
  for (size_t i = 0; i < static_cast<size_t>(kMaxRank); ++i) {
    const T value = i < v.size() ? v[i] : T(0);
    if constexpr (sizeof(T) == 8) {
      w.i64(value);
    } else {
      w.i32(value);
    }
  }
}

void put_initializer(Writer& w, const Initializer& init) {
  w.i32(static_cast<int32_t>(init.kind));
  w.u32(0);
  w.f64(init.a);
  w.f64(init.b);
  w.u64(init.seed);
}

void put_constraint(Writer& w, const Constraint& c) {
  w.i32(static_cast<int32_t>(c.kind));
  w.i32(static_cast<int32_t>(c.axes.size()));
  w.f64(c.min_value);
  w.f64(c.max_value);
  w.f64(c.rate);
  fixed_ints(w, c.axes);
}

// The per-feature arrays a state holds, in their order in the blob.
std::vector<const std::vector<double>*> arrays_of(const LayerState& s) {
  std::vector<const std::vector<double>*> a;
  if (s.config.scale) a.push_back(&s.gamma);
  if (s.config.center) a.push_back(&s.beta);
  a.push_back(&s.moving_mean);
  a.push_back(&s.moving_variance);
  if (s.config.renorm.enabled) {
    a.push_back(&s.renorm_mean);
    a.push_back(&s.renorm_stddev);
    a.push_back(&s.moving_stddev);
  }
  return a;
}

int32_t array_count(const Config& c) {
  return (c.scale ? 1 : 0) + (c.center ? 1 : 0) + 2 + (c.renorm.enabled ? 3 : 0);
}

// ---------------------------------------------------------------------------
// Reading: a cursor over a blob whose size has been checked; every field is named in errors.
[[noreturn]] void corrupt(const std::string& message) {
  fail(Status::corrupt_data, message);
}

class Reader {
 public:
  Reader(const uint8_t* p, size_t n, size_t at) : p_(p), n_(n), at_(at) {}
  size_t at() const { return at_; }
  uint64_t u64() {
    need(8);
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p_[at_ + i]) << (8 * i);
    at_ += 8;
    return v;
  }
  uint32_t u32() {
    need(4);
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p_[at_ + i]) << (8 * i);
    at_ += 4;
    return v;
  }
  int32_t i32() { return static_cast<int32_t>(u32()); }
  int64_t i64() { return static_cast<int64_t>(u64()); }
  double f64() {
    const uint64_t bits = u64();
    double v;
    std::memcpy(&v, &bits, 8);
    return v;
  }
  float f32() {
    const uint32_t bits = u32();
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
  // An int32 field that must lie in [lo, hi].
  int32_t ranged(const char* name, int32_t lo, int32_t hi) {
    const size_t where = at_;
    const int32_t v = i32();
    if (v < lo || v > hi) {
      corrupt(std::string(name) + "=" + std::to_string(v) + " at byte " + std::to_string(where) +
              " is out of range (expected " + std::to_string(lo) + " to " + std::to_string(hi) + ")");
    }
    return v;
  }
  bool flag(const char* name) { return ranged(name, 0, 1) == 1; }
  void zero(const char* name) { ranged(name, 0, 0); }

 private:
  void need(size_t k) const {
    if (k > n_ - at_) corrupt("the blob ends inside a field");  // unreachable once the size matched
  }
  const uint8_t* p_;
  size_t n_;
  size_t at_;
};

std::string field(const char* base, size_t i) {
  return std::string(base) + "[" + std::to_string(i) + "]";
}

// Up to 8 slots of which the first `count` are used (each in [lo, hi]) and the rest are 0.
template <class T>
std::vector<T> read_slots(Reader& r, const char* name, int32_t count, T lo, T hi) {
  std::vector<T> v;
  for (size_t i = 0; i < static_cast<size_t>(kMaxRank); ++i) {
    const size_t where = r.at();
    const T value = sizeof(T) == 8 ? static_cast<T>(r.i64()) : static_cast<T>(r.i32());
    const bool used = i < static_cast<size_t>(count);
    if (used && (value < lo || value > hi)) {
      corrupt(field(name, i) + "=" + std::to_string(value) + " at byte " + std::to_string(where) +
              " is out of range (expected " + std::to_string(lo) + " to " + std::to_string(hi) + ")");
    }
    if (!used && value != 0) {
      corrupt(field(name, i) + "=" + std::to_string(value) + " at byte " + std::to_string(where) +
              " is an unused slot and must be 0");
    }
    if (used) v.push_back(value);
  }
  return v;
}

// The Keras-level checks of keras_params.cpp, whose invalid_argument becomes corrupt_data.
template <class Check>
void checked(const char* what, Check&& check) {
  try {
    check();
  } catch (const Error& e) {
    corrupt(std::string(what) + ": " + e.what());
  }
}

Initializer get_initializer(Reader& r, const char* name, bool variance) {
  Initializer init;
  const std::string kind = std::string(name) + " initializer kind";
  init.kind = static_cast<InitKind>(r.ranged(kind.c_str(), 0, static_cast<int32_t>(InitKind::truncated_normal)));
  r.zero("reserved");
  init.a = r.f64();
  init.b = r.f64();
  init.seed = r.u64();
  checked((std::string("the ") + name + " initializer").c_str(), [&] { check_initializer(init, variance); });
  return init;
}

Regularizer get_regularizer(Reader& r, const char* name) {
  Regularizer reg;
  reg.l1 = r.f64();
  reg.l2 = r.f64();
  checked((std::string("the ") + name + " regularizer").c_str(), [&] { check_regularizer(reg); });
  return reg;
}

Constraint get_constraint(Reader& r, const char* name) {
  Constraint c;
  const std::string kind = std::string(name) + " constraint kind";
  c.kind = static_cast<ConstraintKind>(r.ranged(kind.c_str(), 0, static_cast<int32_t>(ConstraintKind::min_max_norm)));
  const bool norm = c.kind != ConstraintKind::none && c.kind != ConstraintKind::non_neg;
  const std::string count_name = std::string(name) + " constraint axis count";
  const int32_t count = norm ? r.ranged(count_name.c_str(), 1, kMaxRank) : r.ranged(count_name.c_str(), 0, 0);
  c.min_value = r.f64();
  c.max_value = r.f64();
  c.rate = r.f64();
  const std::string axes = std::string(name) + " constraint axes";
  c.axes = read_slots<int32_t>(r, axes.c_str(), count, -kMaxRank, kMaxRank - 1);
  checked((std::string("the ") + name + " constraint").c_str(), [&] { check_constraint(c); });
  return c;
}

// `count` values of the parameter type; finite, and >= 0 for the non-negative ones.
std::vector<double> get_array(Reader& r, const char* name, int64_t count, bool f64, bool nonnegative) {
  std::vector<double> v(static_cast<size_t>(count));
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = f64 ? r.f64() : static_cast<double>(r.f32());
    if (!std::isfinite(v[i]) || (nonnegative && v[i] < 0)) {
      corrupt(field(name, i) + "=" + std::to_string(v[i]) + " but it must be finite" +
              (nonnegative ? " and >= 0" : ""));
    }
  }
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------
std::vector<uint8_t> encode_state(const LayerState& s, uint32_t library_version) {
  const Config& c = s.config;
  const auto arrays = arrays_of(s);
  const size_t esize = c.dtype == DType::f64 ? 8 : 4;
  const size_t total = kArraysBegin + arrays.size() * static_cast<size_t>(s.features) * esize + kChecksumSize;
  Writer w(total);
  // Header (bytes 0..31).
  w.raw(kMagic, sizeof kMagic);
  w.u32(kStateFormatVersion);
  w.u32(library_version);
  w.u64(total);
  w.u32(kConfigSize);
  w.u32(0);
  // Configuration (bytes 32..543).
  w.i32(static_cast<int32_t>(c.dtype));
  w.i32(static_cast<int32_t>(s.input_shape.size()));
  fixed_ints(w, s.input_shape);
  w.i32(static_cast<int32_t>(c.axes.size()));
  fixed_ints(w, c.axes);
  w.i32(static_cast<int32_t>(c.rules));
  w.f64(c.momentum);
  w.f64(c.epsilon);
  w.flag(c.center);
  w.flag(c.scale);
  w.flag(c.trainable);
  w.flag(s.training);
  w.i32(s.mode);
  w.i32(static_cast<int32_t>(c.fused));
  w.flag(s.fused);
  w.i32(static_cast<int32_t>(c.moving_variance));
  w.flag(c.cumulative_average);
  w.i32(static_cast<int32_t>(c.single_value));
  w.flag(c.relu);
  w.i32((s.had_adjustment ? kCallbackAdjustment : 0) | (s.had_allreduce ? kCallbackAllreduce : 0));
  w.flag(c.renorm.enabled);
  w.i32(static_cast<int32_t>(c.nonfinite));
  w.f64(c.renorm.rmax);
  w.f64(c.renorm.rmin);
  w.f64(c.renorm.dmax);
  w.f64(c.renorm.momentum);
  w.i64(c.virtual_batch_size);
  put_initializer(w, c.keras.gamma_init);
  put_initializer(w, c.keras.beta_init);
  put_initializer(w, c.keras.moving_mean_init);
  put_initializer(w, c.keras.moving_variance_init);
  w.f64(c.keras.gamma_regularizer.l1);
  w.f64(c.keras.gamma_regularizer.l2);
  w.f64(c.keras.beta_regularizer.l1);
  w.f64(c.keras.beta_regularizer.l2);
  put_constraint(w, c.keras.gamma_constraint);
  put_constraint(w, c.keras.beta_constraint);
  // State (bytes 544..): step counter, array geometry, the arrays.
  w.i64(s.step_count);
  w.i64(s.features);
  w.i32(static_cast<int32_t>(arrays.size()));
  w.i32(static_cast<int32_t>(esize));
  for (const std::vector<double>* a : arrays) {
    for (double v : *a) {
      if (esize == 8) {
        w.f64(v);
      } else {
        w.f32(static_cast<float>(v));
      }
    }
  }
  w.u32(io::crc32c(w.bytes().data(), w.size()));
  if (w.size() != total)
    fail(Status::internal,
         "state encoding: wrote " + std::to_string(w.size()) + " bytes, planned " + std::to_string(total));
  return std::move(w.bytes());
}

void check_state_prefix(const uint8_t* data, size_t n, uint64_t size) {
  const size_t magic = n < sizeof kMagic ? n : sizeof kMagic;
  // An empty file gives no data pointer: nothing to compare (memcmp must not see NULL).
  if (magic > 0 && std::memcmp(data, kMagic, magic) != 0) {
    corrupt("not a libbatchnorm state: the first bytes are not the state magic \\x89BNS\\r\\n\\x1a\\n");
  }
  if (size < kStateHeaderSize) {
    corrupt("truncated: " + std::to_string(size) + " bytes, but the header alone is " +
            std::to_string(kStateHeaderSize));
  }
  Reader r(data, n, 8);
  const uint32_t version = r.u32();
  if (version != kStateFormatVersion) {
    corrupt("format version " + std::to_string(version) + " is not supported (this library reads version " +
            std::to_string(kStateFormatVersion) + ")");
  }
  r.u32();  // the writer's library version: informative
  const uint64_t total = r.u64();
  if (total != size) {
    corrupt("the blob is " + std::to_string(size) + " bytes but its header says " + std::to_string(total) +
            (size < total ? " (truncated)" : " (trailing bytes)"));
  }
}

LayerState decode_state(const uint8_t* data, size_t size) {
  check_state_prefix(data, size < kStateHeaderSize ? size : kStateHeaderSize, size);
  if (size < kArraysBegin + kChecksumSize) {
    corrupt("truncated: " + std::to_string(size) + " bytes, but a state has at least " +
            std::to_string(kArraysBegin + kChecksumSize));
  }
  const size_t body = size - kChecksumSize;
  Reader tail(data, size, body);
  const uint32_t stored = tail.u32(), computed = io::crc32c(data, body);
  if (stored != computed) {
    char text[96];
    std::snprintf(text, sizeof text, "checksum mismatch: the blob says 0x%08x, its bytes give 0x%08x (damaged)", stored,
                  computed);
    corrupt(text);
  }

  LayerState s;
  Config& c = s.config;
  Reader r(data, body, 12);
  s.writer_version = r.u32();
  r.u64();  // the size, checked
  if (const uint32_t config_size = r.u32(); config_size != kConfigSize) {
    corrupt("configuration size " + std::to_string(config_size) + " but format version 1 has " +
            std::to_string(kConfigSize));
  }
  r.zero("reserved");
  c.dtype = static_cast<DType>(r.ranged("dtype", 0, static_cast<int32_t>(DType::f16)));
  const int32_t ndim = r.ranged("ndim", 1, kMaxRank);
  s.input_shape = read_slots<int64_t>(r, "input_shape", ndim, 0, INT64_MAX);
  const int32_t axis_count = r.ranged("axis_count", 1, kMaxRank);
  c.axes = read_slots<int32_t>(r, "axes", axis_count, -kMaxRank, kMaxRank - 1);
  c.rules = static_cast<KerasRules>(r.ranged("keras_rules", 0, static_cast<int32_t>(KerasRules::v2)));
  c.momentum = r.f64();
  c.epsilon = r.f64();
  c.center = r.flag("center");
  c.scale = r.flag("scale");
  c.trainable = r.flag("trainable");
  s.training = r.flag("training");
  s.mode = r.ranged("mode", 0, kMaxMode);
  c.fused = static_cast<Fused>(r.ranged("fused", 0, static_cast<int32_t>(Fused::off)));
  s.fused = r.flag("fused_resolved");
  c.moving_variance =
      static_cast<MovingVariance>(r.ranged("moving_variance", 0, static_cast<int32_t>(MovingVariance::unbiased)));
  c.cumulative_average = r.flag("cumulative_average");
  c.single_value =
      static_cast<SingleValue>(r.ranged("single_value_policy", 0, static_cast<int32_t>(SingleValue::reject)));
  c.relu = r.flag("relu");
  const int32_t callbacks = r.ranged("callbacks", 0, kCallbackAdjustment | kCallbackAllreduce);
  s.had_adjustment = (callbacks & kCallbackAdjustment) != 0;
  s.had_allreduce = (callbacks & kCallbackAllreduce) != 0;
  c.renorm.enabled = r.flag("renorm");
  c.nonfinite = static_cast<NonFinite>(r.ranged("nonfinite_policy", 0, static_cast<int32_t>(NonFinite::skip_update)));
  c.renorm.rmax = r.f64();
  c.renorm.rmin = r.f64();
  c.renorm.dmax = r.f64();
  c.renorm.momentum = r.f64();
  c.virtual_batch_size = r.i64();
  if (c.virtual_batch_size < 0) corrupt("virtual_batch_size=" + std::to_string(c.virtual_batch_size) + " is negative");
  c.keras.gamma_init = get_initializer(r, "GAMMA", false);
  c.keras.beta_init = get_initializer(r, "BETA", false);
  c.keras.moving_mean_init = get_initializer(r, "MOVING_MEAN", false);
  c.keras.moving_variance_init = get_initializer(r, "MOVING_VARIANCE", true);
  c.keras.gamma_regularizer = get_regularizer(r, "GAMMA");
  c.keras.beta_regularizer = get_regularizer(r, "BETA");
  c.keras.gamma_constraint = get_constraint(r, "GAMMA");
  c.keras.beta_constraint = get_constraint(r, "BETA");
  if (r.at() != kStateBegin)
    fail(Status::internal, "state decoding: the configuration ends at " + std::to_string(r.at()));

  s.step_count = r.i64();
  if (s.step_count < 0) corrupt("step_count=" + std::to_string(s.step_count) + " is negative");
  s.features = r.i64();
  // The number of features the configuration gives (axes against the shape).
  AxisPlan axes;
  checked("the axes do not fit the input shape", [&] { axes = resolve_axes(c.axes, s.input_shape.data(), ndim); });
  if (s.features != axes.features) {
    corrupt("features=" + std::to_string(s.features) + " but the axes and the input shape give " +
            std::to_string(axes.features));
  }
  const int32_t count = r.i32(), expected_count = array_count(c);
  if (count != expected_count) {
    corrupt("array_count=" + std::to_string(count) + " but the configuration has " + std::to_string(expected_count) +
            " per-feature arrays");
  }
  const bool f64 = c.dtype == DType::f64;
  const int32_t esize = r.i32(), expected_size = f64 ? 8 : 4;
  if (esize != expected_size) {
    corrupt("element_size=" + std::to_string(esize) + " but the dtype's parameters take " +
            std::to_string(expected_size) + " bytes");
  }
  // The arrays fill the rest exactly (compared without overflow: features >= 1 here).
  const size_t left = body - kArraysBegin, per_feature = static_cast<size_t>(count) * static_cast<size_t>(esize);
  if (static_cast<uint64_t>(s.features) > left / per_feature || static_cast<size_t>(s.features) * per_feature != left) {
    corrupt(std::to_string(left) + " bytes of arrays but " + std::to_string(count) + " arrays of " +
            std::to_string(s.features) + " values of " + std::to_string(esize) + " bytes are needed");
  }
  const int64_t n = s.features;
  if (c.scale) s.gamma = get_array(r, "GAMMA", n, f64, false);
  if (c.center) s.beta = get_array(r, "BETA", n, f64, false);
  s.moving_mean = get_array(r, "MOVING_MEAN", n, f64, false);
  s.moving_variance = get_array(r, "MOVING_VARIANCE", n, f64, true);
  if (c.renorm.enabled) {
    s.renorm_mean = get_array(r, "RENORM_MEAN", n, f64, false);
    s.renorm_stddev = get_array(r, "RENORM_STDDEV", n, f64, true);
    s.moving_stddev = get_array(r, "MOVING_STDDEV", n, f64, true);
  }
  return s;
}

}  // namespace bn
