// Scalar reference kernels (f32 and f64 from one template). Portable C++, no SIMD
// intrinsics: the fallback on any x86-64 and the oracle the SIMD kernels are tested against.
#include "kernels/kernels.hpp"

namespace bn::kernels {
namespace {

template <class T, class Visit>
inline void for_each_row(const Geometry& g, const Block& b, Visit&& visit) {
  for (int64_t o = b.o0; o < b.o1; ++o) {
    SpanCursor cursor(g, b.s0);
    for (int64_t s = b.s0; s < b.s1; ++s, cursor.next()) {
      visit((o * g.span + s) * g.inner, cursor.feature());
    }
  }
}

// Features a block touches: [s0, s1) for a single kept group, all of them otherwise
// (a block then covers the whole span).
inline void feature_range(const Geometry& g, const Block& b, int64_t& f0, int64_t& f1) {
  if (g.identity()) {
    f0 = b.s0;
    f1 = b.s1;
  } else {
    f0 = 0;
    f1 = g.features;
  }
}

template <class T>
void stats_ref(const StatsArgs<T>& a, const Block& b) {
  const Geometry& g = a.geometry;
  int64_t f0, f1;
  feature_range(g, b, f0, f1);
  const int64_t span_per_feature = g.span / g.features;  // exact: the span holds every feature equally often
  const double count = static_cast<double>((b.o1 - b.o0) * g.inner * span_per_feature);
  // Pass 1: block mean per feature.
  for (int64_t f = f0; f < f1; ++f) a.mean[f] = 0.0;
  for_each_row<T>(g, b, [&](int64_t base, int64_t f) {
    double s = 0.0;
    for (int64_t i = 0; i < g.inner; ++i) s += static_cast<double>(a.x[base + i]);
    a.mean[f] += s;
  });
  for (int64_t f = f0; f < f1; ++f) {
    a.mean[f] /= count;
    a.m2[f] = 0.0;
  }
  // Pass 2: centred sum of squares (the block is still in cache).
  for_each_row<T>(g, b, [&](int64_t base, int64_t f) {
    const double m = a.mean[f];
    double s = 0.0;
    for (int64_t i = 0; i < g.inner; ++i) {
      const double d = static_cast<double>(a.x[base + i]) - m;
      s += d * d;
    }
    a.m2[f] += s;
  });
}

template <class T>
void normalize_ref(const NormalizeArgs<T>& a, const Block& b) {
  for_each_row<T>(a.geometry, b, [&](int64_t base, int64_t f) {
    const double c = a.center[f], k = a.scale[f], t = a.shift[f];
    for (int64_t i = 0; i < a.geometry.inner; ++i) {
      a.y[base + i] = static_cast<T>((static_cast<double>(a.x[base + i]) - c) * k + t);
    }
  });
}

template <class T>
void backward_sums_ref(const BackwardSumsArgs<T>& a, const Block& b) {
  int64_t f0, f1;
  feature_range(a.geometry, b, f0, f1);
  for (int64_t f = f0; f < f1; ++f) {
    a.sum_dy[f] = 0.0;
    a.sum_dyxc[f] = 0.0;
  }
  for_each_row<T>(a.geometry, b, [&](int64_t base, int64_t f) {
    const double c = a.center[f];
    double sdy = 0.0, sdx = 0.0;
    for (int64_t i = 0; i < a.geometry.inner; ++i) {
      const double dy = static_cast<double>(a.dy[base + i]);
      sdy += dy;
      sdx += dy * (static_cast<double>(a.x[base + i]) - c);
    }
    a.sum_dy[f] += sdy;
    a.sum_dyxc[f] += sdx;
  });
}

template <class T>
void backward_dx_ref(const BackwardDxArgs<T>& a, const Block& b) {
  for_each_row<T>(a.geometry, b, [&](int64_t base, int64_t f) {
    const double c = a.center[f], kdy = a.k_dy[f], kx = a.k_x[f], kc = a.k_c[f];
    for (int64_t i = 0; i < a.geometry.inner; ++i) {
      const double dy = static_cast<double>(a.dy[base + i]);
      const double xc = static_cast<double>(a.x[base + i]) - c;
      a.dx[base + i] = static_cast<T>(kdy * dy + kx * xc + kc);
    }
  });
}

}  // namespace

const KernelTable<float>& reference_f32() {
  static const KernelTable<float> table{"ref", &stats_ref<float>, &normalize_ref<float>,
                                        &backward_sums_ref<float>, &backward_dx_ref<float>};
  return table;
}

const KernelTable<double>& reference_f64() {
  static const KernelTable<double> table{"ref", &stats_ref<double>, &normalize_ref<double>,
                                         &backward_sums_ref<double>, &backward_dx_ref<double>};
  return table;
}

}  // namespace bn::kernels
