// Helpers for the C API tier: RAII owners for the opaque handles, byte tensors of
// any dtype, a bitwise snapshot of everything a layer lets a caller observe, and
// the checks every failing call must pass (status, message, nothing changed).
// Only the public header is used.
#pragma once

#include <batchnorm/batchnorm.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "half_ref.hpp"  // test-side 16-bit encoding (no library code)

namespace capi_test {

using Config = std::unique_ptr<bn_config, void (*)(bn_config*)>;
using Layer = std::unique_ptr<bn_layer, void (*)(bn_layer*)>;
using Bytes = std::vector<unsigned char>;

inline Config make_config() {
  bn_config* cfg = nullptr;
  REQUIRE(bn_config_create(&cfg) == BN_OK);
  REQUIRE(cfg != nullptr);
  return Config(cfg, &bn_config_destroy);
}

inline Layer make_layer(const bn_config* cfg, const std::vector<int64_t>& shape) {
  bn_layer* layer = nullptr;
  const bn_status s = bn_create(cfg, shape.data(), static_cast<int32_t>(shape.size()), &layer);
  INFO(bn_last_error());
  REQUIRE(s == BN_OK);
  REQUIRE(layer != nullptr);
  return Layer(layer, &bn_destroy);
}

inline int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The element type of a layer's parameters, statistics and their gradients: double for
// BN_F64 layers, float for every other dtype (16-bit ones included).
inline bn_dtype param_dtype(bn_dtype dtype) { return dtype == BN_F64 ? BN_F64 : BN_F32; }

// A dense buffer of f32, f64, bf16 or f16 elements, filled deterministically from a seed.
struct Tensor {
  size_t esize = 4;  // 2 (bf16/f16 bits), 4 (float) or 8 (double)
  bn_dtype dtype = BN_F32;
  Bytes bytes;

  Tensor(bn_dtype dt, int64_t count)
      : esize(dt == BN_F64 ? 8 : (dt == BN_BF16 || dt == BN_F16) ? 2 : 4),
        dtype(dt),
        bytes(static_cast<size_t>(count) * esize) {}
  const bn_test::HalfFormat& format() const { return dtype == BN_BF16 ? bn_test::kBfloat16 : bn_test::kBinary16; }
  size_t count() const { return bytes.size() / esize; }
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  void set(size_t i, double v) {
    if (esize == 8) {
      std::memcpy(&bytes[i * 8], &v, 8);
    } else if (esize == 2) {
      const uint16_t h = bn_test::half_encode(format(), static_cast<float>(v));
      std::memcpy(&bytes[i * 2], &h, 2);
    } else {
      const float f = static_cast<float>(v);
      std::memcpy(&bytes[i * 4], &f, 4);
    }
  }
  double get(size_t i) const {
    if (esize == 8) {
      double v;
      std::memcpy(&v, &bytes[i * 8], 8);
      return v;
    }
    if (esize == 2) {
      uint16_t h;
      std::memcpy(&h, &bytes[i * 2], 2);
      return bn_test::half_decode(format(), h);
    }
    float f;
    std::memcpy(&f, &bytes[i * 4], 4);
    return f;
  }
  // Values in [-2, 2) from a 64-bit LCG: enough spread for non-trivial statistics.
  void fill(uint64_t seed) {
    uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    for (size_t i = 0; i < count(); ++i) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      set(i, static_cast<double>(s >> 11) / 9007199254740992.0 * 4.0 - 2.0);
    }
  }
  // Every byte 0xA5: a pattern no successful call would leave behind.
  void poison() { std::memset(bytes.data(), 0xA5, bytes.size()); }
};

// True if `word` occurs in `text` as a whole token (not inside a longer identifier), so
// that "shape[0]" does not match "input_shape[0]" and "x" does not match "max".
inline bool mentions(const std::string& text, const std::string& word) {
  auto ident = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  };
  for (size_t pos = text.find(word); pos != std::string::npos; pos = text.find(word, pos + 1)) {
    const bool left = pos == 0 || !ident(text[pos - 1]) || !ident(word.front());
    const size_t end = pos + word.size();
    const bool right = end == text.size() || !ident(text[end]) || !ident(word.back());
    if (left && right) return true;
  }
  return false;
}

// Leaves a known, unrelated message behind so that a stale message cannot pass a check.
inline void poison_last_error() {
  REQUIRE(bn_num_features(nullptr) == -1);
  REQUIRE(mentions(bn_last_error(), "bn_num_features"));
}

// Checks a status and that the message names every needle (function, argument, ...).
inline void check_status(bn_status got, bn_status expected, std::initializer_list<const char*> needles) {
  const std::string message = bn_last_error();
  INFO("status " << bn_status_string(got) << ", expected " << bn_status_string(expected));
  INFO("message: \"" << message << "\"");
  CHECK(got == expected);
  for (const char* needle : needles) {
    INFO("the message should name: " << needle);
    CHECK(mentions(message, needle));
  }
}

// A layer with a known history: parameters set, one successful forward (training or
// inference) on `x`, whose backward with `dy` the snapshot records.
struct Probe {
  bn_dtype dtype;
  std::vector<int64_t> shape;
  Layer layer{nullptr, &bn_destroy};
  Tensor x, dy;
  bool trained = false;    // a training forward happened (BATCH_* are readable)
  bool forwarded = false;  // a forward happened (backward must succeed)

  Probe(bn_dtype dt, std::vector<int64_t> shp, bool training, bool forward = true,
        const bn_config* cfg_in = nullptr)
      : dtype(dt), shape(std::move(shp)), x(dt, element_count(shape)), dy(dt, element_count(shape)) {
    Config own = make_config();
    const bn_config* cfg = cfg_in;
    if (!cfg) {
      REQUIRE(bn_config_set_dtype(own.get(), dt) == BN_OK);
      cfg = own.get();
    }
    layer = make_layer(cfg, shape);
    const int64_t c = bn_num_features(layer.get());
    const bn_dtype pd = param_dtype(dt);
    Tensor gamma(pd, c), beta(pd, c), mean(pd, c), var(pd, c);
    for (int64_t f = 0; f < c; ++f) {
      const auto i = static_cast<size_t>(f);
      gamma.set(i, 0.5 + 0.25 * static_cast<double>(f));
      beta.set(i, -0.125 * static_cast<double>(f));
      mean.set(i, 0.0625 * static_cast<double>(f));
      var.set(i, 1.5 + 0.5 * static_cast<double>(f));
    }
    // Layers without gamma/beta refuse them; the other parameters are always settable.
    bn_set_param(layer.get(), BN_PARAM_GAMMA, gamma.data(), c);
    bn_set_param(layer.get(), BN_PARAM_BETA, beta.data(), c);
    REQUIRE(bn_set_param(layer.get(), BN_PARAM_MOVING_MEAN, mean.data(), c) == BN_OK);
    REQUIRE(bn_set_param(layer.get(), BN_PARAM_MOVING_VARIANCE, var.data(), c) == BN_OK);
    x.fill(11);
    dy.fill(23);
    REQUIRE(bn_set_training(layer.get(), training ? 1 : 0) == BN_OK);
    if (forward) {
      Tensor y(dt, element_count(shape));
      REQUIRE(bn_forward(layer.get(), shape.data(), rank(), x.data(), y.data()) == BN_OK);
      trained = training;
      forwarded = true;
    }
  }

  bn_layer* get() const { return layer.get(); }
  int32_t rank() const { return static_cast<int32_t>(shape.size()); }
  int64_t features() const { return bn_num_features(layer.get()); }
};

// Everything observable about a layer without changing it: each parameter and statistic
// (renorm ones included), the mode flags, the fused flag, the regularization loss, and the
// backward of the last successful forward.
struct Snapshot {
  std::vector<bn_status> status;
  std::vector<Bytes> bytes;
  int64_t features = 0;
  int fused = -1;
  bn_mode mode = -1;
  Bytes loss;  // bn_regularization_loss, bitwise
  bool operator==(const Snapshot& o) const {
    return status == o.status && bytes == o.bytes && features == o.features && fused == o.fused &&
           mode == o.mode && loss == o.loss;
  }
};

inline Snapshot snapshot(const Probe& p) {
  Snapshot s;
  s.features = p.features();
  REQUIRE(bn_get_fused(p.get(), &s.fused) == BN_OK);
  REQUIRE(bn_get_mode(p.get(), &s.mode) == BN_OK);
  double loss = 0.0;
  REQUIRE(bn_regularization_loss(p.get(), &loss) == BN_OK);
  s.loss.resize(sizeof loss);
  std::memcpy(s.loss.data(), &loss, sizeof loss);
  // The renorm statistics last: layers without renorm refuse them, which is recorded too.
  const bn_param params[] = {BN_PARAM_GAMMA,       BN_PARAM_BETA,           BN_PARAM_MOVING_MEAN,
                             BN_PARAM_MOVING_VARIANCE, BN_PARAM_BATCH_MEAN, BN_PARAM_BATCH_VARIANCE,
                             BN_PARAM_RENORM_MEAN, BN_PARAM_RENORM_STDDEV, BN_PARAM_MOVING_STDDEV};
  for (bn_param which : params) {
    Tensor t(param_dtype(p.dtype), s.features);
    t.poison();
    s.status.push_back(bn_get_param(p.get(), which, t.data(), s.features));
    s.bytes.push_back(t.bytes);
  }
  for (size_t i = 0; i < 4; ++i) REQUIRE(s.status[i] == BN_OK);
  if (p.trained) {
    REQUIRE(s.status[4] == BN_OK);
    REQUIRE(s.status[5] == BN_OK);
  }
  Tensor dx(p.dtype, element_count(p.shape)), dgamma(param_dtype(p.dtype), s.features),
      dbeta(param_dtype(p.dtype), s.features);
  dx.poison();
  dgamma.poison();
  dbeta.poison();
  const bn_status b = bn_backward(p.get(), p.shape.data(), p.rank(), p.x.data(), p.dy.data(), dx.data(),
                                  dgamma.data(), dbeta.data());
  if (p.forwarded) REQUIRE(b == BN_OK);
  s.status.push_back(b);
  s.bytes.push_back(dx.bytes);
  s.bytes.push_back(dgamma.bytes);
  s.bytes.push_back(dbeta.bytes);
  return s;
}

// Runs a call that must fail: the status and message as check_status, and the layer
// bitwise as it was before (parameters, statistics, saved forward).
template <class Call>
void expect_failure(const Probe& p, bn_status expected, std::initializer_list<const char*> needles, Call&& call) {
  const Snapshot before = snapshot(p);
  poison_last_error();
  const bn_status got = call();
  check_status(got, expected, needles);
  const Snapshot after = snapshot(p);
  CHECK(before == after);
}

}  // namespace capi_test
