// Keras initializers, regularizers and constraints through the C API (SEMANTICS B.6, B.8).
// Expectations are independent of the library: the generator against a separate SplitMix64
// and Box-Muller written here with the standard library's log/cos, pinned float32 values
// computed offline with 200-bit arithmetic (mpmath), hand-computed penalties and constraints,
// and central finite differences of the penalty.
#include <batchnorm/batchnorm.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kE = 1e-7;  // Keras backend.epsilon()

// --- handles -------------------------------------------------------------------------
struct Cfg {
  bn_config* p = nullptr;
  explicit Cfg(bn_dtype dtype = BN_F64) {
    REQUIRE(bn_config_create(&p) == BN_OK);
    REQUIRE(bn_config_set_dtype(p, dtype) == BN_OK);
  }
  ~Cfg() { bn_config_destroy(p); }
  Cfg(const Cfg&) = delete;
  Cfg& operator=(const Cfg&) = delete;
  void axes(std::vector<int32_t> a) const {
    REQUIRE(bn_config_set_axes(p, a.data(), static_cast<int32_t>(a.size())) == BN_OK);
  }
  void init(bn_param which, bn_initializer kind, double a, double b, uint64_t seed) const {
    const bn_status st = bn_config_set_initializer(p, which, kind, a, b, seed);
    INFO(bn_last_error());
    REQUIRE(st == BN_OK);
  }
  void reg(bn_param which, double l1, double l2) const {
    REQUIRE(bn_config_set_regularizer(p, which, l1, l2) == BN_OK);
  }
  void constraint(bn_param which, bn_constraint kind, double min_value, double max_value, double rate,
                  std::vector<int32_t> axes) const {
    const bn_status st = bn_config_set_constraint(p, which, kind, min_value, max_value, rate, axes.data(),
                                                  static_cast<int32_t>(axes.size()));
    INFO(bn_last_error());
    REQUIRE(st == BN_OK);
  }
};

struct Layer {
  bn_layer* p = nullptr;
  bn_dtype dtype = BN_F64;
  std::vector<int64_t> shape;
  Layer(const Cfg& cfg, std::vector<int64_t> s, bn_dtype dt = BN_F64) : dtype(dt), shape(std::move(s)) {
    const bn_status st = bn_create(cfg.p, shape.data(), rank(), &p);
    INFO(bn_last_error());
    REQUIRE(st == BN_OK);
  }
  ~Layer() { bn_destroy(p); }
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;
  int32_t rank() const { return static_cast<int32_t>(shape.size()); }
  int64_t features() const { return bn_num_features(p); }
  size_t elements() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
  std::vector<double> get(bn_param which) const {
    const auto c = static_cast<size_t>(features());
    std::vector<double> out(c);
    if (dtype == BN_F64) {
      REQUIRE(bn_get_param(p, which, out.data(), features()) == BN_OK);
    } else {
      std::vector<float> f(c);
      REQUIRE(bn_get_param(p, which, f.data(), features()) == BN_OK);
      for (size_t i = 0; i < c; ++i) out[i] = f[i];
    }
    return out;
  }
  void set(bn_param which, const std::vector<double>& v) const {
    bn_status st;
    if (dtype == BN_F64) {
      st = bn_set_param(p, which, v.data(), features());
    } else {
      std::vector<float> f(v.begin(), v.end());
      st = bn_set_param(p, which, f.data(), features());
    }
    INFO(bn_last_error());
    REQUIRE(st == BN_OK);
  }
  double loss() const {
    double l = -1.0;
    REQUIRE(bn_regularization_loss(p, &l) == BN_OK);
    return l;
  }
  // Training forward and backward on f64 data; returns {dgamma, dbeta}.
  std::pair<std::vector<double>, std::vector<double>> train_step(const std::vector<double>& x,
                                                                 const std::vector<double>& dy) const {
    REQUIRE(dtype == BN_F64);
    std::vector<double> y(x.size()), dx(x.size());
    std::vector<double> dg(static_cast<size_t>(features())), db(dg.size());
    REQUIRE(bn_forward(p, shape.data(), rank(), x.data(), y.data()) == BN_OK);
    const bn_status st = bn_backward(p, shape.data(), rank(), x.data(), dy.data(), dx.data(), dg.data(), db.data());
    INFO(bn_last_error());
    REQUIRE(st == BN_OK);
    return {dg, db};
  }
};

std::vector<double> ramp(size_t n, double scale, double offset) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = offset + scale * std::sin(1.7 * static_cast<double>(i) + 0.3);
  return v;
}

// --- an independent SplitMix64 and Box-Muller (standard library log/cos) ----------------
struct RefSplitMix64 {
  uint64_t x;
  uint64_t next() {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double uniform() { return std::ldexp(static_cast<double>(next() >> 11), -53); }
  double normal() {
    const double u1 = std::ldexp(static_cast<double>((next() >> 11) + 1), -53);
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
  }
};

double mean_of(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double stddev_of(const std::vector<double>& v) {
  const double m = mean_of(v);
  double s = 0.0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size()));
}

bool bitwise_equal(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

const std::vector<int64_t> kWide = {1, 20000};  // 20000 features, one row

}  // namespace

// =======================================================================================
// Initializers
TEST_CASE("without initializers the parameters start at Keras' defaults", "[keras_params][initializer]") {
  for (bn_dtype dt : {BN_F32, BN_F64}) {
    Cfg cfg(dt);
    Layer layer(cfg, {2, 5}, dt);
    CHECK(layer.get(BN_PARAM_GAMMA) == std::vector<double>(5, 1.0));
    CHECK(layer.get(BN_PARAM_BETA) == std::vector<double>(5, 0.0));
    CHECK(layer.get(BN_PARAM_MOVING_MEAN) == std::vector<double>(5, 0.0));
    CHECK(layer.get(BN_PARAM_MOVING_VARIANCE) == std::vector<double>(5, 1.0));
  }
  // Setting ZEROS/ONES/CONSTANT replaces an earlier random initializer.
  Cfg cfg;
  cfg.init(BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_NORMAL, 0.0, 1.0, 3);
  cfg.init(BN_PARAM_GAMMA, BN_INITIALIZER_ZEROS, 0.0, 0.0, 0);
  cfg.init(BN_PARAM_BETA, BN_INITIALIZER_ONES, 0.0, 0.0, 0);
  cfg.init(BN_PARAM_MOVING_MEAN, BN_INITIALIZER_CONSTANT, -2.5, 0.0, 0);
  cfg.init(BN_PARAM_MOVING_VARIANCE, BN_INITIALIZER_CONSTANT, 4.0, 0.0, 0);
  Layer layer(cfg, {2, 3});
  CHECK(layer.get(BN_PARAM_GAMMA) == std::vector<double>(3, 0.0));
  CHECK(layer.get(BN_PARAM_BETA) == std::vector<double>(3, 1.0));
  CHECK(layer.get(BN_PARAM_MOVING_MEAN) == std::vector<double>(3, -2.5));
  CHECK(layer.get(BN_PARAM_MOVING_VARIANCE) == std::vector<double>(3, 4.0));
}

TEST_CASE("the generator is SplitMix64: uniform values are its words, exactly", "[keras_params][initializer]") {
  // The reference SplitMix64 started at 0 gives 0xe220a8397b1dcdaf first (Vigna's splitmix64.c).
  RefSplitMix64 check{0};
  REQUIRE(check.next() == 0xe220a8397b1dcdafULL);
  {
    Cfg cfg;
    cfg.init(BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_UNIFORM, 0.0, 1.0, 0);
    Layer layer(cfg, {1, 3});
    CHECK(layer.get(BN_PARAM_GAMMA)[0] == std::ldexp(static_cast<double>(0xe220a8397b1dcdafULL >> 11), -53));
  }
  for (uint64_t seed : {uint64_t{1}, uint64_t{12345}, ~uint64_t{0}}) {
    CAPTURE(seed);
    Cfg cfg;
    cfg.init(BN_PARAM_BETA, BN_INITIALIZER_RANDOM_UNIFORM, -3.0, 5.0, seed);
    Layer layer(cfg, {1, 257});
    const std::vector<double> got = layer.get(BN_PARAM_BETA);
    RefSplitMix64 ref{seed};
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);
      REQUIRE(got[i] == -3.0 + 8.0 * ref.uniform());
    }
  }
}

TEST_CASE("normal values are Box-Muller of the same words, in row-major order", "[keras_params][initializer]") {
  SECTION("float64 against the standard library's log and cos") {
    Cfg cfg;
    cfg.init(BN_PARAM_MOVING_MEAN, BN_INITIALIZER_RANDOM_NORMAL, 0.5, 2.0, 7);
    Layer layer(cfg, {1, 4000});
    const std::vector<double> got = layer.get(BN_PARAM_MOVING_MEAN);
    RefSplitMix64 ref{7};
    double worst = 0.0;
    for (double v : got) worst = std::max(worst, std::fabs(v - (0.5 + 2.0 * ref.normal())));
    // The library uses its own ln and cos (about 1 ulp); the difference is rounding only.
    CHECK(worst < 1e-13);
  }
  SECTION("float32 values are bitwise the pinned ones (200-bit reference, rounded to float)") {
    // RANDOM_NORMAL(0, 1), seed 2024, the first 20 values; the 18th draw (index 17) has
    // |z| > 2, so TRUNCATED_NORMAL skips it and continues with the 19th.
    const float normal[] = {0x1.9828dcp-1f,  0x1.28992ep+0f,  -0x1.27334ep-1f, -0x1.a3ebb8p+0f, -0x1.b0bf9p+0f,
                            0x1.4ae712p-1f,  -0x1.3ae3a4p-2f, -0x1.79389ep-1f, -0x1.17cc82p-4f, -0x1.3b0daap-1f,
                            -0x1.3abf4ep-1f, -0x1.84dae6p+0f, 0x1.52389p-1f,   0x1.494664p+0f,  0x1.4bcc8p-1f,
                            -0x1.0c1234p-2f, 0x1.d213d8p-2f,  0x1.3468e2p+1f,  -0x1.699fecp-1f, -0x1.01ecaep+0f};
    const float truncated[] = {0x1.9828dcp-1f,  0x1.28992ep+0f,  -0x1.27334ep-1f, -0x1.a3ebb8p+0f, -0x1.b0bf9p+0f,
                               0x1.4ae712p-1f,  -0x1.3ae3a4p-2f, -0x1.79389ep-1f, -0x1.17cc82p-4f, -0x1.3b0daap-1f,
                               -0x1.3abf4ep-1f, -0x1.84dae6p+0f, 0x1.52389p-1f,   0x1.494664p+0f,  0x1.4bcc8p-1f,
                               -0x1.0c1234p-2f, 0x1.d213d8p-2f,  -0x1.699fecp-1f, -0x1.01ecaep+0f, -0x1.3e04dep-1f};
    Cfg cfg(BN_F32);
    cfg.init(BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_NORMAL, 0.0, 1.0, 2024);
    cfg.init(BN_PARAM_BETA, BN_INITIALIZER_TRUNCATED_NORMAL, 0.0, 1.0, 2024);
    Layer layer(cfg, {3, 20}, BN_F32);
    std::vector<float> g(20), b(20);
    REQUIRE(bn_get_param(layer.p, BN_PARAM_GAMMA, g.data(), 20) == BN_OK);
    REQUIRE(bn_get_param(layer.p, BN_PARAM_BETA, b.data(), 20) == BN_OK);
    for (size_t i = 0; i < 20; ++i) {
      CAPTURE(i);
      CHECK(std::memcmp(&g[i], &normal[i], sizeof(float)) == 0);
      CHECK(std::memcmp(&b[i], &truncated[i], sizeof(float)) == 0);
    }
  }
  SECTION("several axes: row-major over the kept axes, as one long row") {
    Cfg multi;
    multi.axes({1, 3});
    multi.init(BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_NORMAL, 0.0, 1.0, 99);
    Layer a(multi, {2, 3, 4, 5});
    Cfg flat;
    flat.init(BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_NORMAL, 0.0, 1.0, 99);
    Layer b(flat, {1, 15});
    CHECK(bitwise_equal(a.get(BN_PARAM_GAMMA), b.get(BN_PARAM_GAMMA)));
  }
}

TEST_CASE("initializers are reproducible bit for bit and depend on the seed", "[keras_params][initializer]") {
  const bn_initializer kinds[] = {BN_INITIALIZER_RANDOM_NORMAL, BN_INITIALIZER_RANDOM_UNIFORM,
                                  BN_INITIALIZER_TRUNCATED_NORMAL};
  for (bn_dtype dt : {BN_F32, BN_F64}) {
    for (bn_initializer kind : kinds) {
      CAPTURE(dt, kind);
      auto draw = [&](uint64_t seed, bn_param which) {
        Cfg cfg(dt);
        cfg.init(which, kind, 0.5, 1.5, seed);  // mean/stddev or minval/maxval
        Layer layer(cfg, {2, 500}, dt);
        return layer.get(which);
      };
      const std::vector<double> first = draw(17, BN_PARAM_GAMMA);
      CHECK(bitwise_equal(first, draw(17, BN_PARAM_GAMMA)));
      // The draw does not depend on the parameter (as two Keras initializers with one seed).
      CHECK(bitwise_equal(first, draw(17, BN_PARAM_BETA)));
      CHECK(bitwise_equal(first, draw(17, BN_PARAM_MOVING_MEAN)));
      const std::vector<double> other = draw(18, BN_PARAM_GAMMA);
      int same = 0;
      for (size_t i = 0; i < first.size(); ++i) same += first[i] == other[i];
      CHECK(same < 5);
    }
  }
  // float32 layers store the float64 draw rounded to float.
  for (bn_initializer kind : kinds) {
    Cfg c64(BN_F64), c32(BN_F32);
    c64.init(BN_PARAM_GAMMA, kind, -0.25, 3.0, 5);
    c32.init(BN_PARAM_GAMMA, kind, -0.25, 3.0, 5);
    Layer l64(c64, {1, 300}), l32(c32, {1, 300}, BN_F32);
    const std::vector<double> d = l64.get(BN_PARAM_GAMMA), f = l32.get(BN_PARAM_GAMMA);
    for (size_t i = 0; i < d.size(); ++i) REQUIRE(f[i] == static_cast<double>(static_cast<float>(d[i])));
  }
}

TEST_CASE("initializer statistics", "[keras_params][initializer]") {
  const double n = static_cast<double>(kWide[1]);
  SECTION("random normal") {
    Cfg cfg;
    cfg.init(BN_PARAM_GAMMA, BN_INITIALIZER_RANDOM_NORMAL, 3.0, 0.5, 11);
    Layer layer(cfg, kWide);
    const std::vector<double> v = layer.get(BN_PARAM_GAMMA);
    CHECK(std::fabs(mean_of(v) - 3.0) < 5.0 * 0.5 / std::sqrt(n));
    CHECK(stddev_of(v) == Approx(0.5).epsilon(0.03));
    int beyond_two = 0;
    for (double x : v) beyond_two += std::fabs(x - 3.0) > 1.0;
    CHECK(beyond_two / n == Approx(0.0455).margin(0.006));  // P(|z| > 2) = 4.55%
  }
  SECTION("random uniform") {
    Cfg cfg;
    cfg.init(BN_PARAM_BETA, BN_INITIALIZER_RANDOM_UNIFORM, -1.0, 3.0, 12);
    Layer layer(cfg, kWide);
    const std::vector<double> v = layer.get(BN_PARAM_BETA);
    for (double x : v) REQUIRE((x >= -1.0 && x < 3.0));
    CHECK(std::fabs(mean_of(v) - 1.0) < 5.0 * (4.0 / std::sqrt(12.0)) / std::sqrt(n));
    CHECK(stddev_of(v) == Approx(4.0 / std::sqrt(12.0)).epsilon(0.03));
  }
  SECTION("truncated normal stays within 2 stddev, with the truncated spread") {
    for (bn_dtype dt : {BN_F32, BN_F64}) {
      Cfg cfg(dt);
      cfg.init(BN_PARAM_MOVING_MEAN, BN_INITIALIZER_TRUNCATED_NORMAL, -2.0, 0.25, 13);
      Layer layer(cfg, kWide, dt);
      const std::vector<double> v = layer.get(BN_PARAM_MOVING_MEAN);
      const double slack = dt == BN_F32 ? 1e-6 : 1e-15;  // rounding of mean + stddev*z
      for (double x : v) REQUIRE(std::fabs(x + 2.0) <= 0.5 * (1.0 + slack));
      CHECK(std::fabs(mean_of(v) + 2.0) < 5.0 * 0.25 / std::sqrt(n));
      // Var of a standard normal truncated to [-2, 2]: 1 - 4*phi(2)/(2*Phi(2) - 1) = 0.773741.
      CHECK(stddev_of(v) == Approx(0.25 * std::sqrt(0.773741)).epsilon(0.03));
      int near_edge = 0;  // the tails are cut, not piled up at the edge
      for (double x : v) near_edge += std::fabs(x + 2.0) > 0.49;
      CHECK(near_edge < 200);
    }
  }
  SECTION("truncated normal agrees with the reference rejection, value by value") {
    Cfg cfg;
    cfg.init(BN_PARAM_GAMMA, BN_INITIALIZER_TRUNCATED_NORMAL, 1.0, 2.0, 21);
    Layer layer(cfg, {1, 3000});
    const std::vector<double> v = layer.get(BN_PARAM_GAMMA);
    RefSplitMix64 ref{21};
    for (size_t i = 0; i < v.size(); ++i) {
      double z = ref.normal();
      while (std::fabs(z) > 2.0) z = ref.normal();
      REQUIRE(std::fabs(v[i] - (1.0 + 2.0 * z)) < 1e-12);
    }
  }
  SECTION("moving-variance initializers never give a negative value") {
    Cfg cfg;
    cfg.init(BN_PARAM_MOVING_VARIANCE, BN_INITIALIZER_TRUNCATED_NORMAL, 1.0, 0.5, 14);  // a == 2*b
    Layer layer(cfg, kWide);
    for (double x : layer.get(BN_PARAM_MOVING_VARIANCE)) REQUIRE(x >= 0.0);
    Cfg uni;
    uni.init(BN_PARAM_MOVING_VARIANCE, BN_INITIALIZER_RANDOM_UNIFORM, 0.0, 1e-3, 15);
    Layer layer2(uni, kWide);
    for (double x : layer2.get(BN_PARAM_MOVING_VARIANCE)) REQUIRE(x >= 0.0);
  }
}

TEST_CASE("initial values are what the layer normalizes with", "[keras_params][initializer]") {
  Cfg cfg;
  cfg.init(BN_PARAM_GAMMA, BN_INITIALIZER_CONSTANT, 2.0, 0.0, 0);
  cfg.init(BN_PARAM_BETA, BN_INITIALIZER_CONSTANT, -1.0, 0.0, 0);
  cfg.init(BN_PARAM_MOVING_MEAN, BN_INITIALIZER_CONSTANT, 0.5, 0.0, 0);
  cfg.init(BN_PARAM_MOVING_VARIANCE, BN_INITIALIZER_CONSTANT, 3.999, 0.0, 0);
  REQUIRE(bn_config_set_epsilon(cfg.p, 1e-3) == BN_OK);
  Layer layer(cfg, {2, 2});
  const std::vector<double> x = {0.5, 2.5, -1.5, 4.5};
  std::vector<double> y(4);
  REQUIRE(bn_forward(layer.p, layer.shape.data(), 2, x.data(), y.data()) == BN_OK);  // inference
  // (x - 0.5)/sqrt(4) * 2 - 1 = x - 1.5
  for (size_t i = 0; i < 4; ++i) CHECK(y[i] == Approx(x[i] - 1.5).epsilon(1e-14));
}

TEST_CASE("an initializer of a parameter the layer does not have is ignored", "[keras_params][initializer]") {
  Cfg cfg;
  cfg.init(BN_PARAM_GAMMA, BN_INITIALIZER_CONSTANT, 7.0, 0.0, 0);
  cfg.init(BN_PARAM_BETA, BN_INITIALIZER_CONSTANT, 7.0, 0.0, 0);
  REQUIRE(bn_config_set_scale(cfg.p, 0) == BN_OK);
  REQUIRE(bn_config_set_center(cfg.p, 0) == BN_OK);
  Layer layer(cfg, {2, 3});
  CHECK(layer.get(BN_PARAM_GAMMA) == std::vector<double>(3, 1.0));
  CHECK(layer.get(BN_PARAM_BETA) == std::vector<double>(3, 0.0));
}

TEST_CASE("a value the storage type cannot hold fails bn_create", "[keras_params][initializer]") {
  Cfg cfg(BN_F32);
  cfg.init(BN_PARAM_GAMMA, BN_INITIALIZER_CONSTANT, 1e39, 0.0, 0);
  const int64_t shape[] = {2, 3};
  bn_layer* out = nullptr;
  CHECK(bn_create(cfg.p, shape, 2, &out) == BN_ERR_INVALID_ARGUMENT);
  CHECK(out == nullptr);
  CHECK(std::string(bn_last_error()).find("GAMMA") != std::string::npos);
  // float64 storage holds it.
  REQUIRE(bn_config_set_dtype(cfg.p, BN_F64) == BN_OK);
  Layer layer(cfg, {2, 3});
  CHECK(layer.get(BN_PARAM_GAMMA) == std::vector<double>(3, 1e39));
}

// =======================================================================================
// Regularizers
TEST_CASE("the regularization loss is l1*sum|w| + l2*sum w^2 per parameter", "[keras_params][regularizer]") {
  Cfg cfg;
  Layer plain(cfg, {2, 3});
  CHECK(plain.loss() == 0.0);
  cfg.reg(BN_PARAM_GAMMA, 0.1, 0.01);
  cfg.reg(BN_PARAM_BETA, 0.0, 0.2);
  Layer layer(cfg, {2, 3});
  // Defaults gamma 1, beta 0: 0.1*3 + 0.01*3.
  CHECK(layer.loss() == Approx(0.33).epsilon(1e-15));
  layer.set(BN_PARAM_GAMMA, {1.0, -2.0, 3.0});
  layer.set(BN_PARAM_BETA, {0.5, 0.0, -0.25});
  // 0.1*6 + 0.01*14 + 0.2*(0.25 + 0.0625)
  CHECK(layer.loss() == Approx(0.8025).epsilon(1e-15));
  // Moving statistics are not regularized.
  layer.set(BN_PARAM_MOVING_MEAN, {5.0, 5.0, 5.0});
  CHECK(layer.loss() == Approx(0.8025).epsilon(1e-15));

  SECTION("a frozen layer still counts it (Keras 2)") {
    for (bn_keras_rules rules : {BN_KERAS_V1, BN_KERAS_V2}) {
      CAPTURE(rules);
      REQUIRE(bn_config_set_keras_rules(cfg.p, rules) == BN_OK);
      REQUIRE(bn_config_set_trainable(cfg.p, 0) == BN_OK);
      Layer frozen(cfg, {2, 3});
      frozen.set(BN_PARAM_GAMMA, {1.0, -2.0, 3.0});
      frozen.set(BN_PARAM_BETA, {0.5, 0.0, -0.25});
      CHECK(frozen.loss() == Approx(0.8025).epsilon(1e-15));
    }
    // ... and one frozen on the fly.
    REQUIRE(bn_set_trainable(layer.p, 0) == BN_OK);
    CHECK(layer.loss() == Approx(0.8025).epsilon(1e-15));
  }
  SECTION("a parameter the layer does not have adds nothing") {
    REQUIRE(bn_config_set_scale(cfg.p, 0) == BN_OK);
    Layer no_gamma(cfg, {2, 3});
    no_gamma.set(BN_PARAM_BETA, {0.5, 0.0, -0.25});
    CHECK(no_gamma.loss() == Approx(0.0625).epsilon(1e-15));
  }
  SECTION("float32 parameters are summed as stored") {
    Cfg c32(BN_F32);
    c32.reg(BN_PARAM_GAMMA, 0.0, 1.0);
    Layer l32(c32, {2, 1}, BN_F32);
    l32.set(BN_PARAM_GAMMA, {0.1});
    const double stored = static_cast<double>(0.1f);
    CHECK(l32.loss() == stored * stored);
  }
}

TEST_CASE("bn_backward adds the regularizer gradient to dgamma and dbeta", "[keras_params][regularizer]") {
  const std::vector<int64_t> shape = {6, 3};
  const std::vector<double> x = ramp(18, 1.5, 0.2), dy = ramp(18, 0.8, -0.1);
  const std::vector<double> gamma = {0.7, 0.0, -1.3}, beta = {0.2, -0.5, 0.0};
  const double gl1 = 0.3, gl2 = 0.05, bl1 = 0.1, bl2 = 0.2;
  auto build = [&](bool regularized, bool trainable, bn_keras_rules rules) {
    Cfg cfg;
    REQUIRE(bn_config_set_keras_rules(cfg.p, rules) == BN_OK);
    REQUIRE(bn_config_set_trainable(cfg.p, trainable ? 1 : 0) == BN_OK);
    if (regularized) {
      cfg.reg(BN_PARAM_GAMMA, gl1, gl2);
      cfg.reg(BN_PARAM_BETA, bl1, bl2);
    }
    auto layer = std::make_unique<Layer>(cfg, shape);
    layer->set(BN_PARAM_GAMMA, gamma);
    layer->set(BN_PARAM_BETA, beta);
    REQUIRE(bn_set_training(layer->p, 1) == BN_OK);
    return layer;
  };
  auto sign = [](double w) { return w > 0 ? 1.0 : (w < 0 ? -1.0 : 0.0); };

  SECTION("hand formula and central finite differences of the loss") {
    auto reg = build(true, true, BN_KERAS_V1);
    auto plain = build(false, true, BN_KERAS_V1);
    const auto with = reg->train_step(x, dy);
    const auto without = plain->train_step(x, dy);
    for (size_t f = 0; f < 3; ++f) {
      CAPTURE(f);
      const double hand_g = gl1 * sign(gamma[f]) + 2.0 * gl2 * gamma[f];
      const double hand_b = bl1 * sign(beta[f]) + 2.0 * bl2 * beta[f];
      CHECK(with.first[f] - without.first[f] == Approx(hand_g).margin(1e-14));
      CHECK(with.second[f] - without.second[f] == Approx(hand_b).margin(1e-14));
    }
    // d loss / d w by central differences (at w = 0 the L1 part is symmetric: 0, the
    // subgradient the library reports).
    const double h = 1e-6;
    for (bn_param which : {BN_PARAM_GAMMA, BN_PARAM_BETA}) {
      const bool is_gamma = which == BN_PARAM_GAMMA;
      const std::vector<double>& base = is_gamma ? gamma : beta;
      for (size_t f = 0; f < 3; ++f) {
        std::vector<double> w = base;
        w[f] = base[f] + h;
        reg->set(which, w);
        const double up = reg->loss();
        w[f] = base[f] - h;
        reg->set(which, w);
        const double down = reg->loss();
        reg->set(which, base);
        const double fd = (up - down) / (2.0 * h);
        const double lib = is_gamma ? with.first[f] - without.first[f] : with.second[f] - without.second[f];
        CAPTURE(which, f);
        CHECK(fd == Approx(lib).margin(1e-8));
      }
    }
  }
  SECTION("a frozen layer reports zero dgamma and dbeta, regularized or not") {
    for (bn_keras_rules rules : {BN_KERAS_V1, BN_KERAS_V2}) {
      CAPTURE(rules);
      auto reg = build(true, false, rules);
      const auto grads = reg->train_step(x, dy);
      CHECK(grads.first == std::vector<double>(3, 0.0));
      CHECK(grads.second == std::vector<double>(3, 0.0));
      CHECK(reg->loss() > 0.0);
    }
  }
  SECTION("inference-mode gradients (V1) include it too") {
    auto reg = build(true, true, BN_KERAS_V1);
    auto plain = build(false, true, BN_KERAS_V1);
    for (auto* l : {reg.get(), plain.get()}) REQUIRE(bn_set_training(l->p, 0) == BN_OK);
    const auto with = reg->train_step(x, dy);
    const auto without = plain->train_step(x, dy);
    for (size_t f = 0; f < 3; ++f) {
      CHECK(with.first[f] - without.first[f] == Approx(gl1 * sign(gamma[f]) + 2.0 * gl2 * gamma[f]).margin(1e-14));
    }
  }
  SECTION("absent parameters report zero") {
    Cfg cfg;
    cfg.reg(BN_PARAM_GAMMA, gl1, gl2);
    cfg.reg(BN_PARAM_BETA, bl1, bl2);
    REQUIRE(bn_config_set_scale(cfg.p, 0) == BN_OK);
    REQUIRE(bn_config_set_center(cfg.p, 0) == BN_OK);
    Layer layer(cfg, shape);
    REQUIRE(bn_set_training(layer.p, 1) == BN_OK);
    const auto grads = layer.train_step(x, dy);
    CHECK(grads.first == std::vector<double>(3, 0.0));
    CHECK(grads.second == std::vector<double>(3, 0.0));
    CHECK(layer.loss() == 0.0);
  }
}

// =======================================================================================
// Constraints
namespace {

std::vector<double> constrain(const Cfg& cfg, const std::vector<int64_t>& shape, const std::vector<double>& w) {
  Layer layer(cfg, shape);
  layer.set(BN_PARAM_GAMMA, w);
  const bn_status st = bn_apply_constraints(layer.p);
  INFO(bn_last_error());
  REQUIRE(st == BN_OK);
  return layer.get(BN_PARAM_GAMMA);
}

}  // namespace

TEST_CASE("constraints on a single-axis layer: storage (C,), axis 0 is all features", "[keras_params][constraint]") {
  const std::vector<int64_t> shape = {2, 4};
  const std::vector<double> w = {3.0, 0.0, -4.0, 0.0};  // norm 5
  for (int32_t axis : {0, -1}) {
    CAPTURE(axis);
    Cfg unit;
    unit.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, {axis});
    std::vector<double> got = constrain(unit, shape, w);
    for (size_t i = 0; i < 4; ++i) CHECK(got[i] == w[i] / (kE + 5.0));

    Cfg max2;
    max2.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_MAX_NORM, 0, 2.0, 0, {axis});
    got = constrain(max2, shape, w);
    for (size_t i = 0; i < 4; ++i) CHECK(got[i] == w[i] * (2.0 / (kE + 5.0)));
    // Below the bound Keras' formula still scales by norm/(e + norm).
    Cfg max10;
    max10.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_MAX_NORM, 0, 10.0, 0, {axis});
    got = constrain(max10, shape, w);
    for (size_t i = 0; i < 4; ++i) CHECK(got[i] == w[i] * (5.0 / (kE + 5.0)));

    Cfg minmax;
    minmax.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_MIN_MAX_NORM, 6.0, 10.0, 0.5, {axis});
    got = constrain(minmax, shape, w);
    for (size_t i = 0; i < 4; ++i) CHECK(got[i] == Approx(w[i] * (5.5 / (kE + 5.0))).epsilon(1e-15));
    Cfg minmax_strict;
    minmax_strict.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_MIN_MAX_NORM, 0.5, 1.0, 1.0, {axis});
    got = constrain(minmax_strict, shape, w);
    for (size_t i = 0; i < 4; ++i) CHECK(got[i] == Approx(w[i] / (kE + 5.0)).epsilon(1e-15));
  }
  // NonNeg as Keras 2: w * (w >= 0), so negatives become -0.0.
  Cfg nonneg;
  nonneg.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_NON_NEG, 0, 0, 0, {});
  const std::vector<double> got = constrain(nonneg, shape, {1.5, -2.0, 0.0, -1e-30});
  CHECK(got[0] == 1.5);
  CHECK(got[1] == 0.0);
  CHECK(std::signbit(got[1]));
  CHECK(got[2] == 0.0);
  CHECK(!std::signbit(got[2]));
  CHECK(got[3] == 0.0);
}

TEST_CASE("constraints on a several-axis layer use the full-rank storage shape", "[keras_params][constraint]") {
  // Input (N, H, W, C) = (2, 3, 4, 2), axes {1, 3}: storage (1, 3, 1, 2), w[h*2 + c].
  const std::vector<int64_t> shape = {2, 3, 4, 2};
  const std::vector<double> w = {3.0, -1.0, 0.0, 2.0, -4.0, 0.5};
  auto at = [&](size_t h, size_t c) { return w[h * 2 + c]; };
  auto run = [&](bn_constraint kind, double max_value, std::vector<int32_t> axes) {
    Cfg cfg;
    cfg.axes({1, 3});
    cfg.constraint(BN_PARAM_GAMMA, kind, 0.0, max_value, 1.0, axes);
    return constrain(cfg, shape, w);
  };
  SECTION("axis 0 (and 2) has size 1: the norms are |w| and UnitNorm gives about sign(w)") {
    for (int32_t axis : {0, 2, -4}) {
      CAPTURE(axis);
      const std::vector<double> got = run(BN_CONSTRAINT_UNIT_NORM, 0.0, {axis});
      for (size_t i = 0; i < 6; ++i) {
        CHECK(got[i] == w[i] / (kE + std::fabs(w[i])));
        const double sign = w[i] > 0 ? 1.0 : (w[i] < 0 ? -1.0 : 0.0);
        CHECK(got[i] == Approx(sign).margin(1e-6));
      }
    }
  }
  SECTION("axis 1 (H): one norm per channel") {
    const std::vector<double> got = run(BN_CONSTRAINT_MAX_NORM, 2.0, {1});
    for (size_t c = 0; c < 2; ++c) {
      const double norm = std::sqrt(at(0, c) * at(0, c) + at(1, c) * at(1, c) + at(2, c) * at(2, c));
      for (size_t h = 0; h < 3; ++h) {
        CAPTURE(h, c);
        CHECK(got[h * 2 + c] == Approx(at(h, c) * (std::min(norm, 2.0) / (kE + norm))).epsilon(1e-15));
      }
    }
  }
  SECTION("axis 3 or -1 (C): one norm per row") {
    for (int32_t axis : {3, -1}) {
      const std::vector<double> got = run(BN_CONSTRAINT_UNIT_NORM, 0.0, {axis});
      for (size_t h = 0; h < 3; ++h) {
        const double norm = std::sqrt(at(h, 0) * at(h, 0) + at(h, 1) * at(h, 1));
        for (size_t c = 0; c < 2; ++c) {
          CAPTURE(axis, h, c);
          CHECK(got[h * 2 + c] == Approx(at(h, c) / (kE + norm)).epsilon(1e-15));
        }
      }
    }
  }
  SECTION("axes {1, 3}: one norm over everything") {
    double sum = 0.0;
    for (double v : w) sum += v * v;
    const double norm = std::sqrt(sum);
    const std::vector<double> got = run(BN_CONSTRAINT_UNIT_NORM, 0.0, {1, 3});
    for (size_t i = 0; i < 6; ++i) CHECK(got[i] == Approx(w[i] / (kE + norm)).epsilon(1e-15));
  }
  SECTION("an axis beyond the storage rank fails bn_create") {
    for (int32_t axis : {4, -5}) {
      Cfg cfg;
      cfg.axes({1, 3});
      cfg.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, {axis});
      bn_layer* out = nullptr;
      CHECK(bn_create(cfg.p, shape.data(), 4, &out) == BN_ERR_INVALID_ARGUMENT);
      CHECK(out == nullptr);
      CHECK(std::string(bn_last_error()).find("GAMMA") != std::string::npos);
    }
    // A single-axis layer stores (C,): axis 1 does not exist there.
    Cfg single;
    single.constraint(BN_PARAM_BETA, BN_CONSTRAINT_MAX_NORM, 0, 1.0, 0, {1});
    bn_layer* out = nullptr;
    CHECK(bn_create(single.p, shape.data(), 4, &out) == BN_ERR_INVALID_ARGUMENT);
    CHECK(std::string(bn_last_error()).find("BETA") != std::string::npos);
    // Repeated after resolving negatives.
    Cfg dup;
    dup.axes({1, 3});
    dup.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, {1, -3});
    CHECK(bn_create(dup.p, shape.data(), 4, &out) == BN_ERR_INVALID_ARGUMENT);
    CHECK(out == nullptr);
  }
}

TEST_CASE("float32 constraints are computed in double and rounded once", "[keras_params][constraint]") {
  Cfg cfg(BN_F32);
  cfg.constraint(BN_PARAM_BETA, BN_CONSTRAINT_MAX_NORM, 0.0, 1.0, 0.0, {0});
  Layer layer(cfg, {3, 4}, BN_F32);
  const std::vector<float> w = {0.1f, -0.7f, 1.3f, 2.9f};
  REQUIRE(bn_set_param(layer.p, BN_PARAM_BETA, w.data(), 4) == BN_OK);
  REQUIRE(bn_apply_constraints(layer.p) == BN_OK);
  std::vector<float> got(4);
  REQUIRE(bn_get_param(layer.p, BN_PARAM_BETA, got.data(), 4) == BN_OK);
  double sum = 0.0;
  for (float v : w) sum += static_cast<double>(v) * static_cast<double>(v);
  const double norm = std::sqrt(sum);
  for (size_t i = 0; i < 4; ++i) {
    CHECK(got[i] == static_cast<float>(static_cast<double>(w[i]) * (1.0 / (kE + norm))));
  }
}

TEST_CASE("bn_apply_constraints: when it acts, what it invalidates, what it ignores", "[keras_params][constraint]") {
  const std::vector<int64_t> shape = {4, 2};
  const std::vector<double> x = ramp(8, 1.0, 0.5), dy = ramp(8, 0.3, 0.0);
  std::vector<double> y(8), dx(8), dg(2), db(2);
  SECTION("with a constraint: the saved forward is invalidated and inference uses the new gamma") {
    Cfg cfg;
    cfg.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_MAX_NORM, 0.0, 1.0, 0.0, {0});
    Layer layer(cfg, shape);
    layer.set(BN_PARAM_GAMMA, {3.0, 4.0});
    REQUIRE(bn_forward(layer.p, shape.data(), 2, x.data(), y.data()) == BN_OK);  // inference
    REQUIRE(bn_apply_constraints(layer.p) == BN_OK);
    CHECK(bn_backward(layer.p, shape.data(), 2, x.data(), dy.data(), dx.data(), dg.data(), db.data()) ==
          BN_ERR_STATE);
    REQUIRE(bn_forward(layer.p, shape.data(), 2, x.data(), y.data()) == BN_OK);
    // Moving mean 0, variance 1, epsilon 1e-3: y = x * gamma'/sqrt(1.001), gamma' = w/(e + 5).
    for (size_t i = 0; i < 8; ++i) {
      const double g = (i % 2 ? 4.0 : 3.0) / (kE + 5.0);
      CHECK(y[i] == Approx(x[i] * g / std::sqrt(1.001)).epsilon(1e-14));
    }
  }
  SECTION("without one (or only on an absent parameter) it does nothing") {
    Cfg cfg;
    cfg.constraint(BN_PARAM_BETA, BN_CONSTRAINT_NON_NEG, 0, 0, 0, {});
    REQUIRE(bn_config_set_center(cfg.p, 0) == BN_OK);
    Layer layer(cfg, shape);
    layer.set(BN_PARAM_GAMMA, {-3.0, 4.0});
    REQUIRE(bn_set_training(layer.p, 1) == BN_OK);
    REQUIRE(bn_forward(layer.p, shape.data(), 2, x.data(), y.data()) == BN_OK);
    REQUIRE(bn_apply_constraints(layer.p) == BN_OK);
    CHECK(bn_backward(layer.p, shape.data(), 2, x.data(), dy.data(), dx.data(), dg.data(), db.data()) == BN_OK);
    CHECK(layer.get(BN_PARAM_GAMMA) == std::vector<double>{-3.0, 4.0});
    CHECK(layer.get(BN_PARAM_BETA) == std::vector<double>(2, 0.0));
  }
  SECTION("a frozen layer is left alone (Keras' optimizer only constrains trainable variables)") {
    Cfg cfg;
    cfg.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_NON_NEG, 0, 0, 0, {});
    REQUIRE(bn_config_set_trainable(cfg.p, 0) == BN_OK);
    Layer layer(cfg, shape);
    layer.set(BN_PARAM_GAMMA, {-3.0, 4.0});
    REQUIRE(bn_apply_constraints(layer.p) == BN_OK);
    CHECK(layer.get(BN_PARAM_GAMMA) == std::vector<double>{-3.0, 4.0});
    // ... until it is unfrozen.
    REQUIRE(bn_set_trainable(layer.p, 1) == BN_OK);
    REQUIRE(bn_apply_constraints(layer.p) == BN_OK);
    CHECK(layer.get(BN_PARAM_GAMMA) == std::vector<double>{0.0, 4.0});
  }
  SECTION("a non-finite result is refused and changes nothing") {
    Cfg cfg;
    cfg.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_MIN_MAX_NORM, 0.0, 1.0, 0.5, {0});
    Layer layer(cfg, shape);
    layer.set(BN_PARAM_GAMMA, {1e200, 1.0});  // sum of squares overflows: norm inf, inf/inf
    CHECK(bn_apply_constraints(layer.p) == BN_ERR_NONFINITE);
    CHECK(std::string(bn_last_error()).find("GAMMA") != std::string::npos);
    CHECK(layer.get(BN_PARAM_GAMMA) == std::vector<double>{1e200, 1.0});
  }
  SECTION("gamma and beta each with their own constraint") {
    Cfg cfg;
    cfg.constraint(BN_PARAM_GAMMA, BN_CONSTRAINT_NON_NEG, 0, 0, 0, {});
    cfg.constraint(BN_PARAM_BETA, BN_CONSTRAINT_UNIT_NORM, 0, 0, 0, {0});
    Layer layer(cfg, shape);
    layer.set(BN_PARAM_GAMMA, {-1.0, 2.0});
    layer.set(BN_PARAM_BETA, {-6.0, 8.0});
    layer.set(BN_PARAM_MOVING_MEAN, {-6.0, 8.0});
    REQUIRE(bn_apply_constraints(layer.p) == BN_OK);
    CHECK(layer.get(BN_PARAM_GAMMA) == std::vector<double>{0.0, 2.0});
    CHECK(layer.get(BN_PARAM_BETA) == std::vector<double>{-6.0 / (kE + 10.0), 8.0 / (kE + 10.0)});
    CHECK(layer.get(BN_PARAM_MOVING_MEAN) == std::vector<double>{-6.0, 8.0});  // never constrained
  }
}
