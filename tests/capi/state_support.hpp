// Helpers for the state-file tests (public header only): the layer configurations saved
// and loaded, a training history, everything observable about a layer for "nothing
// changed", blob surgery at the documented offsets (docs/state_format.md) with an
// independent bitwise CRC-32C, and the files' scratch directory.
#pragma once

#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "capi_support.hpp"

namespace state_test {

using namespace capi_test;

// A layer configuration and the shape it is built and trained with.
struct Spec {
  std::string name;
  bn_dtype dtype;
  std::vector<int64_t> shape;
  std::function<void(bn_config*)> setup;  // extra setters (may be empty)
  bn_mode mode = -1;                      // bn_set_mode after the history (-1: keep the presets)
};

inline bool has(bn_status s) {
  return s == BN_OK;
}

// An allreduce callback for a single replica: the sums over all replicas are its own values.
inline bn_status single_replica(void*, double*, int64_t) {
  return BN_OK;
}

// The configurations every round-trip test runs: each dtype, renorm, ghost batches, several
// axes, the epilogue, every Keras option and the options beyond Keras (the non-finite
// policies, cross-replica statistics).
inline std::vector<Spec> specs() {
  auto req = [](bn_status s) {
    INFO(bn_last_error());
    REQUIRE(s == BN_OK);
  };
  std::vector<Spec> v;
  v.push_back({"f32 rank 2, the defaults", BN_F32, {6, 5}, nullptr});
  v.push_back({"f64 NCHW axis 1, momentum 0.9", BN_F64, {4, 3, 2, 2}, [req](bn_config* c) {
                 const int32_t axes[] = {1};
                 req(bn_config_set_axes(c, axes, 1));
                 req(bn_config_set_momentum(c, 0.9));
               }});
  v.push_back({"bf16 NHWC, fused path", BN_BF16, {2, 2, 2, 4}, nullptr});
  v.push_back({"f16 with ReLU", BN_F16, {8, 3}, [req](bn_config* c) { req(bn_config_set_relu(c, 1)); }});
  v.push_back({"f32 renorm, clipped", BN_F32, {8, 4}, [req](bn_config* c) {
                 req(bn_config_set_renorm(c, 1, 1.5, 0.5, 0.3, 0.9));
               }});
  v.push_back({"f64 renorm, unclipped, axes (1)", BN_F64, {8, 2, 3}, [req](bn_config* c) {
                 const int32_t axes[] = {1};
                 req(bn_config_set_axes(c, axes, 1));
                 req(bn_config_set_renorm(c, 1, 1.0 / 0.0, 0.0, 1.0 / 0.0, 0.5));
               }});
  v.push_back(
      {"f32 ghost batches of 2", BN_F32, {8, 3}, [req](bn_config* c) { req(bn_config_set_virtual_batch_size(c, 2)); }});
  v.push_back({"f32 every Keras option, V2 rules", BN_F32, {6, 4}, [req](bn_config* c) {
                 req(bn_config_set_keras_rules(c, BN_KERAS_V2));
                 req(bn_config_set_fused(c, BN_FUSED_OFF));
                 req(bn_config_set_momentum(c, 0.8));
                 req(bn_config_set_epsilon(c, 1e-5));
                 req(bn_config_set_initializer(c, BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_NORMAL, 1.0, 0.05, 7));
                 req(bn_config_set_initializer(c, BN_PARAM_BETA, BN_INITIALIZER_RANDOM_UNIFORM, -0.1, 0.1, 8));
                 req(bn_config_set_initializer(c, BN_PARAM_MOVING_MEAN, BN_INITIALIZER_TRUNCATED_NORMAL, 0.0, 0.2, 9));
                 req(bn_config_set_initializer(c, BN_PARAM_MOVING_VARIANCE, BN_INITIALIZER_CONSTANT, 2.0, 0.0, 0));
                 req(bn_config_set_regularizer(c, BN_PARAM_GAMMA, 0.01, 0.001));
                 req(bn_config_set_regularizer(c, BN_PARAM_BETA, 0.0, 0.02));
                 const int32_t axes[] = {0};
                 req(bn_config_set_constraint(c, BN_PARAM_GAMMA, BN_CONSTRAINT_MIN_MAX_NORM, 0.5, 3.0, 0.75, axes, 1));
                 req(bn_config_set_constraint(c, BN_PARAM_BETA, BN_CONSTRAINT_NON_NEG, 0, 0, 0, nullptr, 0));
                 req(bn_config_set_moving_variance(c, BN_MOVING_VARIANCE_UNBIASED));
                 req(bn_config_set_single_value_policy(c, BN_SINGLE_VALUE_REJECT));
               }});
  v.push_back({"f32 cumulative average, two axes, no center or scale", BN_F32, {5, 3, 2}, [req](bn_config* c) {
                 const int32_t axes[] = {1, 2};
                 req(bn_config_set_axes(c, axes, 2));
                 req(bn_config_set_center(c, 0));
                 req(bn_config_set_scale(c, 0));
                 req(bn_config_set_cumulative_average(c, 1));
                 req(bn_config_set_nonfinite_policy(c, BN_NONFINITE_PROPAGATE));
               }});
  v.push_back({"f64 frozen V1 layer with a mode override",
               BN_F64,
               {4, 3},
               [req](bn_config* c) { req(bn_config_set_trainable(c, 0)); },
               BN_MODE_UPDATE_MOVING | BN_MODE_PARAM_GRADIENTS});
  // One replica synchronizing with itself (the sums are the local ones): fused AUTO resolves
  // to the non-fused path, which the blob must carry to a layer without the callback.
  v.push_back({"f32 NHWC synchronized, fused AUTO, skip non-finite", BN_F32, {2, 2, 2, 3}, [req](bn_config* c) {
                 req(bn_config_set_allreduce(c, &single_replica, nullptr));
                 req(bn_config_set_epsilon(c, 1e-7));  // below the fused path's clamp
                 req(bn_config_set_nonfinite_policy(c, BN_NONFINITE_SKIP_UPDATE));
               }});
  return v;
}

inline Config spec_config(const Spec& s) {
  Config cfg = make_config();
  REQUIRE(bn_config_set_dtype(cfg.get(), s.dtype) == BN_OK);
  if (s.setup) s.setup(cfg.get());
  return cfg;
}

inline Layer spec_layer(const Spec& s) {
  Config cfg = spec_config(s);
  return make_layer(cfg.get(), s.shape);
}

inline int32_t rank(const std::vector<int64_t>& shape) {
  return static_cast<int32_t>(shape.size());
}

// Whole files, for the corpus and the file tests.
inline Bytes read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_all(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

inline Bytes save(const bn_layer* layer) {
  int64_t size = -1;
  REQUIRE(bn_save(layer, nullptr, 0, &size) == BN_OK);
  REQUIRE(size > 0);
  Bytes blob(static_cast<size_t>(size));
  int64_t written = -1;
  REQUIRE(bn_save(layer, blob.data(), size, &written) == BN_OK);
  REQUIRE(written == size);
  return blob;
}

// One training step as a user's loop runs it: forward, backward, a plain SGD update of gamma
// and beta written back with bn_set_param, the constraints. Returns y, dx, dgamma, dbeta.
inline std::vector<Bytes> train_step(bn_layer* layer, const Spec& s, uint64_t seed) {
  const int64_t n = element_count(s.shape), c = bn_num_features(layer);
  Tensor x(s.dtype, n), dy(s.dtype, n), y(s.dtype, n), dx(s.dtype, n);
  Tensor dgamma(param_dtype(s.dtype), c), dbeta(param_dtype(s.dtype), c);
  x.fill(seed);
  for (size_t i = 0; i < x.count(); ++i) x.set(i, x.get(i) * (1.0 + 0.5 * static_cast<double>(i % 3)) + 0.25);
  dy.fill(seed + 1000);
  REQUIRE(bn_forward(layer, s.shape.data(), rank(s.shape), x.data(), y.data()) == BN_OK);
  INFO(bn_last_error());
  REQUIRE(bn_backward(layer, s.shape.data(), rank(s.shape), x.data(), dy.data(), dx.data(), dgamma.data(),
                      dbeta.data()) == BN_OK);
  for (bn_param which : {BN_PARAM_GAMMA, BN_PARAM_BETA}) {
    Tensor p(param_dtype(s.dtype), c);
    REQUIRE(bn_get_param(layer, which, p.data(), c) == BN_OK);
    const Tensor& g = which == BN_PARAM_GAMMA ? dgamma : dbeta;
    for (size_t i = 0; i < p.count(); ++i) p.set(i, p.get(i) - 0.1 * g.get(i));
    bn_set_param(layer, which, p.data(), c);  // refused without scale / center: nothing to train
  }
  REQUIRE(bn_apply_constraints(layer) == BN_OK);
  return {y.bytes, dx.bytes, dgamma.bytes, dbeta.bytes};
}

// An inference forward of a fixed input.
inline Bytes infer(bn_layer* layer, const Spec& s) {
  const int64_t n = element_count(s.shape);
  Tensor x(s.dtype, n), y(s.dtype, n);
  x.fill(77);
  REQUIRE(bn_forward(layer, s.shape.data(), rank(s.shape), x.data(), y.data()) == BN_OK);
  return y.bytes;
}

// A layer with a history: a few training steps, a live momentum change, the spec's mode.
inline void give_history(bn_layer* layer, const Spec& s) {
  REQUIRE(bn_set_training(layer, 1) == BN_OK);
  for (uint64_t step = 1; step <= 3; ++step) train_step(layer, s, step);
  REQUIRE(bn_set_momentum(layer, 0.75) == BN_OK);
  train_step(layer, s, 4);
  if (s.mode >= 0) REQUIRE(bn_set_mode(layer, s.mode) == BN_OK);
}

// Everything a caller can observe of a layer without changing it: its blob (configuration,
// parameters, statistics, modes, step counter), the batch statistics and the backward of
// its saved forward (statuses and bytes), the mode flags and the fused decision.
struct Observed {
  Bytes blob;
  std::vector<bn_status> status;
  std::vector<Bytes> bytes;
  bool operator==(const Observed& o) const { return blob == o.blob && status == o.status && bytes == o.bytes; }
};

inline Observed observe(bn_layer* layer, const Spec& s, const Tensor& x, const Tensor& dy) {
  Observed o;
  o.blob = save(layer);
  const int64_t c = bn_num_features(layer);
  for (bn_param which : {BN_PARAM_BATCH_MEAN, BN_PARAM_BATCH_VARIANCE}) {
    Tensor t(param_dtype(s.dtype), c);
    t.poison();
    o.status.push_back(bn_get_param(layer, which, t.data(), c));
    o.bytes.push_back(t.bytes);
  }
  Tensor dx(s.dtype, element_count(s.shape)), dgamma(param_dtype(s.dtype), c), dbeta(param_dtype(s.dtype), c);
  dx.poison();
  dgamma.poison();
  dbeta.poison();
  o.status.push_back(
      bn_backward(layer, s.shape.data(), rank(s.shape), x.data(), dy.data(), dx.data(), dgamma.data(), dbeta.data()));
  o.bytes.insert(o.bytes.end(), {dx.bytes, dgamma.bytes, dbeta.bytes});
  bn_mode mode = -1;
  int fused = -1;
  o.status.push_back(bn_get_mode(layer, &mode));
  o.status.push_back(bn_get_fused(layer, &fused));
  o.status.push_back(mode);
  o.status.push_back(fused);
  return o;
}

// A layer of `spec` with a history and a saved training forward of (x, dy), and what it shows.
struct Target {
  Spec spec;
  Layer layer;
  Tensor x, dy;
  explicit Target(const Spec& s)
      : spec(s), layer(spec_layer(s)), x(s.dtype, element_count(s.shape)), dy(s.dtype, element_count(s.shape)) {
    give_history(layer.get(), s);  // leaves it in training mode (or the spec's mode)
    x.fill(5);
    dy.fill(6);
    Tensor y(s.dtype, element_count(s.shape));
    REQUIRE(bn_forward(layer.get(), s.shape.data(), rank(s.shape), x.data(), y.data()) == BN_OK);
  }
  Observed observe() { return state_test::observe(layer.get(), spec, x, dy); }
};

// ---------------------------------------------------------------------------
// Blob surgery at the documented offsets (docs/state_format.md).
namespace offset {
constexpr size_t version = 8, total_size = 16, dtype = 32, ndim = 36, input_shape = 40, axis_count = 104, axes = 108,
                 momentum = 144, epsilon = 152, center = 160, mode = 176, fused_resolved = 184, callbacks = 204,
                 nonfinite_policy = 212, virtual_batch_size = 248, initializers = 256, regularizers = 384,
                 constraints = 416, step_count = 544, features = 552, array_count = 560, element_size = 564,
                 arrays = 568;
}

// CRC-32C bit by bit (no table): an implementation independent of the library's.
inline uint32_t crc32c_bitwise(const unsigned char* p, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

template <class T>
void put(Bytes& b, size_t at, T value) {  // little-endian on the hosts the library runs on (x86-64)
  std::memcpy(&b[at], &value, sizeof value);
}
template <class T>
T get(const Bytes& b, size_t at) {
  T value;
  std::memcpy(&value, &b[at], sizeof value);
  return value;
}

// Recomputes the total size field and the checksum, so that a crafted blob reaches the
// checks of its values.
inline void reseal(Bytes& b) {
  put<uint64_t>(b, offset::total_size, b.size());
  put<uint32_t>(b, b.size() - 4, crc32c_bitwise(b.data(), b.size() - 4));
}

// ---------------------------------------------------------------------------
// A scratch directory, removed with its files.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/bn_state_XXXXXX";
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    REQUIRE(mkdtemp(buf.data()) != nullptr);
    path_ = buf.data();
  }
  ~TempDir() {
    for (const std::string& f : files()) ::unlink((path_ + "/" + f).c_str());
    ::rmdir(path_.c_str());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }
  // The names in the directory (not . and ..).
  std::vector<std::string> files() const {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(path_.c_str())) {
      while (const dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
      }
      ::closedir(d);
    }
    return names;
  }

 private:
  std::string path_;
};

}  // namespace state_test
