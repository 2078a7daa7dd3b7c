// Non-finite training batches (bn_config_set_nonfinite_policy). A batch with NaN or infinity
// in one feature, after a clean step:
//  - REFUSE (default): BN_ERR_NONFINITE naming the feature; every parameter and statistic, the
//    output buffer (also in place: x) and the saved forward bitwise unchanged;
//  - PROPAGATE (Keras): the output and the moving statistics of that feature become NaN;
//  - SKIP_UPDATE: the output written (bitwise the PROPAGATE output), the moving and renorm
//    statistics bitwise unchanged, the backward works (bitwise the PROPAGATE gradient).
// For f32, f64, bf16 and f16; one-read and two-pass layouts, ghost batches, renorm; NaN, inf
// and +inf with -inf; the live setter, mode flags and inference (which never refuses).
#include <catch2/catch.hpp>

#include <batchnorm/batchnorm.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "half_ref.hpp"

namespace bn_test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kBadFeature = 2;

using Bytes = std::vector<unsigned char>;

size_t element_size(bn_dtype d) { return d == BN_F64 ? 8 : d == BN_F32 ? 4 : 2; }
const char* dtype_name(bn_dtype d) {
  return d == BN_F64 ? "f64" : d == BN_F32 ? "f32" : d == BN_BF16 ? "bf16" : "f16";
}

// Tensors of the layer's dtype as raw bytes (16-bit values rounded by the test's own model).
Bytes encode(bn_dtype d, const std::vector<double>& v) {
  Bytes b(v.size() * element_size(d));
  for (size_t i = 0; i < v.size(); ++i) {
    if (d == BN_F64) {
      std::memcpy(&b[i * 8], &v[i], 8);
    } else if (d == BN_F32) {
      const float f = static_cast<float>(v[i]);
      std::memcpy(&b[i * 4], &f, 4);
    } else {
      const uint16_t h = half_encode(d == BN_BF16 ? kBfloat16 : kBinary16, v[i]);
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
  return b;
}

double decode(bn_dtype d, const Bytes& b, size_t i) {
  if (d == BN_F64) {
    double v;
    std::memcpy(&v, &b[i * 8], 8);
    return v;
  }
  if (d == BN_F32) {
    float v;
    std::memcpy(&v, &b[i * 4], 4);
    return v;
  }
  uint16_t h;
  std::memcpy(&h, &b[i * 2], 2);
  return half_decode(d == BN_BF16 ? kBfloat16 : kBinary16, h);
}

struct Case {
  const char* name;
  std::vector<int64_t> shape;
  int32_t axis;  // the single normalized axis (4 features)
  int64_t vbs;
  bool renorm;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"2D, one block (one read)", {6, 4}, -1, 0, false},
      {"NCHW small, column blocks (one read)", {2, 4, 5, 6}, 1, 0, false},
      {"NCHW, many blocks (two passes)", {8, 4, 40, 40}, 1, 0, false},
      {"NHWC, many blocks", {16, 20, 20, 4}, -1, 0, false},
      {"ghost batches", {8, 4}, -1, 2, false},
      {"renorm", {6, 3, 4}, -1, 0, true},
      {"renorm with ghost batches", {8, 3, 4}, -1, 4, true},
  };
  return c;
}

// The feature of flat index e.
int64_t feature_of(const Case& k, size_t e) {
  const auto rank = static_cast<int32_t>(k.shape.size());
  const int32_t a = k.axis < 0 ? k.axis + rank : k.axis;
  int64_t inner = 1;
  for (int32_t d = a + 1; d < rank; ++d) inner *= k.shape[static_cast<size_t>(d)];
  return (static_cast<int64_t>(e) / inner) % k.shape[static_cast<size_t>(a)];
}

size_t element_count(const Case& k) {
  size_t n = 1;
  for (int64_t s : k.shape) n *= static_cast<size_t>(s);
  return n;
}

std::vector<bn_param> params_of(bool renorm) {
  std::vector<bn_param> p = {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE,
                             BN_PARAM_BATCH_MEAN, BN_PARAM_BATCH_VARIANCE};
  if (renorm) {
    p.push_back(BN_PARAM_RENORM_MEAN);
    p.push_back(BN_PARAM_RENORM_STDDEV);
    p.push_back(BN_PARAM_MOVING_STDDEV);
  }
  return p;
}

class Layer {
 public:
  Layer(const Case& k, bn_dtype dtype, bn_nonfinite_policy policy) : k_(k), dtype_(dtype) {
    bn_config* cfg = nullptr;
    REQUIRE(bn_config_create(&cfg) == BN_OK);
    REQUIRE(bn_config_set_axes(cfg, &k.axis, 1) == BN_OK);
    REQUIRE(bn_config_set_dtype(cfg, dtype) == BN_OK);
    REQUIRE(bn_config_set_momentum(cfg, 0.5) == BN_OK);
    REQUIRE(bn_config_set_virtual_batch_size(cfg, k.vbs) == BN_OK);
    REQUIRE(bn_config_set_renorm(cfg, k.renorm ? 1 : 0, 1.5, 0.5, 1.0, 0.9) == BN_OK);
    REQUIRE(bn_config_set_nonfinite_policy(cfg, policy) == BN_OK);
    REQUIRE(bn_create(cfg, k.shape.data(), static_cast<int32_t>(k.shape.size()), &layer_) == BN_OK);
    bn_config_destroy(cfg);
    REQUIRE(bn_set_training(layer_, 1) == BN_OK);
  }
  ~Layer() { bn_destroy(layer_); }
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  bn_layer* get() const { return layer_; }
  size_t params_bytes() const { return 4 * (dtype_ == BN_F64 ? 8 : 4); }
  bn_status forward(const Bytes& x, Bytes& y) {
    return bn_forward(layer_, k_.shape.data(), static_cast<int32_t>(k_.shape.size()), x.data(), y.data());
  }
  bn_status backward(const Bytes& x, const Bytes& dy, Bytes& dx, Bytes& dg, Bytes& db) {
    dx.assign(x.size(), 0);
    dg.assign(params_bytes(), 0);
    db.assign(params_bytes(), 0);
    return bn_backward(layer_, k_.shape.data(), static_cast<int32_t>(k_.shape.size()), x.data(), dy.data(),
                       dx.data(), dg.data(), db.data());
  }
  Bytes param(bn_param p) const {
    Bytes b(params_bytes());
    REQUIRE(bn_get_param(layer_, p, b.data(), 4) == BN_OK);
    return b;
  }
  double param_value(bn_param p, size_t f) const {
    return decode(dtype_ == BN_F64 ? BN_F64 : BN_F32, param(p), f);
  }
  std::vector<Bytes> snapshot() const {
    std::vector<Bytes> s;
    for (bn_param p : params_of(k_.renorm)) s.push_back(param(p));
    return s;
  }

 private:
  const Case& k_;
  bn_dtype dtype_;
  bn_layer* layer_ = nullptr;
};

enum class Poison { nan, inf, both_infs };
const char* poison_name(Poison p) { return p == Poison::nan ? "NaN" : p == Poison::inf ? "+inf" : "+inf and -inf"; }

// Clean data: feature f around f - 1.5, spread 1 (a deterministic pattern).
std::vector<double> clean_data(const Case& k, int step) {
  std::vector<double> x(element_count(k));
  for (size_t e = 0; e < x.size(); ++e) {
    const auto f = static_cast<double>(feature_of(k, e));
    x[e] = f - 1.5 + std::sin(0.37 * static_cast<double>(e) + step) * (1.0 + 0.1 * f);
  }
  return x;
}

std::vector<double> poisoned(const Case& k, Poison p) {
  std::vector<double> x = clean_data(k, 1);
  bool first = true;
  for (size_t e = 0; e < x.size(); ++e) {
    if (feature_of(k, e) != kBadFeature) continue;
    if (p == Poison::nan) {
      x[e] = kNaN;
      return x;
    }
    x[e] = first ? kInf : -kInf;
    if (p == Poison::inf || !first) return x;
    first = false;
  }
  return x;
}

// A layer after one clean training step (forward and backward), with that step's gradient.
struct Trained {
  Trained(const Case& k, bn_dtype d, bn_nonfinite_policy policy) : layer(k, d, policy) {
    x0 = encode(d, clean_data(k, 0));
    dy = encode(d, clean_data(k, 3));
    Bytes y(x0.size());
    REQUIRE(layer.forward(x0, y) == BN_OK);
    REQUIRE(layer.backward(x0, dy, dx0, dg0, db0) == BN_OK);
  }
  Layer layer;
  Bytes x0, dy, dx0, dg0, db0;
};

void check_refused(const Case& k, bn_dtype d, Poison p, bool in_place) {
  Trained t(k, d, BN_NONFINITE_REFUSE);
  const std::vector<Bytes> before = t.layer.snapshot();
  const Bytes x1 = encode(d, poisoned(k, p));
  Bytes y = in_place ? x1 : Bytes(x1.size(), 0xA5);
  const Bytes y_before = y;
  const bn_status st = in_place ? bn_forward(t.layer.get(), k.shape.data(), static_cast<int32_t>(k.shape.size()),
                                             y.data(), y.data())
                                : t.layer.forward(x1, y);
  const std::string message = bn_last_error();
  INFO(message);
  CHECK(st == BN_ERR_NONFINITE);
  CHECK(message.rfind("bn_forward: ", 0) == 0);
  CHECK(message.find("feature " + std::to_string(kBadFeature)) != std::string::npos);
  CHECK(message.find("not finite") != std::string::npos);
  CHECK(y == y_before);  // no output written (in place: x intact)
  CHECK(t.layer.snapshot() == before);
  // The clean step is still the saved forward: its gradient again, bitwise.
  Bytes dx, dg, db;
  REQUIRE(t.layer.backward(t.x0, t.dy, dx, dg, db) == BN_OK);
  CHECK(dx == t.dx0);
  CHECK(dg == t.dg0);
  CHECK(db == t.db0);
  // Inference never refuses.
  REQUIRE(bn_set_training(t.layer.get(), 0) == BN_OK);
  CHECK(t.layer.forward(x1, y) == BN_OK);
}

// PROPAGATE and SKIP_UPDATE side by side: the same outputs; the moving statistics poisoned
// (PROPAGATE) or kept (SKIP_UPDATE).
void check_written(const Case& k, bn_dtype d, Poison p) {
  Trained prop(k, d, BN_NONFINITE_PROPAGATE), skip(k, d, BN_NONFINITE_SKIP_UPDATE);
  const std::vector<Bytes> before = skip.layer.snapshot();
  const Bytes x1 = encode(d, poisoned(k, p));
  Bytes y_prop(x1.size()), y_skip(x1.size());
  REQUIRE(prop.layer.forward(x1, y_prop) == BN_OK);
  REQUIRE(skip.layer.forward(x1, y_skip) == BN_OK);
  CHECK(y_prop == y_skip);
  const size_t n = element_count(k);
  for (size_t e = 0; e < n; ++e) {
    const double v = decode(d, y_skip, e);
    if (feature_of(k, e) != kBadFeature) {
      INFO("element " << e);
      CHECK(std::isfinite(v));
    } else if (k.vbs == 0) {
      CHECK_FALSE(std::isfinite(v));  // every element of the feature (with ghosts: its ghost's)
    }
  }
  // PROPAGATE (Keras): the feature's moving statistics are NaN/inf now, the others finite.
  for (bn_param q : {BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE}) {
    for (size_t f = 0; f < 4; ++f) {
      INFO("param " << q << " feature " << f);
      CHECK(std::isfinite(prop.layer.param_value(q, f)) == (f != static_cast<size_t>(kBadFeature)));
    }
  }
  // SKIP_UPDATE: the moving (and renorm) statistics as they were; the batch statistics are
  // this forward's.
  const std::vector<Bytes> after = skip.layer.snapshot();
  const std::vector<bn_param> names = params_of(k.renorm);
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == BN_PARAM_BATCH_MEAN || names[i] == BN_PARAM_BATCH_VARIANCE) continue;
    INFO("param " << names[i]);
    CHECK(after[i] == before[i]);
  }
  CHECK_FALSE(std::isfinite(skip.layer.param_value(BN_PARAM_BATCH_VARIANCE, kBadFeature)));
  // The backward works, bitwise as PROPAGATE's; finite for the clean features.
  Bytes dx_p, dg_p, db_p, dx_s, dg_s, db_s;
  REQUIRE(prop.layer.backward(x1, prop.dy, dx_p, dg_p, db_p) == BN_OK);
  REQUIRE(skip.layer.backward(x1, skip.dy, dx_s, dg_s, db_s) == BN_OK);
  CHECK(dx_s == dx_p);
  CHECK(dg_s == dg_p);
  CHECK(db_s == db_p);
  for (size_t e = 0; e < n; ++e) {
    if (feature_of(k, e) != kBadFeature) CHECK(std::isfinite(decode(d, dx_s, e)));
  }
  // The next clean step updates the statistics again.
  Bytes y2(x1.size());
  REQUIRE(skip.layer.forward(skip.x0, y2) == BN_OK);
  CHECK(skip.layer.param(BN_PARAM_MOVING_MEAN) != before[2]);
}

}  // namespace

TEST_CASE("non-finite training batches are refused by default and change nothing", "[layer][nonfinite]") {
  const bn_dtype d = GENERATE(BN_F32, BN_F64, BN_BF16, BN_F16);
  const Poison p = GENERATE(Poison::nan, Poison::inf, Poison::both_infs);
  const bool in_place = GENERATE(false, true);
  for (const Case& k : cases()) {
    INFO(k.name << ", " << dtype_name(d) << ", " << poison_name(p) << (in_place ? ", in place" : ""));
    check_refused(k, d, p, in_place);
  }
}

TEST_CASE("non-finite policies PROPAGATE (Keras) and SKIP_UPDATE", "[layer][nonfinite]") {
  const bn_dtype d = GENERATE(BN_F32, BN_F64, BN_BF16, BN_F16);
  const Poison p = GENERATE(Poison::nan, Poison::inf, Poison::both_infs);
  for (const Case& k : cases()) {
    INFO(k.name << ", " << dtype_name(d) << ", " << poison_name(p));
    check_written(k, d, p);
  }
}

TEST_CASE("the default is REFUSE; the live setter and mode flags", "[layer][nonfinite]") {
  const Case& k = cases()[0];
  bn_config* cfg = nullptr;
  REQUIRE(bn_config_create(&cfg) == BN_OK);
  CHECK(bn_config_set_nonfinite_policy(cfg, 3) == BN_ERR_INVALID_ARGUMENT);
  CHECK(std::string(bn_last_error()).find("policy=3") != std::string::npos);
  CHECK(bn_config_set_nonfinite_policy(cfg, -1) == BN_ERR_INVALID_ARGUMENT);
  bn_layer* layer = nullptr;
  REQUIRE(bn_create(cfg, k.shape.data(), 2, &layer) == BN_OK);
  bn_config_destroy(cfg);
  REQUIRE(bn_set_training(layer, 1) == BN_OK);
  const Bytes x = encode(BN_F32, poisoned(k, Poison::nan));
  Bytes y(x.size());
  CHECK(bn_forward(layer, k.shape.data(), 2, x.data(), y.data()) == BN_ERR_NONFINITE);
  CHECK(bn_set_nonfinite_policy(layer, 7) == BN_ERR_INVALID_ARGUMENT);
  CHECK(bn_set_nonfinite_policy(nullptr, BN_NONFINITE_REFUSE) == BN_ERR_INVALID_ARGUMENT);
  REQUIRE(bn_set_nonfinite_policy(layer, BN_NONFINITE_PROPAGATE) == BN_OK);
  CHECK(bn_forward(layer, k.shape.data(), 2, x.data(), y.data()) == BN_OK);
  REQUIRE(bn_set_nonfinite_policy(layer, BN_NONFINITE_REFUSE) == BN_OK);
  // Every forward that computes batch statistics applies the policy, also one that normalizes
  // with the moving statistics and only updates them; one that computes none never refuses.
  const Bytes clean = encode(BN_F32, clean_data(k, 0));
  for (bn_mode mode : {BN_MODE_UPDATE_MOVING, BN_MODE_BATCH_STATISTICS, BN_MODE_PARAM_GRADIENTS}) {
    INFO("mode " << mode);
    REQUIRE(bn_set_mode(layer, mode) == BN_OK);
    CHECK(bn_forward(layer, k.shape.data(), 2, x.data(), y.data()) ==
          (mode == BN_MODE_PARAM_GRADIENTS ? BN_OK : BN_ERR_NONFINITE));
    CHECK(bn_forward(layer, k.shape.data(), 2, clean.data(), y.data()) == BN_OK);
  }
  bn_destroy(layer);
}

TEST_CASE("a variance beyond the double range is non-finite too", "[layer][nonfinite]") {
  const Case& k = cases()[0];
  bn_config* cfg = nullptr;
  REQUIRE(bn_config_create(&cfg) == BN_OK);
  REQUIRE(bn_config_set_dtype(cfg, BN_F64) == BN_OK);
  bn_layer* layer = nullptr;
  REQUIRE(bn_create(cfg, k.shape.data(), 2, &layer) == BN_OK);
  bn_config_destroy(cfg);
  REQUIRE(bn_set_training(layer, 1) == BN_OK);
  std::vector<double> x = clean_data(k, 0);
  for (size_t e = 0; e < x.size(); ++e) {
    if (feature_of(k, e) == 1) x[e] = (e % 8 < 4 ? 1e300 : -1e300);  // finite data, variance 1e600
  }
  std::vector<double> y(x.size(), 7.0);
  CHECK(bn_forward(layer, k.shape.data(), 2, x.data(), y.data()) == BN_ERR_NONFINITE);
  CHECK(std::string(bn_last_error()).find("feature 1") != std::string::npos);
  CHECK(y == std::vector<double>(x.size(), 7.0));
  bn_destroy(layer);
}

}  // namespace bn_test
