// The orthogonal mode flags (SEMANTICS A.9, the header's bn_set_mode): the Keras presets that
// bn_set_training/bn_set_trainable set under the V1 and V2 rules (B.5), each of the 8 flag
// combinations against the reference model (with renorm and adjustment too), the two
// "half" modes by hand, and bad flags.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "compare.hpp"
#include "data_gen.hpp"
#include "lib_layer.hpp"
#include "reference.hpp"
#include "twin.hpp"

namespace bn_test {
namespace {

constexpr int kAll = BN_MODE_BATCH_STATISTICS | BN_MODE_UPDATE_MOVING | BN_MODE_PARAM_GRADIENTS;

void expect(const Comparison& c) {
  INFO(c.message);
  CHECK(c.ok);
}

int mode_of(const LibLayer& lib) {
  bn_mode m = -1;
  REQUIRE(bn_get_mode(lib.get(), &m) == BN_OK);
  return m;
}

TEST_CASE("mode presets follow training and trainable under V1 and V2", "[layer][mode]") {
  CHECK(BN_MODE_BATCH_STATISTICS == 1);
  CHECK(BN_MODE_UPDATE_MOVING == 2);
  CHECK(BN_MODE_PARAM_GRADIENTS == 4);
  for (const RefRules rules : {RefRules::v1, RefRules::v2}) {
    for (const bool trainable_at_create : {true, false}) {
      INFO((rules == RefRules::v1 ? "V1" : "V2") << " trainable at create " << trainable_at_create);
      RefConfig cfg;
      cfg.rules = rules;
      cfg.trainable = trainable_at_create;
      LibLayer lib;
      REQUIRE(lib.create(cfg, {4, 3}) == BN_OK);
      // A new layer is in inference mode; gamma/beta get gradients when trainable.
      CHECK(mode_of(lib) == (trainable_at_create ? BN_MODE_PARAM_GRADIENTS : 0));
      for (const bool training : {false, true}) {
        for (const bool trainable : {false, true}) {
          INFO("training " << training << " trainable " << trainable);
          REQUIRE(bn_set_mode(lib.get(), 5) == BN_OK);  // an override, replaced by the presets below
          REQUIRE(bn_set_trainable(lib.get(), trainable ? 1 : 0) == BN_OK);
          REQUIRE(bn_set_training(lib.get(), training ? 1 : 0) == BN_OK);
          // B.5: training uses and updates the batch statistics, except a frozen layer under
          // V2 (= inference); trainable gives the parameter gradients.
          int want = 0;
          if (training && (trainable || rules == RefRules::v1)) want |= BN_MODE_BATCH_STATISTICS | BN_MODE_UPDATE_MOVING;
          if (trainable) want |= BN_MODE_PARAM_GRADIENTS;
          CHECK(mode_of(lib) == want);
          // The reference model's preset agrees.
          RefLayer ref(cfg, {4, 3});
          ref.set_trainable(trainable);
          ref.set_training(training);
          CHECK(ref.mode() == want);
          // bn_set_mode overrides until the next bn_set_training or bn_set_trainable.
          for (int flags = 0; flags <= kAll; ++flags) {
            REQUIRE(bn_set_mode(lib.get(), flags) == BN_OK);
            CHECK(mode_of(lib) == flags);
          }
          REQUIRE(bn_set_trainable(lib.get(), trainable ? 1 : 0) == BN_OK);
          CHECK(mode_of(lib) == want);
          REQUIRE(bn_set_mode(lib.get(), want ^ kAll) == BN_OK);
          REQUIRE(bn_set_training(lib.get(), training ? 1 : 0) == BN_OK);
          CHECK(mode_of(lib) == want);
        }
      }
    }
  }
}

TEST_CASE("bad mode flags are refused and change nothing", "[layer][mode]") {
  LibLayer lib;
  REQUIRE(lib.create(RefConfig{}, {4, 3}) == BN_OK);
  REQUIRE(bn_set_mode(lib.get(), BN_MODE_UPDATE_MOVING) == BN_OK);
  for (const int32_t bad : {8, -1, 9, 15, 16, 0x100, std::numeric_limits<int32_t>::min(),
                            std::numeric_limits<int32_t>::max()}) {
    INFO("flags " << bad);
    const bn_status st = bn_set_mode(lib.get(), bad);
    INFO(status_text(st));
    CHECK(st == BN_ERR_INVALID_ARGUMENT);
    CHECK(std::string(bn_last_error()).find("bn_set_mode") != std::string::npos);
    CHECK(mode_of(lib) == BN_MODE_UPDATE_MOVING);
  }
  CHECK(bn_set_mode(nullptr, 1) == BN_ERR_INVALID_ARGUMENT);
  bn_mode m = 0;
  CHECK(bn_get_mode(nullptr, &m) == BN_ERR_INVALID_ARGUMENT);
  CHECK(bn_get_mode(lib.get(), nullptr) == BN_ERR_INVALID_ARGUMENT);
}

// Every combination, several steps, against the reference: y, every statistic, dx, dgamma,
// dbeta. Renorm and adjustment apply only with BATCH_STATISTICS; UPDATE_MOVING moves the
// moving and renorm statistics whichever statistics normalized.
TEST_CASE("each mode combination against the reference model", "[layer][mode]") {
  struct Variant {
    const char* name;
    std::vector<int64_t> shape;
    std::vector<int> axes;
    bool renorm, adjustment;
  };
  const std::vector<Variant> variants{
      {"plain 2D", {6, 3}, {-1}, false, false},
      {"plain NCHW", {3, 4, 2, 2}, {1}, false, false},
      {"renorm NHWC", {2, 2, 3, 3}, {-1}, true, false},
      {"adjustment multi-axis", {3, 2, 3, 2}, {1, 3}, false, true},
      {"renorm + adjustment NCL", {4, 3, 3}, {1}, true, true},
  };
  const int flags = GENERATE(range(0, 8));
  DataGen gen(0x30de + static_cast<uint64_t>(flags));
  for (const Variant& v : variants) {
    for (const RefDtype dtype : {RefDtype::f32, RefDtype::f64}) {
      for (const RefRules rules : {RefRules::v1, RefRules::v2}) {
        RefConfig cfg;
        cfg.axes = v.axes;
        cfg.dtype = dtype;
        cfg.rules = rules;
        cfg.momentum = 0.6;
        cfg.renorm.enabled = v.renorm;
        cfg.renorm.rmax = 1.3;
        cfg.renorm.rmin = 0.7;
        cfg.renorm.dmax = 0.4;
        cfg.renorm.momentum = 0.5;
        cfg.adjustment = v.adjustment;
        INFO("flags " << flags << ", " << v.name << ": " << describe(cfg));
        Twin t(cfg, v.shape);
        REQUIRE(t.ok());
        const size_t c = t.features();
        std::vector<bool> kept(v.shape.size(), false);
        for (int a : validate_axes(cfg.axes, static_cast<int>(v.shape.size()))) kept[static_cast<size_t>(a)] = true;
        if (v.adjustment) {
          t.set_adjustment(gen.uniform_vector(c, 0.5, 1.5, RefDtype::f64),
                           gen.uniform_vector(c, -0.3, 0.3, RefDtype::f64));
        }
        t.set_param(BN_PARAM_MOVING_MEAN, gen.uniform_vector(c, -1.0, 1.0, RefDtype::f64));
        t.set_param(BN_PARAM_MOVING_VARIANCE, gen.uniform_vector(c, 0.3, 3.0, RefDtype::f64));
        t.set_training(gen.coin());  // any preset: the flags override it
        t.set_mode(flags);
        bool ok = true;
        for (int step = 0; step < 3 && ok; ++step) {
          INFO("step " << step);
          t.set_param(BN_PARAM_GAMMA, gen.uniform_vector(c, -2.0, 2.0, RefDtype::f64));
          t.set_param(BN_PARAM_BETA, gen.uniform_vector(c, -1.0, 1.0, RefDtype::f64));
          std::vector<int64_t> shape = v.shape;
          shape[0] = gen.integer(2, 5);
          const std::vector<double> x = gen.per_feature(shape, kept, 2.0, 0.4, 2.0, dtype);
          ok = t.step(shape, x, gen.normal(x.size(), 0.0, 1.0, dtype));
        }
      }
    }
  }
}

// UPDATE_MOVING alone: normalize with the moving statistics as they were, then update them;
// the backward is that of the forward, i.e. with the moving statistics it used. By hand on
// one feature: a momentum of 0 makes the update visible (moving = batch).
TEST_CASE("UPDATE_MOVING alone: normalized with the old moving statistics, then updated", "[layer][mode]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  RefConfig cfg;
  cfg.dtype = dtype;
  cfg.momentum = 0.0;
  cfg.epsilon = 0.0;
  LibLayer lib;
  REQUIRE(lib.create(cfg, {4, 1}) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_GAMMA, {2.0}) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_BETA, {0.5}) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_MOVING_MEAN, {1.0}) == BN_OK);
  REQUIRE(lib.set_param(BN_PARAM_MOVING_VARIANCE, {4.0}) == BN_OK);
  REQUIRE(bn_set_mode(lib.get(), BN_MODE_UPDATE_MOVING | BN_MODE_PARAM_GRADIENTS) == BN_OK);
  const std::vector<double> x{1.0, 3.0, 5.0, 7.0};  // mean 4, biased variance 5
  const std::vector<double> dy{1.0, -2.0, 0.5, 4.0};
  std::vector<double> y, dx, dgamma, dbeta;
  REQUIRE(lib.forward({4, 1}, x, y) == BN_OK);
  // y = 2*(x - 1)/sqrt(4) + 0.5 = x - 0.5
  CHECK(y == std::vector<double>{0.5, 2.5, 4.5, 6.5});
  CHECK(lib.param(BN_PARAM_MOVING_MEAN) == std::vector<double>{4.0});
  CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == std::vector<double>{5.0});
  const bn_status st = lib.backward({4, 1}, x, dy, dx, dgamma, dbeta);
  INFO(status_text(st));
  REQUIRE(st == BN_OK);
  // d/dx of 2*(x - 1)/2 + 0.5: dx = dy; dgamma = sum dy*(x - 1)/2 = (0 - 4 + 2 + 24)/2; dbeta = sum dy.
  CHECK(dx == dy);
  CHECK(dgamma == std::vector<double>{11.0});
  CHECK(dbeta == std::vector<double>{3.5});
}

// BATCH_STATISTICS alone: batch normalization without any update (not of the renorm
// statistics either); the batch statistics of that forward are readable.
TEST_CASE("BATCH_STATISTICS alone: batch-normalized, nothing updated", "[layer][mode]") {
  const RefDtype dtype = GENERATE(RefDtype::f32, RefDtype::f64);
  RefConfig cfg;
  cfg.dtype = dtype;
  cfg.epsilon = 0.0;
  cfg.renorm.enabled = true;  // unclipped; initial renorm statistics 0 and 1
  LibLayer lib;
  REQUIRE(lib.create(cfg, {4, 1}) == BN_OK);
  REQUIRE(bn_set_mode(lib.get(), BN_MODE_BATCH_STATISTICS) == BN_OK);
  const std::vector<double> x{1.0, 3.0, 5.0, 7.0};  // mean 4, biased variance 5
  std::vector<double> y, dx, dgamma, dbeta;
  REQUIRE(lib.forward({4, 1}, x, y) == BN_OK);
  // r = sqrt(5)/1, d = (4 - 0)/1: y = r*(x - 4)/sqrt(5) + d = x.
  expect(compare_rel("y", y, x, dtype == RefDtype::f32 ? 1e-7 : 1e-15));
  CHECK(lib.param(BN_PARAM_MOVING_MEAN) == std::vector<double>{0.0});
  CHECK(lib.param(BN_PARAM_MOVING_VARIANCE) == std::vector<double>{1.0});
  CHECK(lib.param(BN_PARAM_RENORM_MEAN) == std::vector<double>{0.0});
  CHECK(lib.param(BN_PARAM_RENORM_STDDEV) == std::vector<double>{1.0});
  CHECK(lib.param(BN_PARAM_MOVING_STDDEV) == std::vector<double>{1.0});
  // PARAM_GRADIENTS is off: zero dgamma/dbeta, dx as in training.
  REQUIRE(lib.backward({4, 1}, x, {1.0, -2.0, 0.5, 4.0}, dx, dgamma, dbeta) == BN_OK);
  CHECK(dgamma == std::vector<double>{0.0});
  CHECK(dbeta == std::vector<double>{0.0});
  std::vector<double> dx_on, dg_on, db_on;
  REQUIRE(bn_set_mode(lib.get(), BN_MODE_BATCH_STATISTICS | BN_MODE_PARAM_GRADIENTS) == BN_OK);
  REQUIRE(lib.forward({4, 1}, x, y) == BN_OK);
  REQUIRE(lib.backward({4, 1}, x, {1.0, -2.0, 0.5, 4.0}, dx_on, dg_on, db_on) == BN_OK);
  CHECK(dx == dx_on);
  CHECK(db_on == std::vector<double>{3.5});
}

TEST_CASE("the batch statistics of a BATCH_STATISTICS-only forward are readable", "[layer][mode]") {
  RefConfig cfg;
  cfg.dtype = RefDtype::f64;
  LibLayer lib;
  REQUIRE(lib.create(cfg, {4, 1}) == BN_OK);
  REQUIRE(bn_set_mode(lib.get(), BN_MODE_BATCH_STATISTICS) == BN_OK);
  std::vector<double> y;
  REQUIRE(lib.forward({4, 1}, {1.0, 3.0, 5.0, 7.0}, y) == BN_OK);
  std::vector<double> mean, var;
  const bn_status st = lib.get_param(BN_PARAM_BATCH_MEAN, mean);
  INFO("BATCH_MEAN after a forward that normalized with the batch statistics: " << status_text(st));
  CHECK(st == BN_OK);
  CHECK(mean == std::vector<double>{4.0});
  CHECK(lib.get_param(BN_PARAM_BATCH_VARIANCE, var) == BN_OK);
  CHECK(var == std::vector<double>{5.0});
}

}  // namespace
}  // namespace bn_test
