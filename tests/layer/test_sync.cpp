// Cross-replica statistics (bn_config_set_allreduce). R replicas run as R threads with an
// in-process allreduce (sync_group.hpp), each with its shard of a global batch along axis 0.
// Every replica must agree with one layer without a callback fed the concatenated batch: its
// slice of y and dx, the sum over replicas of dgamma and dbeta, and the moving, renorm and
// batch statistics, which every replica must hold bitwise alike. Covered: uneven and empty
// shards, layouts (2D, NCHW, NHWC, several axes), renorm, fused ON and AUTO, ghost batches
// (Keras' SyncBatchNormalization rule), adjustment, mode flags, regularizers, the single-value
// policy on the global count, large-mean data (the second round), one replica (bitwise the
// layer without a callback), the number and counts of collectives, and failing collectives.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "compare.hpp"
#include "data_gen.hpp"
#include "lib_layer.hpp"
#include "reference.hpp"
#include "sync_group.hpp"
#include "twin.hpp"

namespace bn_test {
namespace {

void expect(const Comparison& c) {
  INFO(c.message);
  CHECK(c.ok);
}

std::vector<bn_param> state_params(bool renorm) {
  std::vector<bn_param> p = {BN_PARAM_GAMMA, BN_PARAM_BETA, BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE};
  if (renorm) {
    p.push_back(BN_PARAM_RENORM_MEAN);
    p.push_back(BN_PARAM_RENORM_STDDEV);
    p.push_back(BN_PARAM_MOVING_STDDEV);
  }
  return p;
}

// |got - want| <= tol * max(1, max |want|) element by element.
Comparison close(const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
                 double tol) {
  double scale = 1.0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  return compare_rel(what, got, want, 0.0, tol * scale);
}

// Values compared with == (so -0 equals 0), NaN equal to NaN.
Comparison same(const std::string& what, const std::vector<double>& got, const std::vector<double>& want) {
  Comparison c;
  if (got.size() != want.size()) {
    c.ok = false;
    c.message = what + ": sizes differ";
    return c;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]))) continue;
    c.ok = false;
    c.message = what + "[" + std::to_string(i) + "]: " + std::to_string(got[i]) + " != " + std::to_string(want[i]);
    return c;
  }
  return c;
}

struct Scenario {
  std::string name;
  RefConfig cfg;
  std::vector<int64_t> shape;   // axis 0 is replaced by the shard sizes
  std::vector<int64_t> shards;  // local batch sizes, one per replica
  int64_t reference_vbs = 0;    // the single layer's virtual batch size (ghost scenarios)
  RefFused reference_fused = RefFused::automatic;
  int mode = -1;                // mode flags after bn_set_training(1); -1 = the Keras preset
  int steps = 3;
  double offset = 3.0;          // per-feature offsets U(-offset, offset), spreads U(0.5, 2)
  double tol = 0;               // 0: 1e-12 for f64, 2e-6 for f32
};

// One global batch split along axis 0.
struct Batch {
  std::vector<int64_t> shape;
  std::vector<double> x, dy;
  std::vector<std::vector<int64_t>> shard_shape;
  std::vector<size_t> begin, size;  // element ranges of the shards
};

Batch make_batch(const Scenario& sc, const std::vector<bool>& kept, DataGen& gen, int step) {
  Batch b;
  b.shape = sc.shape;
  int64_t n = 0;
  for (int64_t s : sc.shards) n += s;
  b.shape[0] = n;
  b.x = gen.per_feature(b.shape, kept, sc.offset, 0.5, 2.0, sc.cfg.dtype);
  b.dy = gen.per_feature(b.shape, kept, 1.0, 0.5, 1.5, sc.cfg.dtype);
  (void)step;
  int64_t row = 1;
  for (size_t d = 1; d < b.shape.size(); ++d) row *= b.shape[d];
  size_t at = 0;
  for (int64_t s : sc.shards) {
    std::vector<int64_t> shape = sc.shape;
    shape[0] = s;
    b.shard_shape.push_back(shape);
    b.begin.push_back(at);
    b.size.push_back(static_cast<size_t>(s * row));
    at += static_cast<size_t>(s * row);
  }
  return b;
}

std::vector<double> slice(const std::vector<double>& v, size_t begin, size_t size) {
  return std::vector<double>(v.begin() + static_cast<std::ptrdiff_t>(begin),
                             v.begin() + static_cast<std::ptrdiff_t>(begin + size));
}

std::vector<bool> kept_axes(const RefConfig& cfg, size_t rank) {
  std::vector<bool> kept(rank, false);
  for (int a : cfg.axes) kept[static_cast<size_t>(a < 0 ? a + static_cast<int>(rank) : a)] = true;
  return kept;
}

int mode_of(const Scenario& sc) {
  if (sc.mode >= 0) return sc.mode;
  const bool frozen_v2 = sc.cfg.rules == RefRules::v2 && !sc.cfg.trainable;
  return (frozen_v2 ? 0 : kModeBatchStatistics | kModeUpdateMoving) | (sc.cfg.trainable ? kModeParamGradients : 0);
}

void run_scenario(const Scenario& sc) {
  INFO(sc.name << ": " << describe(sc.cfg) << " shape " << describe_shape(sc.shape));
  const int replicas = static_cast<int>(sc.shards.size());
  const bool f64 = sc.cfg.dtype == RefDtype::f64;
  const double tol = sc.tol > 0 ? sc.tol : f64 ? 1e-12 : 2e-6;
  const std::vector<bool> kept = kept_axes(sc.cfg, sc.shape.size());
  Group group(replicas);
  std::vector<LibLayer> layers(static_cast<size_t>(replicas));
  std::vector<int64_t> build = sc.shape;
  build[0] = std::max<int64_t>(1, sc.shards[0]);
  for (int r = 0; r < replicas; ++r) {
    Group::Member* member = group.member(r);
    REQUIRE(layers[static_cast<size_t>(r)].create(sc.cfg, build, [&](bn_config* c) {
      return bn_config_set_allreduce(c, &Group::callback, member);
    }) == BN_OK);
  }
  RefConfig ref_cfg = sc.cfg;
  if (sc.reference_vbs) ref_cfg.virtual_batch_size = sc.reference_vbs;
  ref_cfg.fused = sc.reference_fused;
  LibLayer single;
  REQUIRE(single.create(ref_cfg, build) == BN_OK);
  const size_t c = static_cast<size_t>(single.features());
  CHECK(layers[0].fused() == single.fused());

  // The same gamma and beta everywhere (not 1 and 0, so that they matter).
  DataGen gen(4242);
  const std::vector<double> gamma = gen.uniform_vector(c, 0.5, 1.5, sc.cfg.dtype);
  const std::vector<double> beta = gen.uniform_vector(c, -0.5, 0.5, sc.cfg.dtype);
  const std::vector<double> adj_scale = gen.uniform_vector(c, 0.5, 1.5, RefDtype::f64);
  const std::vector<double> adj_bias = gen.uniform_vector(c, -0.2, 0.2, RefDtype::f64);
  std::vector<LibLayer*> all;
  for (LibLayer& l : layers) all.push_back(&l);
  all.push_back(&single);
  for (LibLayer* l : all) {
    if (sc.cfg.scale) REQUIRE(l->set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
    if (sc.cfg.center) REQUIRE(l->set_param(BN_PARAM_BETA, beta) == BN_OK);
    l->adjustment().scale = adj_scale;
    l->adjustment().bias = adj_bias;
    REQUIRE(bn_set_training(l->get(), 1) == BN_OK);
    if (sc.mode >= 0) REQUIRE(bn_set_mode(l->get(), sc.mode) == BN_OK);
  }
  const int mode = mode_of(sc);
  const bool batch_stats = (mode & kModeBatchStatistics) != 0;
  const bool computes = (mode & (kModeBatchStatistics | kModeUpdateMoving)) != 0;

  for (int step = 0; step < sc.steps; ++step) {
    INFO("step " << step);
    const Batch b = make_batch(sc, kept, gen, step);
    std::vector<std::vector<double>> y(static_cast<size_t>(replicas)), dx(y.size()), dg(y.size()), db(y.size());
    std::vector<bn_status> fst(y.size()), bst(y.size());
    group.take_counts();
    on_replicas(replicas, [&](int r) {
      const auto i = static_cast<size_t>(r);
      fst[i] = layers[i].forward(b.shard_shape[i], slice(b.x, b.begin[i], b.size[i]), y[i]);
    });
    const std::vector<size_t> forward_collectives = group.take_counts();
    on_replicas(replicas, [&](int r) {
      const auto i = static_cast<size_t>(r);
      bst[i] = layers[i].backward(b.shard_shape[i], slice(b.x, b.begin[i], b.size[i]),
                                  slice(b.dy, b.begin[i], b.size[i]), dx[i], dg[i], db[i]);
    });
    const std::vector<size_t> backward_collectives = group.take_counts();
    CHECK_FALSE(group.mismatched());
    for (int r = 0; r < replicas; ++r) {
      INFO("replica " << r);
      REQUIRE(fst[static_cast<size_t>(r)] == BN_OK);
      REQUIRE(bst[static_cast<size_t>(r)] == BN_OK);
      // One collective per training forward (statistics far from the shift take a second
      // round: not with these data), one per backward of a batch-statistics forward.
      CHECK(forward_collectives[static_cast<size_t>(r)] == (computes ? 1u : 0u));
      CHECK(backward_collectives[static_cast<size_t>(r)] == (batch_stats ? 1u : 0u));
    }
    std::vector<double> y_ref, dx_ref, dg_ref, db_ref;
    REQUIRE(single.forward(b.shape, b.x, y_ref) == BN_OK);
    REQUIRE(single.backward(b.shape, b.x, b.dy, dx_ref, dg_ref, db_ref) == BN_OK);
    std::vector<double> dg_sum(c, 0.0), db_sum(c, 0.0);
    for (int r = 0; r < replicas; ++r) {
      INFO("replica " << r);
      const auto i = static_cast<size_t>(r);
      expect(close("y", y[i], slice(y_ref, b.begin[i], b.size[i]), tol));
      expect(close("dx", dx[i], slice(dx_ref, b.begin[i], b.size[i]), tol));
      for (size_t f = 0; f < c; ++f) {
        dg_sum[f] += dg[i][f];
        db_sum[f] += db[i][f];
      }
    }
    // Sums over the replicas' shares: their rounding is relative to the sum of |terms|.
    double m = 1;
    for (size_t d = 0; d < b.shape.size(); ++d) m *= kept[d] ? 1.0 : static_cast<double>(b.shape[d]);
    expect(compare_rel("sum of dgamma", dg_sum, dg_ref, 0.0, tol * 4 * m));
    expect(compare_rel("sum of dbeta", db_sum, db_ref, 0.0, tol * 4 * m));
    std::vector<bn_param> params = state_params(sc.cfg.renorm.enabled);
    if (computes) {
      params.push_back(BN_PARAM_BATCH_MEAN);
      params.push_back(BN_PARAM_BATCH_VARIANCE);
    }
    for (bn_param p : params) {
      INFO(param_name(p));
      const std::vector<double> want = single.param(p);
      const std::vector<double> first = layers[0].param(p);
      expect(close(param_name(p), first, want, tol));
      for (int r = 1; r < replicas; ++r) {
        INFO("replica " << r << " against replica 0, bitwise");
        expect(compare_exact(param_name(p), layers[static_cast<size_t>(r)].param(p), first));
      }
    }
  }
}

Scenario base(const std::string& name, RefDtype dtype, std::vector<int> axes, std::vector<int64_t> shape,
              std::vector<int64_t> shards) {
  Scenario sc;
  sc.name = name;
  sc.cfg.dtype = dtype;
  sc.cfg.axes = std::move(axes);
  sc.cfg.momentum = 0.9;
  sc.shape = std::move(shape);
  sc.shards = std::move(shards);
  return sc;
}

}  // namespace

TEST_CASE("synchronized statistics equal one layer on the concatenated batch: layouts and shards",
          "[layer][sync]") {
  const RefDtype dtype = GENERATE(RefDtype::f64, RefDtype::f32);
  std::vector<Scenario> cases = {
      base("2D, uneven shards", dtype, {-1}, {0, 5}, {4, 7, 2}),
      base("2D, an empty shard", dtype, {-1}, {0, 3}, {3, 0, 5, 2}),
      base("NCHW", dtype, {1}, {0, 4, 3, 5}, {2, 3}),
      base("NHWC with an empty shard", dtype, {-1}, {0, 3, 4, 6}, {1, 2, 0}),
      base("several axes {1, 3}", dtype, {1, 3}, {0, 3, 2, 4}, {2, 3}),
      base("NCHW, many blocks", dtype, {1}, {0, 8, 40, 40}, {5, 3}),
      base("NHWC, many blocks", dtype, {-1}, {0, 30, 30, 16}, {4, 6}),
  };
  // AUTO resolves to the non-fused path with a callback (Keras: synchronized forces it).
  for (Scenario& sc : cases) {
    if (sc.shape.size() == 4) sc.reference_fused = RefFused::off;
  }
  for (const Scenario& sc : cases) run_scenario(sc);
}

TEST_CASE("synchronized statistics: renorm, fused ON, adjustment, mode flags, presets", "[layer][sync]") {
  const RefDtype dtype = GENERATE(RefDtype::f64, RefDtype::f32);
  std::vector<Scenario> cases;
  {
    Scenario sc = base("renorm, clipped", dtype, {-1}, {0, 2, 3, 4}, {3, 1, 4});
    sc.cfg.renorm.enabled = true;
    sc.cfg.renorm.rmax = 1.5;
    sc.cfg.renorm.rmin = 0.7;
    sc.cfg.renorm.dmax = 0.5;
    sc.cfg.renorm.momentum = 0.8;
    sc.reference_fused = RefFused::off;
    sc.steps = 4;
    cases.push_back(sc);
  }
  if (dtype == RefDtype::f32) {
    // Fused ON stays honoured: Bessel's factor with the global count (PyTorch SyncBatchNorm).
    Scenario sc = base("fused ON", dtype, {-1}, {0, 2, 3, 4}, {2, 3});
    sc.cfg.fused = RefFused::on;
    sc.reference_fused = RefFused::on;
    cases.push_back(sc);
    Scenario v2 = sc;
    v2.name = "fused ON, V2 rules";
    v2.cfg.rules = RefRules::v2;
    cases.push_back(v2);
  }
  {
    Scenario sc = base("adjustment", dtype, {1}, {0, 3, 5}, {2, 4});
    sc.cfg.adjustment = true;
    cases.push_back(sc);
  }
  {
    Scenario sc = base("update only (normalize with the moving statistics)", dtype, {-1}, {0, 4}, {3, 5});
    sc.mode = kModeUpdateMoving | kModeParamGradients;
    cases.push_back(sc);
    sc.name = "batch statistics without the update";
    sc.mode = kModeBatchStatistics | kModeParamGradients;
    cases.push_back(sc);
    sc.name = "no parameter gradients";
    sc.mode = kModeBatchStatistics | kModeUpdateMoving;
    cases.push_back(sc);
  }
  {
    Scenario sc = base("V2 frozen: inference, no collective", dtype, {-1}, {0, 4}, {3, 5});
    sc.cfg.rules = RefRules::v2;
    sc.cfg.trainable = false;
    cases.push_back(sc);
    sc.name = "V1 frozen: batch statistics";
    sc.cfg.rules = RefRules::v1;
    cases.push_back(sc);
  }
  {
    Scenario sc = base("cumulative average, unbiased", dtype, {-1}, {0, 3}, {2, 2, 3});
    sc.cfg.cumulative_average = true;
    sc.cfg.moving_variance = RefMovingVariance::unbiased;
    cases.push_back(sc);
  }
  for (const Scenario& sc : cases) run_scenario(sc);
}

TEST_CASE("synchronized ghost batches: ghost j is the union of every replica's ghost j", "[layer][sync]") {
  const RefDtype dtype = GENERATE(RefDtype::f64, RefDtype::f32);
  // Each replica views its batch of N = vbs*G as (vbs, G, ...); one layer fed the
  // concatenated batch of R*N with vbs' = R*vbs has G ghosts, ghost j = the union of the
  // replicas' ghosts j (sample r*N + a*G + j sits at [r*vbs + a][j]).
  std::vector<Scenario> cases;
  {
    Scenario sc = base("2D ghosts", dtype, {-1}, {0, 4}, {6, 6});
    sc.cfg.virtual_batch_size = 3;
    sc.reference_vbs = 6;
    cases.push_back(sc);
  }
  {
    Scenario sc = base("NHWC ghosts with renorm", dtype, {-1}, {0, 2, 3, 3}, {4, 4, 4});
    sc.cfg.virtual_batch_size = 2;
    sc.reference_vbs = 6;
    sc.cfg.renorm.enabled = true;
    sc.cfg.renorm.rmax = 2.0;
    sc.cfg.renorm.dmax = 1.0;
    cases.push_back(sc);
  }
  {
    Scenario sc = base("NCHW ghosts, update only", dtype, {1}, {0, 3, 2, 2}, {4, 4});
    sc.cfg.virtual_batch_size = 2;
    sc.reference_vbs = 4;
    sc.mode = kModeUpdateMoving | kModeParamGradients;
    cases.push_back(sc);
  }
  for (const Scenario& sc : cases) run_scenario(sc);
}

TEST_CASE("synchronized regularizers: the replicas' dgamma/dbeta add up to the gradient with the penalty once",
          "[layer][sync]") {
  const RefDtype dtype = GENERATE(RefDtype::f64, RefDtype::f32);
  const int replicas = 3;
  RefConfig cfg;
  cfg.dtype = dtype;
  const std::vector<int64_t> local{4, 3}, global{12, 3};
  auto regularize = [](bn_config* c) {
    const bn_status a = bn_config_set_regularizer(c, BN_PARAM_GAMMA, 0.1, 0.2);
    return a != BN_OK ? a : bn_config_set_regularizer(c, BN_PARAM_BETA, 0.3, 0.05);
  };
  Group group(replicas);
  std::vector<LibLayer> layers(replicas);
  for (int r = 0; r < replicas; ++r) {
    REQUIRE(layers[static_cast<size_t>(r)].create(cfg, local, [&](bn_config* c) {
      const bn_status s = regularize(c);
      return s != BN_OK ? s : bn_config_set_allreduce(c, &Group::callback, group.member(r));
    }) == BN_OK);
  }
  LibLayer single;
  REQUIRE(single.create(cfg, local, regularize) == BN_OK);
  DataGen gen(77);
  const std::vector<double> gamma = gen.uniform_vector(3, 0.5, 1.5, dtype);
  const std::vector<double> beta = gen.uniform_vector(3, -0.5, 0.5, dtype);
  const std::vector<double> x = gen.normal(36, 1.0, 2.0, dtype), dy = gen.normal(36, 0.0, 1.0, dtype);
  for (LibLayer* l : {&layers[0], &layers[1], &layers[2], &single}) {
    REQUIRE(l->set_param(BN_PARAM_GAMMA, gamma) == BN_OK);
    REQUIRE(l->set_param(BN_PARAM_BETA, beta) == BN_OK);
    REQUIRE(bn_set_training(l->get(), 1) == BN_OK);
  }
  std::vector<std::vector<double>> y(replicas), dx(replicas), dg(replicas), db(replicas);
  on_replicas(replicas, [&](int r) {
    const auto i = static_cast<size_t>(r);
    REQUIRE(layers[i].forward(local, slice(x, 12 * i, 12), y[i]) == BN_OK);
    REQUIRE(layers[i].backward(local, slice(x, 12 * i, 12), slice(dy, 12 * i, 12), dx[i], dg[i], db[i]) == BN_OK);
  });
  std::vector<double> y_ref, dx_ref, dg_ref, db_ref;
  REQUIRE(single.forward(global, x, y_ref) == BN_OK);
  REQUIRE(single.backward(global, x, dy, dx_ref, dg_ref, db_ref) == BN_OK);
  std::vector<double> dg_sum(3, 0.0), db_sum(3, 0.0);
  for (size_t i = 0; i < 3; ++i) {
    for (size_t f = 0; f < 3; ++f) {
      dg_sum[f] += dg[i][f];
      db_sum[f] += db[i][f];
    }
  }
  const double tol = dtype == RefDtype::f64 ? 1e-12 : 1e-5;
  expect(compare_rel("sum of dgamma", dg_sum, dg_ref, tol, tol));
  expect(compare_rel("sum of dbeta", db_sum, db_ref, tol, tol));
}

TEST_CASE("synchronized single-value policy counts the global batch", "[layer][sync]") {
  RefConfig cfg;
  cfg.dtype = RefDtype::f64;
  cfg.reject_single_value = true;
  const std::vector<int64_t> one{1, 2}, none{0, 2};
  for (int empty_second : {0, 1}) {
    CAPTURE(empty_second);
    Group group(2);
    LibLayer layers[2];
    for (int r = 0; r < 2; ++r) {
      REQUIRE(layers[r].create(cfg, one, [&](bn_config* c) {
        return bn_config_set_allreduce(c, &Group::callback, group.member(r));
      }) == BN_OK);
      REQUIRE(bn_set_training(layers[r].get(), 1) == BN_OK);
    }
    const std::vector<double> mm0 = layers[0].param(BN_PARAM_MOVING_MEAN);
    bn_status st[2];
    std::string message[2];
    std::vector<double> y[2];
    on_replicas(2, [&](int r) {
      const bool empty = r == 1 && empty_second;
      st[r] = layers[r].forward(empty ? none : one, empty ? std::vector<double>{} : std::vector<double>{1.0 + r, 2.0},
                                y[r]);
      message[r] = bn_last_error();  // thread-local
    });
    if (empty_second) {
      // One value per feature in the global batch: REJECT refuses on every replica.
      for (int r = 0; r < 2; ++r) {
        CHECK(st[r] == BN_ERR_SHAPE);
        CHECK(layers[r].param(BN_PARAM_MOVING_MEAN) == mm0);
        CHECK(message[r].find("global batch") != std::string::npos);
      }
    } else {
      // One value per replica but two in the global batch: accepted.
      for (int r = 0; r < 2; ++r) CHECK(st[r] == BN_OK);
      CHECK(layers[0].param(BN_PARAM_BATCH_VARIANCE)[0] == 0.25);
    }
  }
}

TEST_CASE("synchronized statistics on large-mean data: the second round keeps the variance exact",
          "[layer][sync][large_mean]") {
  // mean 1e6, stddev 1, f64. Round 1 around the shift 0 would give M2 = S2 - S1^2/N with S2 ~
  // N*1e12: a relative error ~1e12 * 2^-53 ~ 1e-4. The second round centres at the global mean.
  const std::vector<int64_t> shards = {5, 8, 3};
  const int replicas = 3;
  const int64_t c = 4;
  RefConfig cfg;
  cfg.dtype = RefDtype::f64;
  cfg.momentum = 0.5;
  Group group(replicas);
  std::vector<LibLayer> layers(replicas);
  for (int r = 0; r < replicas; ++r) {
    REQUIRE(layers[static_cast<size_t>(r)].create(cfg, {1, c}, [&](bn_config* cc) {
      return bn_config_set_allreduce(cc, &Group::callback, group.member(r));
    }) == BN_OK);
    REQUIRE(bn_set_training(layers[static_cast<size_t>(r)].get(), 1) == BN_OK);
  }
  LibLayer single;
  REQUIRE(single.create(cfg, {1, c}) == BN_OK);
  REQUIRE(bn_set_training(single.get(), 1) == BN_OK);
  DataGen gen(1e6);
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    const std::vector<double> x = gen.normal(16 * c, 1e6 + step * 20.0, 1.0, RefDtype::f64);
    // The variance by the definition, in long double.
    std::vector<double> var(c);
    for (int64_t f = 0; f < c; ++f) {
      long double s = 0, q = 0;
      for (int64_t n = 0; n < 16; ++n) s += x[n * c + f];
      const long double mean = s / 16;
      for (int64_t n = 0; n < 16; ++n) q += (x[n * c + f] - mean) * (x[n * c + f] - mean);
      var[f] = static_cast<double>(q / 16);
    }
    std::vector<std::vector<double>> y(replicas);
    group.take_counts();
    on_replicas(replicas, [&](int r) {
      size_t begin = 0;
      for (int q = 0; q < r; ++q) begin += static_cast<size_t>(shards[q] * c);
      REQUIRE(layers[static_cast<size_t>(r)].forward({shards[static_cast<size_t>(r)], c},
                                                     slice(x, begin, static_cast<size_t>(shards[r] * c)),
                                                     y[static_cast<size_t>(r)]) == BN_OK);
    });
    const std::vector<size_t> counts = group.take_counts();
    // Step 0: the shift is 0, a million standard deviations off: a second round. Steps 1 and
    // 2: the data jumped by 20 standard deviations from the previous step's mean (the shift),
    // well within the limit of 64: one round.
    for (size_t n : counts) CHECK(n == (step == 0 ? 2u : 1u));
    std::vector<double> y_ref;
    REQUIRE(single.forward({16, c}, x, y_ref) == BN_OK);
    for (int r = 0; r < replicas; ++r) {
      expect(compare_rel("batch variance", layers[static_cast<size_t>(r)].param(BN_PARAM_BATCH_VARIANCE), var,
                         1e-9));
      expect(compare_rel("moving variance", layers[static_cast<size_t>(r)].param(BN_PARAM_MOVING_VARIANCE),
                         single.param(BN_PARAM_MOVING_VARIANCE), 1e-9));
      expect(compare_rel("moving mean", layers[static_cast<size_t>(r)].param(BN_PARAM_MOVING_MEAN),
                         single.param(BN_PARAM_MOVING_MEAN), 1e-15));
      expect(compare_exact("moving variance, bitwise across replicas",
                           layers[static_cast<size_t>(r)].param(BN_PARAM_MOVING_VARIANCE),
                           layers[0].param(BN_PARAM_MOVING_VARIANCE)));
    }
    expect(compare_rel("single layer's batch variance", single.param(BN_PARAM_BATCH_VARIANCE), var, 1e-9));
    // y = (x - mean)/std: the mean's rounding (a few ulps of 1e6) bounds any implementation.
    size_t begin = 0;
    for (int r = 0; r < replicas; ++r) {
      const auto i = static_cast<size_t>(r);
      expect(compare_rel("y", y[i], slice(y_ref, begin, y[i].size()), 0.0, 1e-8));
      begin += y[i].size();
    }
  }
}

TEST_CASE("one replica with a callback is the layer without one", "[layer][sync]") {
  const RefDtype dtype = GENERATE(RefDtype::f64, RefDtype::f32);
  struct Case {
    std::vector<int> axes;
    std::vector<int64_t> shape;
    int64_t vbs;
  };
  const std::vector<Case> cases = {
      {{-1}, {6, 5}, 0},         {{1}, {2, 3, 4, 5}, 0},  {{1}, {8, 8, 40, 40}, 0},
      {{-1}, {12, 3, 4, 6}, 3},  {{1, 3}, {4, 3, 2, 5}, 0}, {{-1}, {64, 300}, 0},
  };
  for (const Case& k : cases) {
    RefConfig cfg;
    cfg.dtype = dtype;
    cfg.axes = k.axes;
    cfg.fused = RefFused::off;
    cfg.virtual_batch_size = k.vbs;
    cfg.momentum = 0.8;
    INFO(describe(cfg) << " shape " << describe_shape(k.shape));
    Group group(1);
    LibLayer synced, plain;
    REQUIRE(synced.create(cfg, k.shape, [&](bn_config* c) {
      return bn_config_set_allreduce(c, &Group::callback, group.member(0));
    }) == BN_OK);
    REQUIRE(plain.create(cfg, k.shape) == BN_OK);
    REQUIRE(bn_set_training(synced.get(), 1) == BN_OK);
    REQUIRE(bn_set_training(plain.get(), 1) == BN_OK);
    std::vector<bool> kept = kept_axes(cfg, k.shape.size());
    DataGen gen(9);
    for (int step = 0; step < 3; ++step) {
      const std::vector<double> x = gen.per_feature(k.shape, kept, 100.0, 0.5, 2.0, dtype);
      const std::vector<double> dy = gen.per_feature(k.shape, kept, 1.0, 0.5, 1.5, dtype);
      std::vector<double> y1, y2, dx1, dx2, dg1, dg2, db1, db2;
      REQUIRE(synced.forward(k.shape, x, y1) == BN_OK);
      REQUIRE(plain.forward(k.shape, x, y2) == BN_OK);
      REQUIRE(synced.backward(k.shape, x, dy, dx1, dg1, db1) == BN_OK);
      REQUIRE(plain.backward(k.shape, x, dy, dx2, dg2, db2) == BN_OK);
      expect(same("y", y1, y2));
      expect(same("dx", dx1, dx2));
      expect(same("dgamma", dg1, dg2));
      expect(same("dbeta", db1, db2));
      for (bn_param p : {BN_PARAM_MOVING_MEAN, BN_PARAM_MOVING_VARIANCE, BN_PARAM_BATCH_MEAN, BN_PARAM_BATCH_VARIANCE}) {
        expect(same(param_name(p), synced.param(p), plain.param(p)));
      }
    }
    // One collective per forward and per backward, each with its documented count.
    const std::vector<int64_t>& counts = group.member(0)->counts;
    REQUIRE(counts.size() == 6);
    const int64_t f = synced.features() * (k.vbs ? k.shape[0] / k.vbs : 1);
    for (size_t i = 0; i < counts.size(); ++i) CHECK(counts[i] == (i % 2 == 0 ? 2 + 2 * f : 2 * f));
  }
}

TEST_CASE("synchronized layers never call the callback in inference", "[layer][sync]") {
  Group group(1);
  RefConfig cfg;
  LibLayer layer;
  REQUIRE(layer.create(cfg, {4, 3}, [&](bn_config* c) {
    return bn_config_set_allreduce(c, &Group::callback, group.member(0));
  }) == BN_OK);
  std::vector<double> x(12, 1.5), y, dx, dg, db;
  REQUIRE(layer.forward({4, 3}, x, y) == BN_OK);
  REQUIRE(layer.backward({4, 3}, x, x, dx, dg, db) == BN_OK);
  CHECK(group.member(0)->counts.empty());
  // AUTO resolves to the non-fused path; ON is honoured.
  LibLayer nhwc, on;
  RefConfig fused_on;
  fused_on.fused = RefFused::on;
  REQUIRE(nhwc.create(cfg, {2, 2, 2, 3}, [&](bn_config* c) {
    return bn_config_set_allreduce(c, &Group::callback, group.member(0));
  }) == BN_OK);
  REQUIRE(on.create(fused_on, {2, 2, 2, 3}, [&](bn_config* c) {
    return bn_config_set_allreduce(c, &Group::callback, group.member(0));
  }) == BN_OK);
  CHECK(nhwc.fused() == 0);
  CHECK(on.fused() == 1);
}

TEST_CASE("an empty global batch: every replica takes part, nothing is updated", "[layer][sync]") {
  Group group(2);
  RefConfig cfg;
  cfg.dtype = RefDtype::f64;
  LibLayer layers[2];
  for (int r = 0; r < 2; ++r) {
    REQUIRE(layers[r].create(cfg, {1, 3}, [&](bn_config* c) {
      return bn_config_set_allreduce(c, &Group::callback, group.member(r));
    }) == BN_OK);
    REQUIRE(bn_set_training(layers[r].get(), 1) == BN_OK);
  }
  on_replicas(2, [&](int r) {
    std::vector<double> y, dx, dg, db;
    CHECK(layers[r].forward({0, 3}, {}, y) == BN_OK);
    CHECK(layers[r].backward({0, 3}, {}, {}, dx, dg, db) == BN_OK);
    CHECK(dg == std::vector<double>(3, 0.0));
    CHECK(layers[r].param(BN_PARAM_MOVING_MEAN) == std::vector<double>(3, 0.0));
    CHECK(layers[r].param(BN_PARAM_MOVING_VARIANCE) == std::vector<double>(3, 1.0));
  });
  CHECK(group.member(0)->counts == std::vector<int64_t>{8, 6});
  CHECK(group.member(1)->counts == std::vector<int64_t>{8, 6});
}

// A failing collective: BN_ERR_CALLBACK, a message, and nothing changed on the replica: every
// parameter and statistic bitwise, the output buffers untouched, the previous forward still
// differentiable with the same result.
TEST_CASE("a failing collective changes nothing", "[layer][sync]") {
  const RefDtype dtype = GENERATE(RefDtype::f64, RefDtype::f32);
  const bool ghosts = GENERATE(false, true);
  CAPTURE(ghosts);
  const int replicas = 2;
  const int64_t c = 3;
  const std::vector<int64_t> shape{4, c};
  RefConfig cfg;
  cfg.dtype = dtype;
  cfg.renorm.enabled = true;
  cfg.virtual_batch_size = ghosts ? 2 : 0;
  Group group(replicas);
  std::vector<LibLayer> layers(replicas);
  for (int r = 0; r < replicas; ++r) {
    REQUIRE(layers[static_cast<size_t>(r)].create(cfg, shape, [&](bn_config* cc) {
      return bn_config_set_allreduce(cc, &Group::callback, group.member(r));
    }) == BN_OK);
    REQUIRE(bn_set_training(layers[static_cast<size_t>(r)].get(), 1) == BN_OK);
  }
  DataGen gen(31);
  const bn_dtype bdt = dtype == RefDtype::f64 ? BN_F64 : BN_F32;
  const size_t esize = dtype == RefDtype::f64 ? 8 : 4;
  const size_t n = static_cast<size_t>(4 * c);
  // Raw buffers of the layer's dtype: the output buffers must keep their sentinel bytes.
  auto raw = [&](const std::vector<double>& v) {
    std::vector<unsigned char> b(v.size() * esize);
    for (size_t i = 0; i < v.size(); ++i) {
      if (bdt == BN_F64) {
        std::memcpy(&b[i * 8], &v[i], 8);
      } else {
        const float f = static_cast<float>(v[i]);
        std::memcpy(&b[i * 4], &f, 4);
      }
    }
    return b;
  };
  std::vector<std::vector<unsigned char>> x0(replicas), dy(replicas);
  for (int r = 0; r < replicas; ++r) {
    x0[static_cast<size_t>(r)] = raw(gen.normal(n, 1.0, 2.0, dtype));
    dy[static_cast<size_t>(r)] = raw(gen.normal(n, 0.0, 1.0, dtype));
  }
  // A good step first.
  auto forward = [&](int r, const std::vector<unsigned char>& x, std::vector<unsigned char>& y) {
    return bn_forward(layers[static_cast<size_t>(r)].get(), shape.data(), 2, x.data(), y.data());
  };
  auto backward = [&](int r, std::vector<unsigned char>& dx, std::vector<unsigned char>& dg,
                      std::vector<unsigned char>& db) {
    const auto i = static_cast<size_t>(r);
    return bn_backward(layers[i].get(), shape.data(), 2, x0[i].data(), dy[i].data(), dx.data(), dg.data(), db.data());
  };
  std::vector<std::vector<unsigned char>> y(replicas, std::vector<unsigned char>(n * esize));
  on_replicas(replicas, [&](int r) { CHECK(forward(r, x0[static_cast<size_t>(r)], y[static_cast<size_t>(r)]) == BN_OK); });
  auto snapshot = [&](int r) {
    std::vector<std::vector<double>> s;
    for (bn_param p : state_params(true)) s.push_back(layers[static_cast<size_t>(r)].param(p));
    s.push_back(layers[static_cast<size_t>(r)].param(BN_PARAM_BATCH_MEAN));
    s.push_back(layers[static_cast<size_t>(r)].param(BN_PARAM_BATCH_VARIANCE));
    return s;
  };
  // The gradient of the good step, for comparison after the failures.
  std::vector<std::vector<unsigned char>> dx_good(replicas, std::vector<unsigned char>(n * esize)),
      dg_good(replicas, std::vector<unsigned char>(c * esize)), db_good = dg_good;
  on_replicas(replicas, [&](int r) {
    const auto i = static_cast<size_t>(r);
    CHECK(backward(r, dx_good[i], dg_good[i], db_good[i]) == BN_OK);
  });

  struct Failure {
    const char* what;
    bool large_mean;   // data far from the shift: the forward takes a second round
    int64_t fail_at;   // collective index within the call that fails
    bool in_backward;
  };
  for (const Failure& fl : {Failure{"forward, round 1", false, 0, false}, Failure{"forward, round 2", true, 1, false},
                            Failure{"backward", false, 0, true}}) {
    INFO(fl.what);
    std::vector<std::vector<std::vector<double>>> before(replicas);
    for (int r = 0; r < replicas; ++r) before[static_cast<size_t>(r)] = snapshot(r);
    std::vector<std::vector<unsigned char>> x1(replicas);
    for (int r = 0; r < replicas; ++r) x1[static_cast<size_t>(r)] = raw(gen.normal(n, fl.large_mean ? 1e5 : 0.5, 1.0, dtype));
    group.fail_from(group.collectives() + fl.fail_at);
    std::vector<bn_status> st(replicas);
    std::vector<std::string> message(replicas);
    std::vector<std::vector<unsigned char>> out(replicas, std::vector<unsigned char>(n * esize, 0xA5)),
        dg(replicas, std::vector<unsigned char>(c * esize, 0xA5)), db = dg;
    on_replicas(replicas, [&](int r) {
      const auto i = static_cast<size_t>(r);
      st[i] = fl.in_backward ? backward(r, out[i], dg[i], db[i]) : forward(r, x1[i], out[i]);
      message[i] = bn_last_error();
    });
    group.fail_from(-1);
    for (int r = 0; r < replicas; ++r) {
      const auto i = static_cast<size_t>(r);
      CHECK(st[i] == BN_ERR_CALLBACK);
      CHECK(message[i].find(fl.in_backward ? "bn_backward" : "bn_forward") == 0);
      CHECK(message[i].find("allreduce") != std::string::npos);
      CHECK(out[i] == std::vector<unsigned char>(n * esize, 0xA5));
      CHECK(dg[i] == std::vector<unsigned char>(c * esize, 0xA5));
      CHECK(db[i] == std::vector<unsigned char>(c * esize, 0xA5));
      const auto after = snapshot(r);
      for (size_t p = 0; p < after.size(); ++p) expect(compare_exact("state", after[p], before[i][p]));
    }
    // The good step's forward is still the saved one: its gradient again, bitwise.
    std::vector<std::vector<unsigned char>> dx2(replicas, std::vector<unsigned char>(n * esize)),
        dg2(replicas, std::vector<unsigned char>(c * esize)), db2 = dg2;
    on_replicas(replicas, [&](int r) {
      const auto i = static_cast<size_t>(r);
      CHECK(backward(r, dx2[i], dg2[i], db2[i]) == BN_OK);
      CHECK(dx2[i] == dx_good[i]);
      CHECK(dg2[i] == dg_good[i]);
      CHECK(db2[i] == db_good[i]);
    });
  }
}

}  // namespace bn_test

namespace bn_test {

// Non-finite data on one replica: the global statistics decide, so every replica refuses (and
// changes nothing) or, under SKIP_UPDATE, every replica writes its output and keeps its moving
// statistics; the collectives stay in step (no second round for a non-finite feature).
TEST_CASE("synchronized non-finite batches: every replica decides alike", "[layer][sync][nonfinite]") {
  const bn_nonfinite_policy policy = GENERATE(BN_NONFINITE_REFUSE, BN_NONFINITE_SKIP_UPDATE);
  CAPTURE(policy);
  const int replicas = 3;
  RefConfig cfg;
  cfg.dtype = RefDtype::f64;
  const std::vector<int64_t> shape{4, 3};
  Group group(replicas);
  std::vector<LibLayer> layers(replicas);
  for (int r = 0; r < replicas; ++r) {
    REQUIRE(layers[static_cast<size_t>(r)].create(cfg, shape, [&](bn_config* c) {
      const bn_status s = bn_config_set_nonfinite_policy(c, policy);
      return s != BN_OK ? s : bn_config_set_allreduce(c, &Group::callback, group.member(r));
    }) == BN_OK);
    REQUIRE(bn_set_training(layers[static_cast<size_t>(r)].get(), 1) == BN_OK);
  }
  DataGen gen(5);
  std::vector<std::vector<double>> x(replicas);
  for (auto& v : x) v = gen.normal(12, 1e3, 1.0, RefDtype::f64);  // far from the shift 0
  x[1][4] = std::numeric_limits<double>::quiet_NaN();             // replica 1, feature 1
  std::vector<bn_status> st(replicas);
  std::vector<std::vector<double>> y(replicas);
  group.take_counts();
  on_replicas(replicas, [&](int r) {
    const auto i = static_cast<size_t>(r);
    st[i] = layers[i].forward(shape, x[i], y[i]);
  });
  // Features 0 and 2 take a second round (1e3 standard deviations from the shift 0), feature 1
  // (NaN) does not; all replicas make the same two calls.
  for (size_t n : group.take_counts()) CHECK(n == 2u);
  CHECK(group.member(0)->counts.back() == 2);
  for (int r = 0; r < replicas; ++r) {
    const auto i = static_cast<size_t>(r);
    INFO("replica " << r);
    CHECK(layers[i].param(BN_PARAM_MOVING_MEAN) == std::vector<double>(3, 0.0));
    CHECK(layers[i].param(BN_PARAM_MOVING_VARIANCE) == std::vector<double>(3, 1.0));
    if (policy == BN_NONFINITE_REFUSE) {
      CHECK(st[i] == BN_ERR_NONFINITE);
    } else {
      REQUIRE(st[i] == BN_OK);
      CHECK(std::isnan(y[i][1]));
      CHECK(std::isfinite(y[i][0]));
      CHECK(std::isnan(layers[i].param(BN_PARAM_BATCH_MEAN)[1]));
    }
  }
}

}  // namespace bn_test
