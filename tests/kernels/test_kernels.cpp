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
//
// Element types: f32, f64 and the 16-bit bf16 and f16 (their tables at every tail size). The
// 16-bit kernels are checked against the naive loops with one 16-bit rounding of the output
// allowed, and against the float table of the same ISA bit for bit (a 16-bit kernel computes
// what the float one does on the widened values, then rounds once), with 16-bit values
// encoded and decoded by tests/support/half_ref.hpp, which shares no code with the library.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "data_gen.hpp"
#include "half_ref.hpp"
#include "kernels/kernels.hpp"
#include "layer/shape_plan.hpp"
#include "reference.hpp"

namespace bn_test {
namespace {

using bn::kernels::bf16;
using bn::kernels::f16;

// Test-side view of an element type: conversions through the independent 16-bit model.
template <class T>
struct Elem {
  static constexpr const char* name = sizeof(T) == 4 ? "f32" : "f64";
  static T from(double v) { return static_cast<T>(v); }
  static double value(T v) { return static_cast<double>(v); }
  static double round(double v) { return v; }  // callers pass values of T already
  static double half_ulp(double) { return 0.0; }
};
template <class H, const HalfFormat& F>
struct HalfElem {
  static H from(double v) { return H{half_encode(F, v)}; }
  static double value(H v) { return half_decode(F, v.bits); }
  static double round(double v) { return half_round(F, v); }
  static double half_ulp(double v) { return F.ulp(v) / 2; }
};
template <>
struct Elem<bf16> : HalfElem<bf16, kBfloat16> {
  static constexpr const char* name = "bf16";
};
template <>
struct Elem<f16> : HalfElem<f16, kBinary16> {
  static constexpr const char* name = "f16";
};

template <class T>
std::vector<T> encode_all(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Elem<T>::from(v[i]);
  return out;
}
template <class T>
std::vector<double> round_all(std::vector<double> v) {
  for (double& e : v) e = Elem<T>::round(e);
  return v;
}

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
  using C = bn::kernels::Compute<T>;  // the kernels' arithmetic and constants
  const bn::kernels::Geometry& g = p.geometry;
  const bn::BlockGrid& grid = p.grid;
  const int64_t c = g.features;
  const auto n = static_cast<size_t>(p.elements);
  const RefDtype dt = std::is_same_v<C, float> ? RefDtype::f32 : RefDtype::f64;
  INFO("kernels " << k.isa << " " << Elem<T>::name);
  DataGen gen(99 + n);
  // Values of T (16-bit ones: floats rounded once more).
  const std::vector<double> xd = round_all<T>(gen.normal(n, 1.0, 2.0, dt)),
                            dyd = round_all<T>(gen.normal(n, 0.0, 1.0, dt));
  const std::vector<T> x = encode_all<T>(xd), dy = encode_all<T>(dyd);
  const auto cz = static_cast<size_t>(c);
  // Per-feature constants are of the kernels' compute type C (the layer folds them so).
  const std::vector<double> center = gen.uniform_vector(cz, -1, 1, dt), scale = gen.uniform_vector(cz, -2, 2, dt),
                            shift = gen.uniform_vector(cz, -1, 1, dt), k_x = gen.uniform_vector(cz, -1, 1, dt),
                            k_c = gen.uniform_vector(cz, -1, 1, dt);
  const std::vector<C> center_t(center.begin(), center.end()), scale_t(scale.begin(), scale.end()),
      shift_t(shift.begin(), shift.end()), k_x_t(k_x.begin(), k_x.end()), k_c_t(k_c.begin(), k_c.end());
  // Reductions: the reference and every f64 table accumulate each term in double (error far
  // below 1e-11 of the summed magnitudes). The float SIMD tables (f32, bf16, f16) add runs of
  // up to 8 values per lane in float before widening to double (~8 ulps of float of the run's
  // magnitude) and form x - c in float: 2e-6 of the summed magnitudes.
  const bool float_runs = std::is_same_v<C, float> && std::string(k.isa) != "ref";
  const double rel = float_runs ? 2e-6 : 1e-11;
  // Elementwise: x - c is formed in C (exact or one rounding), then one or two roundings to C;
  // a 16-bit output is then rounded once more (half an ulp of the 16-bit type).
  const double out_rel = std::is_same_v<C, float> ? 0x1p-21 : 1e-14;

  const size_t rows = static_cast<size_t>(grid.o_blocks) * cz;
  std::vector<double> pa(rows, kNaN), pb(rows, kNaN);      // stats partials
  std::vector<double> pc(rows, kNaN), pd(rows, kNaN);      // the same with the hint `cached`
  std::vector<double> qa(rows, kNaN), qb(rows, kNaN);      // backward-sum partials
  std::vector<T> y(n, Elem<T>::from(kNaN)), dx(n, Elem<T>::from(kNaN));
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
    const std::vector<double> pa_before = pa, pb_before = pb, pc_before = pc, pd_before = pd, qa_before = qa, qb_before = qb;
    const size_t row = static_cast<size_t>(bo) * cz;
    k.stats({g, x.data(), pa.data() + row, pb.data() + row}, blk);
    k.stats({g, x.data(), pc.data() + row, pd.data() + row, true}, blk);
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
    // The contract forms x - c in C (one rounding, or exact near c).
    const auto sdyxc = block_sum(info, fmap, c, [&](int64_t e) {
      const C xc = static_cast<C>(xd[static_cast<size_t>(e)]) - center_t[static_cast<size_t>(fmap[e])];
      return static_cast<long double>(dyd[e]) * static_cast<long double>(xc);
    });
    const auto abs_dyxc = block_sum(info, fmap, c, [&](int64_t e) {
      return std::fabs(static_cast<long double>(dyd[e])) * (std::fabs(xd[e]) + std::fabs(center[fmap[e]]));
    });
    for (int64_t fi = 0; fi < c; ++fi) {
      const auto f = static_cast<size_t>(fi);
      const size_t at = row + f;
      if (!info.features.count(fi)) {  // a feature this block does not hold: untouched
        if (!same_bits(pa[at], pa_before[at]) || !same_bits(pb[at], pb_before[at]) || !same_bits(pc[at], pc_before[at]) ||
            !same_bits(pd[at], pd_before[at]) ||
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
      if (!near(pc[at], mean[f], mag_x)) fail("stats mean (cached), block " + std::to_string(b) + " feature " + std::to_string(fi));
      if (!near(pd[at], m2[f], m2[f] + cnt[f] * mag_x * mag_x * 1e-3L)) {
        fail("stats m2 (cached), block " + std::to_string(b) + " feature " + std::to_string(fi));
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
    // A 16-bit output is the C result (within out_rel*mag of want) rounded to nearest.
    const double tol_y = out_rel * mag_y + Elem<T>::half_ulp(std::fabs(want_y) + out_rel * mag_y);
    if (!(std::fabs(Elem<T>::value(y[e]) - want_y) <= tol_y)) fail("normalize, element " + std::to_string(e));
    const double want_dx = scale[f] * dyd[e] + k_x[f] * xc + k_c[f];
    const double mag_dx = std::fabs(scale[f] * dyd[e]) + std::fabs(k_x[f]) * (std::fabs(xd[e]) + std::fabs(center[f])) +
                          std::fabs(k_c[f]);
    const double tol_dx = out_rel * mag_dx + Elem<T>::half_ulp(std::fabs(want_dx) + out_rel * mag_dx);
    if (!(std::fabs(Elem<T>::value(dx[e]) - want_dx) <= tol_dx)) fail("backward_dx, element " + std::to_string(e));
  }
  CHECK(failures == 0);
}

// The format of a 16-bit element type, for the independent model.
template <class H>
const HalfFormat& format_of() {
  return std::is_same_v<H, bf16> ? kBfloat16 : kBinary16;
}

// A 16-bit table against the float table of the same ISA, on the same (widened) values: every
// partial sum bit for bit, every output the float output rounded once to nearest even
// (half_encode). Runs the epilogue (residual + ReLU) and both ReLU gates too, so that every
// load and store of the 16-bit paths, whole vectors and masked tails, is exercised.
template <class H>
void check_half_matches_float(const bn::kernels::KernelTable<H>& kh, const bn::kernels::KernelTable<float>& kf,
                              const bn::ShapePlan& p) {
  using bn::kernels::Block;
  const HalfFormat& fmt = format_of<H>();
  INFO("16-bit table " << kh.isa << " " << Elem<H>::name << " against float table " << kf.isa);
  const bn::kernels::Geometry& g = p.geometry;
  const bn::BlockGrid& grid = p.grid;
  const auto n = static_cast<size_t>(p.elements);
  const auto cz = static_cast<size_t>(g.features);
  DataGen gen(7 + n);
  const std::vector<double> xd = round_all<H>(gen.normal(n, 0.5, 2.0, RefDtype::f32)),
                            dyd = round_all<H>(gen.normal(n, 0.0, 1.0, RefDtype::f32)),
                            rd = round_all<H>(gen.normal(n, 0.0, 1.0, RefDtype::f32));
  const std::vector<H> x16 = encode_all<H>(xd), dy16 = encode_all<H>(dyd), r16 = encode_all<H>(rd);
  const std::vector<float> x32(xd.begin(), xd.end()), dy32(dyd.begin(), dyd.end()), r32(rd.begin(), rd.end());
  auto consts = [&](double lo, double hi) {
    const std::vector<double> v = gen.uniform_vector(cz, lo, hi, RefDtype::f32);
    return std::vector<float>(v.begin(), v.end());
  };
  const std::vector<float> center = consts(-1, 1), scale = consts(-2, 2), shift = consts(-1, 1), k_x = consts(-1, 1),
                           k_c = consts(-1, 1);

  const size_t rows = static_cast<size_t>(grid.o_blocks) * cz;
  // Outputs: [0] plain, [1] with the epilogue / a gate, [2] the other gate.
  std::vector<H> y16[2], dx16[3], dres16(n);
  std::vector<float> y32[2], dx32[3], dres32(n);
  for (auto& v : y16) v.assign(n, Elem<H>::from(kNaN));
  for (auto& v : dx16) v.assign(n, Elem<H>::from(kNaN));
  for (auto& v : y32) v.assign(n, static_cast<float>(kNaN));
  for (auto& v : dx32) v.assign(n, static_cast<float>(kNaN));
  // Partials: stats (mean, m2) and backward sums without a gate, gated from y, gated from x.
  std::vector<double> part16[8], part32[8];
  for (auto& v : part16) v.assign(rows, kNaN);
  for (auto& v : part32) v.assign(rows, kNaN);

  // Forwards first (the gate from y reads the epilogue's output).
  for (int64_t b = 0; b < grid.count(); ++b) {
    const Block blk = grid.block(g, b);
    const size_t row = static_cast<size_t>(b / grid.s_blocks) * cz;
    kh.stats({g, x16.data(), part16[0].data() + row, part16[1].data() + row}, blk);
    kf.stats({g, x32.data(), part32[0].data() + row, part32[1].data() + row}, blk);
    kh.normalize({g, x16.data(), y16[0].data(), center.data(), scale.data(), shift.data()}, blk);
    kf.normalize({g, x32.data(), y32[0].data(), center.data(), scale.data(), shift.data()}, blk);
    kh.normalize({g, x16.data(), y16[1].data(), center.data(), scale.data(), shift.data(), r16.data(), true}, blk);
    kf.normalize({g, x32.data(), y32[1].data(), center.data(), scale.data(), shift.data(), r32.data(), true}, blk);
  }
  const bn::kernels::Gate<H> from_y16{y16[1].data()}, from_x16{nullptr, center.data(), scale.data(), shift.data()};
  const bn::kernels::Gate<float> from_y32{y32[1].data()}, from_x32{nullptr, center.data(), scale.data(), shift.data()};
  for (int64_t b = 0; b < grid.count(); ++b) {
    const Block blk = grid.block(g, b);
    const size_t row = static_cast<size_t>(b / grid.s_blocks) * cz;
    const bn::kernels::Gate<H> gates16[3] = {{}, from_y16, from_x16};
    const bn::kernels::Gate<float> gates32[3] = {{}, from_y32, from_x32};
    for (int i = 0; i < 3; ++i) {
      double* a16 = part16[2 + 2 * i].data() + row;
      double* b16 = part16[3 + 2 * i].data() + row;
      double* a32 = part32[2 + 2 * i].data() + row;
      double* b32 = part32[3 + 2 * i].data() + row;
      kh.backward_sums({g, x16.data(), dy16.data(), center.data(), a16, b16, gates16[i]}, blk);
      kf.backward_sums({g, x32.data(), dy32.data(), center.data(), a32, b32, gates32[i]}, blk);
      // dx with each gate; the gate from y also writes dresidual.
      H* dres_h = i == 1 ? dres16.data() : nullptr;
      float* dres_f = i == 1 ? dres32.data() : nullptr;
      kh.backward_dx({g, x16.data(), dy16.data(), dx16[i].data(), center.data(), scale.data(), k_x.data(), k_c.data(),
                      gates16[i], dres_h},
                     blk);
      kf.backward_dx({g, x32.data(), dy32.data(), dx32[i].data(), center.data(), scale.data(), k_x.data(), k_c.data(),
                      gates32[i], dres_f},
                     blk);
    }
  }
  int failures = 0;
  auto fail = [&](const std::string& what) {
    if (failures++ < 5) FAIL_CHECK(what);
  };
  for (int i = 0; i < 8; ++i) {
    if (std::memcmp(part16[i].data(), part32[i].data(), rows * sizeof(double)) != 0) {
      fail("partial sums " + std::to_string(i) + " differ from the float table's");
    }
  }
  auto same_rounded = [&](const std::vector<H>& got, const std::vector<float>& want, const char* what) {
    for (size_t e = 0; e < n; ++e) {
      if (got[e].bits != half_encode(fmt, want[e])) {
        fail(std::string(what) + ", element " + std::to_string(e) + ": got 0x" + std::to_string(got[e].bits) +
             " for the float result " + std::to_string(want[e]));
      }
    }
  };
  same_rounded(y16[0], y32[0], "normalize");
  same_rounded(y16[1], y32[1], "normalize + residual + ReLU");
  same_rounded(dx16[0], dx32[0], "backward_dx");
  same_rounded(dx16[1], dx32[1], "backward_dx gated from y");
  same_rounded(dx16[2], dx32[2], "backward_dx gated from x");
  same_rounded(dres16, dres32, "dresidual");
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
  // The elementwise grid too.
  std::vector<int> stream_visits(static_cast<size_t>(p.elements), 0);
  for (int64_t b = 0; b < p.stream_grid.count(); ++b) {
    const bn::kernels::Block blk = p.stream_grid.block(g, b);
    REQUIRE(blk.o0 < blk.o1);
    REQUIRE(blk.o1 <= g.outer);
    REQUIRE(blk.s0 < blk.s1);
    REQUIRE(blk.s1 <= g.span);
    for (int64_t e : block_info(g, blk, fmap).elements) ++stream_visits[static_cast<size_t>(e)];
  }
  CHECK(std::count(stream_visits.begin(), stream_visits.end(), 1) == p.elements);

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

  check_kernels(bn::kernels::reference_f64(), p, fmap);
  // The reference and every SIMD table this CPU can run (each instantiated for every tail
  // above), for f32, bf16 and f16.
  for (const char* isa : {"ref", "avx2", "avx512"}) {
    const auto* f32 = bn::kernels::kernels_for_isa<float>(isa);
    const auto* b16 = bn::kernels::kernels_for_isa<bf16>(isa);
    const auto* h16 = bn::kernels::kernels_for_isa<f16>(isa);
    if (!f32 || !b16 || !h16) {
      WARN("this CPU cannot run the " << isa << " kernels: not tested here");
      continue;
    }
    CHECK(std::string(f32->isa) == isa);
    CHECK(std::string(b16->isa) == isa);
    CHECK(std::string(h16->isa) == isa);
    check_kernels(*f32, p, fmap);
    check_kernels(*b16, p, fmap);
    check_kernels(*h16, p, fmap);
    check_half_matches_float(*b16, *f32, p);
    check_half_matches_float(*h16, *f32, p);
  }
}

// The statistics kernels of every table this CPU runs, block by block of `grid`, against long
// double: x at index(row, feature, i) for i < g.inner; features where constant(f) holds must
// come out exact (mean 3.25, M2 0); blocks holding NaN or infinity must come out non-finite
// (expected: that many feature blocks), every other mean within 1e-6 standard deviations and
// M2 within 2e-6 relative.
template <class Index, class Constant>
void check_stats_exact(const bn::kernels::Geometry& g, const bn::BlockGrid& grid, const std::vector<float>& x,
                       Index index, Constant constant, int expect_nonfinite, bool cached) {
  const int64_t c = g.span;
  for (const char* isa : {"ref", "avx2", "avx512"}) {
    const auto* k = bn::kernels::kernels_for_isa<float>(isa);
    if (!k) continue;
    INFO("kernels " << isa);
    std::vector<double> mean(static_cast<size_t>(grid.o_blocks * c), kNaN), m2 = mean;
    int failures = 0, nonfinite_blocks = 0;
    for (int64_t b = 0; b < grid.count(); ++b) {
      const bn::kernels::Block blk = grid.block(g, b);
      const int64_t bo = b / grid.s_blocks;
      k->stats({g, x.data(), mean.data() + bo * c, m2.data() + bo * c, cached}, blk);
      const auto n = static_cast<long double>((blk.o1 - blk.o0) * g.inner);
      for (int64_t f = blk.s0; f < blk.s1; ++f) {
        auto each = [&](auto fn) {
          for (int64_t r = blk.o0; r < blk.o1; ++r) {
            for (int64_t i = 0; i < g.inner; ++i) fn(static_cast<long double>(x[static_cast<size_t>(index(r, f, i))]));
          }
        };
        long double s = 0, q = 0;
        each([&](long double v) { s += v; });
        const long double want_mean = s / n;
        each([&](long double v) { q += (v - want_mean) * (v - want_mean); });
        const double got_mean = mean[static_cast<size_t>(bo * c + f)], got_m2 = m2[static_cast<size_t>(bo * c + f)];
        const std::string where = "block " + std::to_string(b) + " feature " + std::to_string(f);
        if (!std::isfinite(s)) {  // the block holds the NaN or the infinity of this feature
          ++nonfinite_blocks;
          if (std::isfinite(got_mean) && std::isfinite(got_m2) && failures++ < 5) FAIL_CHECK("finite statistics with NaN or inf, " + where);
          continue;
        }
        bool ok;
        if (constant(f)) {
          ok = got_mean == 3.25 && got_m2 == 0.0;
        } else {
          const long double sd = std::sqrt(q / n);
          ok = std::fabs(got_mean - want_mean) <= 1e-6L * sd + 1e-15L * std::fabs(want_mean) &&
               std::fabs(got_m2 - q) <= 2e-6L * q;
        }
        if (!ok && failures++ < 5) {
          FAIL_CHECK(where << ": mean " << got_mean << " vs " << static_cast<double>(want_mean) << ", M2 " << got_m2
                           << " vs " << static_cast<double>(q));
        }
      }
    }
    CHECK(failures == 0);
    CHECK(nonfinite_blocks == expect_nonfinite);
  }
}

// The features-last statistics sum x - K around a per-feature shift K (the mean of 8 rows
// spread evenly over the block: rows o0 + i*step, step = rows/8) and must fall back to an
// exact two-pass where K is far off. Per block, against long double: features whose sampled
// rows are far off the others (the fallback; without it M2 is off by up to ~1e-5),
// means of 1e4 with unit spread, constant features (mean exact, M2 exactly 0), and a second
// data set with NaN and infinity in two features (non-finite statistics there, the others
// exact). Shapes: one block of rows < 8, blocks of many rows, and more than 1024 features
// (the kernels take features in chunks) with a SIMD tail in the last chunk.
TEST_CASE("features-last statistics: far shifts, large means, constant and non-finite features", "[kernels]") {
  const std::vector<int64_t> shape = GENERATE(std::vector<int64_t>{5, 13}, std::vector<int64_t>{300, 37},
                                              std::vector<int64_t>{2000, 70}, std::vector<int64_t>{96, 1100});
  const bool nonfinite = GENERATE(false, true);
  CAPTURE(describe_shape(shape), nonfinite);
  const std::vector<int32_t> last{-1};
  const bn::AxisPlan axes = bn::resolve_axes(last, shape.data(), 2);
  const bn::ShapePlan p = bn::plan_shape(axes, shape.data(), 2);
  const bn::kernels::Geometry& g = p.geometry;
  const bn::BlockGrid& grid = p.grid;
  const int64_t rows = shape[0], c = shape[1];
  REQUIRE(g.span == c);
  REQUIRE(g.inner == 1);
  enum Kind { plain, far_shift, large_mean, constant };
  auto kind = [](int64_t f) { return static_cast<Kind>(f % 4); };
  DataGen gen(2024 + static_cast<uint64_t>(rows * c));
  std::vector<float> x(static_cast<size_t>(rows * c));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t f = 0; f < c; ++f) {
      const double z = gen.normal(1, 0.0, 1.0, RefDtype::f64)[0];
      const double v = kind(f) == constant    ? 3.25
                       : kind(f) == large_mean ? 1e4 + z
                       : kind(f) == far_shift  ? 0.3 + 0.01 * static_cast<double>(f)
                                               : 0.5 + z;
      x[static_cast<size_t>(r * c + f)] = static_cast<float>(v);
    }
  }
  // The far-shift features: one value, and 1000.3 more in the sampled rows of every block. The
  // rounding of (x - K)^2 is then the same for every row, so without the fallback M2 would be
  // off by that rounding times Q/M2 (~ rows/8).
  for (int64_t b = 0; b < grid.count(); ++b) {
    const bn::kernels::Block blk = grid.block(g, b);
    const int64_t n = blk.o1 - blk.o0, samples = std::min<int64_t>(8, n), step = n / samples;
    for (int64_t i = 0; i < samples; ++i) {
      for (int64_t f = blk.s0; f < blk.s1; ++f) {
        if (kind(f) == far_shift) x[static_cast<size_t>((blk.o0 + i * step) * c + f)] += 1000.3f;
      }
    }
  }
  const int64_t nan_feature = 5 % c, inf_feature = 6 % c;
  if (nonfinite) {
    x[static_cast<size_t>((rows / 2) * c + nan_feature)] = std::numeric_limits<float>::quiet_NaN();
    x[static_cast<size_t>((rows - 1) * c + inf_feature)] = std::numeric_limits<float>::infinity();
  }
  check_stats_exact(g, grid, x, [c](int64_t r, int64_t f, int64_t) { return r * c + f; },
                    [&](int64_t f) { return kind(f) == constant; }, nonfinite ? 2 : 0, GENERATE(false, true));
}

// The features-first statistics with the hint `cached` take each feature of a block in one
// pass of sums of x - K, K the mean of 8 values spread evenly over the feature's values in
// the block (value indices i*(n/8), row-major over its rows), and must fall back to the exact
// two passes (around the rough mean) where K is far off: as the features-last test above,
// per block against long double (far-shift features carry 1000.3 more at the sampled values:
// without the fallback M2 is off by ~3e-5, with the block's first value as the fallback's
// pivot the mean by ~2e-5), means of 1e4, constant features, NaN and infinity. Rows of 40
// (a SIMD tail), 49, 256 and 1000.
TEST_CASE("features-first statistics: far shifts, large means, constant and non-finite features", "[kernels]") {
  const std::vector<int64_t> shape = GENERATE(std::vector<int64_t>{3, 5, 40}, std::vector<int64_t>{64, 7, 49},
                                              std::vector<int64_t>{8, 6, 256}, std::vector<int64_t>{40, 9, 1000});
  const bool nonfinite = GENERATE(false, true);
  CAPTURE(describe_shape(shape), nonfinite);
  const std::vector<int32_t> axis{1};
  const bn::AxisPlan axes = bn::resolve_axes(axis, shape.data(), 3);
  const bn::ShapePlan p = bn::plan_shape(axes, shape.data(), 3);
  const bn::kernels::Geometry& g = p.geometry;
  const bn::BlockGrid& grid = p.grid;
  const int64_t rows = shape[0], c = shape[1], inner = shape[2];
  REQUIRE(g.span == c);
  REQUIRE(g.inner == inner);
  enum Kind { plain, far_shift, large_mean, constant };
  auto kind = [](int64_t f) { return static_cast<Kind>(f % 4); };
  auto at = [c, inner](int64_t r, int64_t f, int64_t i) { return (r * c + f) * inner + i; };
  DataGen gen(77 + static_cast<uint64_t>(rows * c * inner));
  std::vector<float> x(static_cast<size_t>(rows * c * inner));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t f = 0; f < c; ++f) {
      for (int64_t i = 0; i < inner; ++i) {
        const double z = gen.normal(1, 0.0, 1.0, RefDtype::f64)[0];
        const double v = kind(f) == constant    ? 3.25
                         : kind(f) == large_mean ? 1e4 + z
                         : kind(f) == far_shift  ? 0.3 + 0.01 * static_cast<double>(f)
                                                 : 0.5 + z;
        x[static_cast<size_t>(at(r, f, i))] = static_cast<float>(v);
      }
    }
  }
  int64_t far_blocks = 0;
  for (int64_t b = 0; b < grid.count(); ++b) {
    const bn::kernels::Block blk = grid.block(g, b);
    const int64_t n = (blk.o1 - blk.o0) * inner, samples = std::min<int64_t>(8, n);
    for (int64_t f = blk.s0; f < blk.s1; ++f) {
      if (kind(f) != far_shift) continue;
      ++far_blocks;
      for (int64_t j = 0; j < samples; ++j) {
        const int64_t e = n / samples * j;
        x[static_cast<size_t>(at(blk.o0 + e / inner, f, e % inner))] += 1000.3f;
      }
    }
  }
  REQUIRE(far_blocks > 0);
  if (nonfinite) {
    x[static_cast<size_t>(at(rows / 2, 0, inner / 3))] = std::numeric_limits<float>::quiet_NaN();
    x[static_cast<size_t>(at(rows - 1, 2 % c, inner - 1))] = std::numeric_limits<float>::infinity();
  }
  check_stats_exact(g, grid, x, at, [&](int64_t f) { return kind(f) == constant; }, nonfinite ? 2 : 0, true);
}

// Features-first statistics and backward sums add float vectors in runs of at most 8 per slot
// before widening them to double, the rest of each row (whole vectors and a masked tail) being
// one step with a vector per slot, so that short rows (49 values: 32x2048x7x7) need not flush
// at every row. Long features of short rows whose first value (the statistics' pivot) lies 1
// below the others, so that every float run adds deviations of one sign, and dy around 1: per
// feature, mean, M2, sum dy and sum dy*(x - c) against long double (runs never widened across
// rows measured errors 100-1000x larger).
TEST_CASE("features-first sums over many short rows stay exact to double rounding", "[kernels]") {
  const std::vector<int64_t> shape = GENERATE(std::vector<int64_t>{4096, 2, 49}, std::vector<int64_t>{1024, 3, 259},
                                              std::vector<int64_t>{8192, 1, 23});
  CAPTURE(describe_shape(shape));
  const int64_t rows = shape[0], c = shape[1], inner = shape[2];
  const std::vector<int32_t> axis{1};
  const bn::AxisPlan axes = bn::resolve_axes(axis, shape.data(), 3);
  const bn::kernels::Geometry g = bn::plan_shape(axes, shape.data(), 3).geometry;
  REQUIRE(g.inner == inner);
  const bn::kernels::Block all{0, rows, 0, c};  // one block: every row of every feature
  DataGen gen(99 + static_cast<uint64_t>(inner));
  const auto n = static_cast<size_t>(rows * c * inner);
  std::vector<float> x(n), dy(n);
  for (size_t i = 0; i < n; ++i) {
    x[i] = static_cast<float>(1000.0 + gen.uniform(-0.5, 0.5));
    dy[i] = static_cast<float>(1.0 + gen.uniform(-0.5, 0.5));
  }
  for (int64_t f = 0; f < c; ++f) x[static_cast<size_t>(f * inner)] = 999.0f;  // the pivot
  std::vector<float> center(static_cast<size_t>(c));
  std::vector<long double> want_mean(center.size()), want_m2(center.size()), want_sdy(center.size()),
      want_sxc(center.size());
  const auto count = static_cast<long double>(rows * inner);
  for (int64_t f = 0; f < c; ++f) {
    long double s = 0, q = 0, a = 0, b = 0;
    auto each = [&](auto fn) {
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < inner; ++i) fn(static_cast<size_t>((r * c + f) * inner + i));
      }
    };
    each([&](size_t e) { s += x[e]; });
    const long double m = s / count;
    each([&](size_t e) { q += (x[e] - m) * (x[e] - m); });
    center[static_cast<size_t>(f)] = static_cast<float>(m);
    const long double cf = center[static_cast<size_t>(f)];
    each([&](size_t e) {
      a += dy[e];
      b += dy[e] * (x[e] - cf);
    });
    want_mean[static_cast<size_t>(f)] = m;
    want_m2[static_cast<size_t>(f)] = q;
    want_sdy[static_cast<size_t>(f)] = a;
    want_sxc[static_cast<size_t>(f)] = b;
  }
  for (const char* isa : {"avx2", "avx512"}) {
    const auto* k = bn::kernels::kernels_for_isa<float>(isa);
    if (!k) continue;
    INFO("kernels " << isa);
    std::vector<double> mean(center.size()), m2(center.size()), sdy(center.size()), sxc(center.size());
    k->stats({g, x.data(), mean.data(), m2.data()}, all);
    k->backward_sums({g, x.data(), dy.data(), center.data(), sdy.data(), sxc.data()}, all);
    for (size_t f = 0; f < center.size(); ++f) {
      CAPTURE(f);
      // Measured here: mean within 6e-14, M2 within 7e-9 relative, sum dy within 4e-10 relative,
      // sum dy*(x - c) within 2e-5 (float products of values ~0.3); with runs never widened
      // across rows: mean off by up to 2e-7, M2 2e-6, sum dy 3e-7.
      CHECK(std::fabs(mean[f] - want_mean[f]) <= 1e-11L);
      CHECK(std::fabs(m2[f] - want_m2[f]) <= 5e-8L * want_m2[f]);
      CHECK(std::fabs(sdy[f] - want_sdy[f]) <= 5e-9L * want_sdy[f]);
      CHECK(std::fabs(sxc[f] - want_sxc[f]) <= 1e-4L);
    }
  }
}

// Streamed (non-temporal) outputs: the SIMD walks start each row with a masked vector up to
// the output's next 64-byte boundary, so that the rest is stored whole lines at a time
// (features-last rows of whole lines: one such head per block, the block walked flat). For
// every output alignment (0..15 floats past a boundary), planar rows, wide and narrow
// features-last rows, rows of whole lines (16, 48, 80, 144 features), with a tail: normalize (plain and with the residual + ReLU epilogue)
// and backward_dx (with dresidual) give bitwise the outputs of the same call without
// streaming, and write nothing outside their outputs.
TEST_CASE("streamed outputs at every alignment equal the unstreamed ones", "[kernels]") {
  struct Shape {
    std::vector<int64_t> dims;
    int32_t axis;
  };
  const Shape shape = GENERATE(Shape{{3, 5, 67}, 1}, Shape{{9, 131}, -1}, Shape{{40, 48}, -1}, Shape{{6, 16}, -1},
                               Shape{{7, 80}, -1}, Shape{{5, 2, 144}, -1}, Shape{{2, 3, 7, 5}, 1});
  const std::vector<int32_t> axes{shape.axis};
  const auto ndim = static_cast<int32_t>(shape.dims.size());
  const bn::AxisPlan ap = bn::resolve_axes(axes, shape.dims.data(), ndim);
  const bn::ShapePlan p = bn::plan_shape(ap, shape.dims.data(), ndim);
  const bn::kernels::Geometry& g = p.geometry;
  const auto n = static_cast<size_t>(p.elements), c = static_cast<size_t>(g.features);
  CAPTURE(describe_shape(shape.dims));
  DataGen gen(31 + n);
  auto floats = [&](size_t count, double lo, double hi) {
    const std::vector<double> v = gen.uniform_vector(count, lo, hi, RefDtype::f32);
    return std::vector<float>(v.begin(), v.end());
  };
  const std::vector<float> x = floats(n, -2, 2), dy = floats(n, -1, 1), r = floats(n, -1, 1);
  const std::vector<float> center = floats(c, -1, 1), scale = floats(c, -2, 2), shift = floats(c, -1, 1),
                           k_x = floats(c, -1, 1), k_c = floats(c, -1, 1);
  constexpr size_t kPad = 32;  // guard floats on both sides of every output
  for (const char* isa : {"avx2", "avx512"}) {
    const auto* k = bn::kernels::kernels_for_isa<float>(isa);
    if (!k) continue;
    INFO("kernels " << isa);
    for (size_t offset = 0; offset < 16; ++offset) {
      CAPTURE(offset);
      // Outputs at `offset` floats past a 64-byte boundary, inside guarded buffers.
      struct Out {
        std::vector<float> buf;
        float* at;
        explicit Out(size_t n, size_t offset) : buf(n + 2 * kPad + 16, -7.0f) {
          const auto base = reinterpret_cast<uintptr_t>(buf.data() + kPad);
          at = reinterpret_cast<float*>((base + 63) / 64 * 64) + offset;
        }
        bool guards_intact(size_t n) const {
          for (size_t i = 0; i < buf.size(); ++i) {
            const float* e = buf.data() + i;
            if ((e < at || e >= at + n) && buf[i] != -7.0f) return false;
          }
          return true;
        }
      };
      for (int variant = 0; variant < 3; ++variant) {
        Out plain(n, offset), streamed(n, offset), dres_plain(n, offset), dres_streamed(n, offset);
        for (int64_t b = 0; b < p.stream_grid.count(); ++b) {
          const bn::kernels::Block blk = p.stream_grid.block(g, b);
          for (bool stream : {false, true}) {
            float* out = stream ? streamed.at : plain.at;
            if (variant < 2) {
              bn::kernels::NormalizeArgs<float> a{g, x.data(), out, center.data(), scale.data(), shift.data()};
              if (variant == 1) {
                a.residual = r.data();
                a.relu = true;
              }
              a.stream = stream;
              k->normalize(a, blk);
            } else {
              bn::kernels::BackwardDxArgs<float> a{g, x.data(), dy.data(), out, center.data(), scale.data(),
                                                   k_x.data(), k_c.data()};
              a.dresidual = stream ? dres_streamed.at : dres_plain.at;
              a.stream = stream;
              k->backward_dx(a, blk);
            }
          }
        }
        INFO("variant " << variant);
        for (size_t e = 0; e < n; ++e) {
          if (std::memcmp(plain.at + e, streamed.at + e, 4) != 0) {
            FAIL_CHECK("element " << e << ": " << plain.at[e] << " vs " << streamed.at[e]);
            break;
          }
        }
        CHECK(std::memcmp(plain.at, streamed.at, n * sizeof(float)) == 0);
        CHECK(streamed.guards_intact(n));
        CHECK(plain.guards_intact(n));
        if (variant == 2) {
          CHECK(std::memcmp(dres_plain.at, dres_streamed.at, n * sizeof(float)) == 0);
          CHECK(dres_streamed.guards_intact(n));
        }
      }
    }
  }
}

// Outputs whose offset within a page lies a little past an input's: the wide features-last
// walks then run descending (4 KiB aliasing, see kAliasWindow in simd_kernels.inl). For output
// offsets 0 (ascending), 4..124 bytes past the inputs (descending), 128 (ascending), and just
// before them (ascending: an input just past an output), with and without streaming:
// normalize (plain; residual + ReLU) and backward_dx (with dresidual; ReLU gate from y) give
// bitwise the reference kernels' outputs and write nothing outside them. Rows of 131 and 300
// features (wide, tails of 3 and 12 lanes), 96 and 160 (wide rows of whole vectors: walked flat
// where the output is off its line) and 64 (narrow: ascending whatever the offsets, flat off
// its line); batches of four rows (walk_batched): 9 x 131 and 5 x 2051 in cache (a batch and
// rows left over, a tail), 6 x 1024 (rows of 4 KiB: row by row in cache), 7 x 2048 streamed
// (rows of 8 KiB on a line: batched, else row by row).
TEST_CASE("outputs just past their inputs in a page: every walk direction, same bits", "[kernels]") {
  const std::vector<int64_t> dims = GENERATE(std::vector<int64_t>{9, 131}, std::vector<int64_t>{5, 300},
                                             std::vector<int64_t>{7, 64}, std::vector<int64_t>{6, 96},
                                             std::vector<int64_t>{3, 160}, std::vector<int64_t>{6, 1024},
                                             std::vector<int64_t>{7, 2048}, std::vector<int64_t>{5, 2051});
  const std::vector<int32_t> axes{-1};
  const auto ndim = static_cast<int32_t>(dims.size());
  const bn::AxisPlan ap = bn::resolve_axes(axes, dims.data(), ndim);
  const bn::ShapePlan p = bn::plan_shape(ap, dims.data(), ndim);
  const bn::kernels::Geometry& g = p.geometry;
  const auto n = static_cast<size_t>(p.elements), c = static_cast<size_t>(g.features);
  CAPTURE(describe_shape(dims));
  DataGen gen(77 + n);
  auto floats = [&](size_t count, double lo, double hi) {
    const std::vector<double> v = gen.uniform_vector(count, lo, hi, RefDtype::f32);
    return std::vector<float>(v.begin(), v.end());
  };
  const std::vector<float> center = floats(c, -1, 1), scale = floats(c, -2, 2), shift = floats(c, -1, 1),
                           k_x = floats(c, -1, 1), k_c = floats(c, -1, 1);
  constexpr size_t kPage = 4096, kInputAt = 1024;  // inputs 1 KiB into their pages
  // A page-aligned buffer holding n floats at byte `at` of its first page, guards elsewhere.
  struct Paged {
    std::vector<float> buf;
    float* p;
    Paged(size_t n, size_t at) : buf(n + 3 * kPage / 4, -7.0f) {
      const auto base = (reinterpret_cast<uintptr_t>(buf.data()) + kPage - 1) / kPage * kPage;
      p = reinterpret_cast<float*>(base + at);
    }
    bool guards_intact(size_t n) const {
      for (size_t i = 0; i < buf.size(); ++i) {
        const float* e = buf.data() + i;
        if ((e < p || e >= p + n) && buf[i] != -7.0f) return false;
      }
      return true;
    }
  };
  Paged x(n, kInputAt), dy(n, kInputAt), r(n, kInputAt), gate_y(n, kInputAt);
  for (size_t i = 0; i < n; ++i) {
    x.p[i] = static_cast<float>(gen.uniform(-2, 2));
    dy.p[i] = static_cast<float>(gen.uniform(-1, 1));
    r.p[i] = static_cast<float>(gen.uniform(-1, 1));
    gate_y.p[i] = static_cast<float>(gen.uniform(-1, 1));
  }
  // variant 0: normalize; 1: + residual, ReLU; 2: backward_dx with dresidual and the gate
  auto run = [&](const bn::kernels::KernelTable<float>& k, int variant, bool stream, float* out, float* dres) {
    for (int64_t b = 0; b < p.stream_grid.count(); ++b) {
      const bn::kernels::Block blk = p.stream_grid.block(g, b);
      if (variant < 2) {
        bn::kernels::NormalizeArgs<float> a{g, x.p, out, center.data(), scale.data(), shift.data()};
        if (variant == 1) {
          a.residual = r.p;
          a.relu = true;
        }
        a.stream = stream;
        k.normalize(a, blk);
      } else {
        bn::kernels::BackwardDxArgs<float> a{g, x.p, dy.p, out, center.data(), scale.data(), k_x.data(), k_c.data()};
        a.gate.y = gate_y.p;
        a.dresidual = dres;
        a.stream = stream;
        k.backward_dx(a, blk);
      }
    }
  };
  for (int variant = 0; variant < 3; ++variant) {
    Paged want(n, 0), want_dres(n, 0);
    run(bn::kernels::reference<float>(), variant, false, want.p, want_dres.p);
    for (const char* isa : {"avx2", "avx512"}) {
      const auto* k = bn::kernels::kernels_for_isa<float>(isa);
      if (!k) continue;
      for (size_t past : {size_t{0}, size_t{4}, size_t{16}, size_t{64}, size_t{124}, size_t{128}, kPage - 64}) {
        for (bool stream : {false, true}) {
          INFO("kernels " << isa << ", variant " << variant << ", output " << past << " bytes past the inputs"
                          << (stream ? ", streamed" : ""));
          const size_t at = (kInputAt + past) % kPage;
          Paged out(n, at), dres(n, at);
          run(*k, variant, stream, out.p, dres.p);
          CHECK(std::memcmp(out.p, want.p, n * sizeof(float)) == 0);
          CHECK(out.guards_intact(n));
          if (variant == 2) {
            CHECK(std::memcmp(dres.p, want_dres.p, n * sizeof(float)) == 0);
            CHECK(dres.guards_intact(n));
          }
        }
      }
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
