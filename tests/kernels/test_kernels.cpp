// The reference kernels and every SIMD table the CPU can run (src/kernels), block by block
// against naive loops, over the
// geometries bn::plan_shape builds for many shapes: SIMD tail sizes 1..17, 31, 33, 63, 65,
// 127, 129 along the contiguous dims, NCHW/NHWC/dense layouts, kept axes split by reduced
// ones, and shapes large enough for many blocks in both grid directions.
//
// The naive side never uses the kernels' feature arithmetic: each element's feature comes
// from tests/support's odometer over the full shape (row-major over the kept axes).
// It also checks the block grid: every element in exactly one block, every block writing
// only its own partial row and only the features it holds, so that o_blocks x features
// partial entries suffice.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "data_gen.hpp"
#include "kernels/kernels.hpp"
#include "layer/shape_plan.hpp"
#include "reference.hpp"

namespace bn_test {
namespace {

struct KernelCase {
  std::vector<int64_t> shape;
  std::vector<int32_t> axes;
};

std::string describe(const KernelCase& k) {
  std::string s = describe_shape(k.shape) + " axes {";
  for (size_t i = 0; i < k.axes.size(); ++i) s += (i ? "," : "") + std::to_string(k.axes[i]);
  return s + "}";
}

const std::vector<KernelCase>& kernel_cases() {
  static const std::vector<KernelCase> all = [] {
    const std::vector<int64_t> tails{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 31, 33, 63, 65, 127, 129};
    std::vector<KernelCase> v;
    for (int64_t t : tails) {
      v.push_back({{3, t}, {-1}});           // dense: C is the tail
      v.push_back({{2, 3, 1, t}, {1}});      // NCHW: H*W is the tail (inner)
      v.push_back({{2, 2, 3, t}, {-1}});     // NHWC: C is the tail
      v.push_back({{t, 5}, {0}});            // batch axis kept: outer = 1
      v.push_back({{2, t, 3, 5}, {1, 3}});   // split kept group, t features on axis 1
      v.push_back({{3, 4, 2, t}, {1, 3}});   // split kept group, t on the last axis
    }
    // Many blocks (o and s directions), ranks 1..6, all-kept, size-1 dims.
    v.push_back({{600, 129}, {-1}});
    v.push_back({{1000, 7}, {1}});
    v.push_back({{4, 40, 33, 33}, {1}});
    v.push_back({{16, 17, 17, 65}, {3}});
    v.push_back({{2, 300, 300}, {1}});
    v.push_back({{40, 64, 2, 64}, {1, 3}});
    v.push_back({{64, 16, 16, 9}, {-3, -1}});
    v.push_back({{9, 7, 5, 3, 2}, {0, 2, 4}});
    v.push_back({{2, 3, 1, 4, 1, 5}, {1, 3, 5}});
    v.push_back({{3, 1, 4, 1, 5}, {1, 2}});
    v.push_back({{4, 6}, {0, 1}});
    v.push_back({{11}, {0}});
    v.push_back({{513}, {-1}});
    v.push_back({{1, 1, 1, 1}, {2}});
    v.push_back({{300, 2, 2}, {2, 1}});
    return v;
  }();
  return all;
}

// Expected geometry, from the shape and the kept dims directly.
void check_geometry(const KernelCase& kc, const std::vector<bool>& kept, const bn::ShapePlan& p) {
  const auto rank = kc.shape.size();
  size_t first = 0, last = rank - 1;
  while (!kept[first]) ++first;
  while (!kept[last]) --last;
  int64_t outer = 1, span = 1, inner = 1, features = 1;
  for (size_t d = 0; d < rank; ++d) {
    (d < first ? outer : d > last ? inner : span) *= kc.shape[d];
    if (kept[d]) features *= kc.shape[d];
  }
  const bn::kernels::Geometry& g = p.geometry;
  CHECK(g.outer == outer);
  CHECK(g.span == span);
  CHECK(g.inner == inner);
  CHECK(g.features == features);
  CHECK(p.elements == element_count(kc.shape));
  CHECK(p.per_feature * features == p.elements);
}

struct BlockInfo {
  std::vector<int64_t> elements;      // linear indices
  std::set<int64_t> features;         // features it holds
  std::vector<int64_t> per_feature;   // element count per feature
};

BlockInfo block_info(const bn::kernels::Geometry& g, const bn::kernels::Block& b,
                     const std::vector<int64_t>& fmap) {
  BlockInfo info;
  info.per_feature.assign(static_cast<size_t>(g.features), 0);
  for (int64_t o = b.o0; o < b.o1; ++o) {
    for (int64_t s = b.s0; s < b.s1; ++s) {
      for (int64_t i = 0; i < g.inner; ++i) {
        const int64_t e = (o * g.span + s) * g.inner + i;
        info.elements.push_back(e);
        const int64_t f = fmap[static_cast<size_t>(e)];
        info.features.insert(f);
        ++info.per_feature[static_cast<size_t>(f)];
      }
    }
  }
  return info;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Per-feature sums over one block's elements, in long double.
template <class F>
std::vector<long double> block_sum(const BlockInfo& info, const std::vector<int64_t>& fmap, int64_t features, F&& term) {
  std::vector<long double> s(static_cast<size_t>(features), 0.0L);
  for (int64_t e : info.elements) s[static_cast<size_t>(fmap[static_cast<size_t>(e)])] += term(e);
  return s;
}

template <class T>
void check_kernels(const bn::kernels::KernelTable<T>& k, const bn::ShapePlan& p,
                   const std::vector<int64_t>& fmap) {
  using bn::kernels::Block;
  const bn::kernels::Geometry& g = p.geometry;
  const bn::BlockGrid& grid = p.grid;
  const int64_t c = g.features;
  const auto n = static_cast<size_t>(p.elements);
  const RefDtype dt = sizeof(T) == 4 ? RefDtype::f32 : RefDtype::f64;
  INFO("kernels " << k.isa << (sizeof(T) == 4 ? " f32" : " f64"));
  DataGen gen(99 + n);
  const std::vector<double> xd = gen.normal(n, 1.0, 2.0, dt), dyd = gen.normal(n, 0.0, 1.0, dt);
  const std::vector<T> x(xd.begin(), xd.end()), dy(dyd.begin(), dyd.end());
  const auto cz = static_cast<size_t>(c);
  // Per-feature constants are of the kernels' element type T (the layer folds them so).
  const std::vector<double> center = gen.uniform_vector(cz, -1, 1, dt), scale = gen.uniform_vector(cz, -2, 2, dt),
                            shift = gen.uniform_vector(cz, -1, 1, dt), k_x = gen.uniform_vector(cz, -1, 1, dt),
                            k_c = gen.uniform_vector(cz, -1, 1, dt);
  const std::vector<T> center_t(center.begin(), center.end()), scale_t(scale.begin(), scale.end()),
      shift_t(shift.begin(), shift.end()), k_x_t(k_x.begin(), k_x.end()), k_c_t(k_c.begin(), k_c.end());
  // Reductions: the reference and every f64 table accumulate each term in double (error far
  // below 1e-11 of the summed magnitudes). The f32 SIMD tables add runs of up to 8 values per
  // lane in float before widening to double (~8 ulps of float of the run's magnitude) and
  // form x - c in float: 2e-6 of the summed magnitudes.
  const bool float_runs = sizeof(T) == 4 && std::string(k.isa) != "ref";
  const double rel = float_runs ? 2e-6 : 1e-11;
  // Elementwise: x - c is formed in T (exact or one rounding), then one or two roundings to T.
  const double out_rel = sizeof(T) == 4 ? 0x1p-21 : 1e-14;

  const size_t rows = static_cast<size_t>(grid.o_blocks) * cz;
  std::vector<double> pa(rows, kNaN), pb(rows, kNaN);      // stats partials
  std::vector<double> qa(rows, kNaN), qb(rows, kNaN);      // backward-sum partials
  std::vector<T> y(n, T(kNaN)), dx(n, T(kNaN));
  std::vector<std::set<int64_t>> row_features(static_cast<size_t>(grid.o_blocks));
  int failures = 0;
  auto fail = [&](const std::string& what) {
    if (failures++ < 5) FAIL_CHECK(what);
  };

  for (int64_t b = 0; b < grid.count(); ++b) {
    const Block blk = grid.block(g, b);
    const int64_t bo = b / grid.s_blocks;
    const BlockInfo info = block_info(g, blk, fmap);
    // Blocks of one row hold disjoint features: one partial row per o-block suffices.
    for (int64_t f : info.features) {
      if (!row_features[static_cast<size_t>(bo)].insert(f).second) fail("feature shared by two blocks of a row");
    }
    for (int64_t f : info.features) {
      if (info.per_feature[static_cast<size_t>(f)] != static_cast<int64_t>(grid.count_per_feature(g, bo))) {
        fail("count_per_feature differs from the block's element count");
      }
    }
    const std::vector<double> pa_before = pa, pb_before = pb, qa_before = qa, qb_before = qb;
    const size_t row = static_cast<size_t>(bo) * cz;
    k.stats({g, x.data(), pa.data() + row, pb.data() + row}, blk);
    k.backward_sums({g, x.data(), dy.data(), center_t.data(), qa.data() + row, qb.data() + row}, blk);
    k.normalize({g, x.data(), y.data(), center_t.data(), scale_t.data(), shift_t.data()}, blk);
    k.backward_dx({g, x.data(), dy.data(), dx.data(), center_t.data(), scale_t.data(), k_x_t.data(), k_c_t.data()},
                  blk);

    // Naive statistics of this block.
    const auto cnt = block_sum(info, fmap, c, [&](int64_t) { return 1.0L; });
    const auto sum = block_sum(info, fmap, c, [&](int64_t e) { return static_cast<long double>(xd[e]); });
    std::vector<long double> mean(cz);
    for (size_t f = 0; f < cz; ++f) mean[f] = cnt[f] > 0 ? sum[f] / cnt[f] : 0.0L;
    const auto m2 = block_sum(info, fmap, c, [&](int64_t e) {
      const long double d = xd[e] - mean[static_cast<size_t>(fmap[e])];
      return d * d;
    });
    const auto abs_x = block_sum(info, fmap, c, [&](int64_t e) { return std::fabs(static_cast<long double>(xd[e])); });
    const auto sdy = block_sum(info, fmap, c, [&](int64_t e) { return static_cast<long double>(dyd[e]); });
    const auto abs_dy = block_sum(info, fmap, c, [&](int64_t e) { return std::fabs(static_cast<long double>(dyd[e])); });
    // The contract forms x - c in T (one rounding, or exact near c).
    const auto sdyxc = block_sum(info, fmap, c, [&](int64_t e) {
      const T xc = x[static_cast<size_t>(e)] - center_t[static_cast<size_t>(fmap[e])];
      return static_cast<long double>(dyd[e]) * static_cast<long double>(xc);
    });
    const auto abs_dyxc = block_sum(info, fmap, c, [&](int64_t e) {
      return std::fabs(static_cast<long double>(dyd[e])) * (std::fabs(xd[e]) + std::fabs(center[fmap[e]]));
    });
    for (int64_t fi = 0; fi < c; ++fi) {
      const auto f = static_cast<size_t>(fi);
      const size_t at = row + f;
      if (!info.features.count(fi)) {  // a feature this block does not hold: untouched
        if (!same_bits(pa[at], pa_before[at]) || !same_bits(pb[at], pb_before[at]) ||
            !same_bits(qa[at], qa_before[at]) || !same_bits(qb[at], qb_before[at])) {
          fail("block " + std::to_string(b) + " wrote the partial of feature " + std::to_string(fi) + " it does not hold");
        }
        continue;
      }
      // Float runs sum x - x0 (x0 a value of the block): allow for |x - x0| <= |x| + |x0|.
      const long double mag_x = abs_x[f] / cnt[f] * (float_runs ? 3.0L : 1.0L);
      auto near = [&](double got, long double want, long double mag) {
        return std::fabs(static_cast<long double>(got) - want) <= rel * mag;
      };
      if (!near(pa[at], mean[f], mag_x)) fail("stats mean, block " + std::to_string(b) + " feature " + std::to_string(fi));
      if (!near(pb[at], m2[f], m2[f] + cnt[f] * mag_x * mag_x * 1e-3L)) {
        fail("stats m2, block " + std::to_string(b) + " feature " + std::to_string(fi));
      }
      if (!near(qa[at], sdy[f], abs_dy[f])) fail("sum_dy, block " + std::to_string(b) + " feature " + std::to_string(fi));
      if (!near(qb[at], sdyxc[f], abs_dyxc[f])) fail("sum_dyxc, block " + std::to_string(b) + " feature " + std::to_string(fi));
    }
  }
  // Elementwise kernels: every element written (exactly once, by the coverage check) with
  //   y  = (x - center)*scale + shift,   dx = k_dy*dy + k_x*(x - center) + k_c  (k_dy = scale here).
  for (size_t e = 0; e < n; ++e) {
    const auto f = static_cast<size_t>(fmap[e]);
    const double xc = xd[e] - center[f];
    const double want_y = xc * scale[f] + shift[f];
    const double mag_y = std::fabs(xd[e]) * std::fabs(scale[f]) + std::fabs(center[f] * scale[f]) + std::fabs(shift[f]);
    if (!(std::fabs(static_cast<double>(y[e]) - want_y) <= out_rel * mag_y)) fail("normalize, element " + std::to_string(e));
    const double want_dx = scale[f] * dyd[e] + k_x[f] * xc + k_c[f];
    const double mag_dx = std::fabs(scale[f] * dyd[e]) + std::fabs(k_x[f]) * (std::fabs(xd[e]) + std::fabs(center[f])) +
                          std::fabs(k_c[f]);
    if (!(std::fabs(static_cast<double>(dx[e]) - want_dx) <= out_rel * mag_dx)) fail("backward_dx, element " + std::to_string(e));
  }
  CHECK(failures == 0);
}

TEST_CASE("block grid and every kernel table against naive loops", "[kernels]") {
  const size_t index = GENERATE(range(size_t{0}, kernel_cases().size()));
  const KernelCase& kc = kernel_cases()[index];
  CAPTURE(describe(kc));
  const auto ndim = static_cast<int32_t>(kc.shape.size());
  const bn::AxisPlan axes = bn::resolve_axes(kc.axes, kc.shape.data(), ndim);
  const bn::ShapePlan p = bn::plan_shape(axes, kc.shape.data(), ndim);
  std::vector<bool> kept(kc.shape.size(), false);
  for (int a : validate_axes(std::vector<int>(kc.axes.begin(), kc.axes.end()), ndim)) kept[static_cast<size_t>(a)] = true;
  check_geometry(kc, kept, p);
  const std::vector<int64_t> fmap = feature_index_map(kc.shape, kept);
  const bn::kernels::Geometry& g = p.geometry;
  const bn::BlockGrid& grid = p.grid;
  CAPTURE(grid.o_blocks, grid.s_blocks, grid.o_chunk, grid.s_chunk);

  // Every element in exactly one block; blocks inside the tensor.
  std::vector<int> visits(static_cast<size_t>(p.elements), 0);
  for (int64_t b = 0; b < grid.count(); ++b) {
    const bn::kernels::Block blk = grid.block(g, b);
    REQUIRE(0 <= blk.o0);
    REQUIRE(blk.o0 < blk.o1);
    REQUIRE(blk.o1 <= g.outer);
    REQUIRE(0 <= blk.s0);
    REQUIRE(blk.s0 < blk.s1);
    REQUIRE(blk.s1 <= g.span);
    for (int64_t e : block_info(g, blk, fmap).elements) ++visits[static_cast<size_t>(e)];
  }
  CHECK(std::count(visits.begin(), visits.end(), 1) == p.elements);

  // Partial storage: o_blocks x features entries (checked per block in check_kernels).
  // It never exceeds the tensor, and for a single kept group every partial row except the
  // last summarizes at least 64 values per feature (shape_plan.cpp's kMinPerPartial and
  // kMinRowsInterleaved), so the rows are at most ceil(m/64) for m values per feature.
  const int64_t partial = grid.o_blocks * g.features;
  CHECK(partial <= std::max(g.features, p.elements));
  if (g.identity()) {
    const int64_t m = p.per_feature;
    CHECK(grid.o_blocks <= std::max<int64_t>(1, (m + 63) / 64));
  }

  check_kernels(bn::kernels::reference_f32(), p, fmap);
  check_kernels(bn::kernels::reference_f64(), p, fmap);
  // Every SIMD table this CPU can run (each instantiated for every tail above).
  for (const char* isa : {"avx2", "avx512"}) {
    if (const auto* table = bn::kernels::kernels_for_isa_f32(isa)) {
      check_kernels(*table, p, fmap);
    } else {
      WARN("this CPU cannot run the " << isa << " kernels: not tested here");
    }
  }
}

TEST_CASE("empty tensors plan no blocks", "[kernels]") {
  const std::vector<int64_t> shape{0, 3, 4};
  const bn::AxisPlan axes = bn::resolve_axes({1}, shape.data(), 3);
  const bn::ShapePlan p = bn::plan_shape(axes, shape.data(), 3);
  CHECK(p.elements == 0);
  CHECK(p.grid.count() == 0);
}

}  // namespace
}  // namespace bn_test
