// Scalar reference kernels (f32, f64, bf16, f16 from one template). Portable C++, no SIMD
// intrinsics: the fallback on any x86-64 and the oracle the SIMD kernels are tested against.
// 16-bit elements are widened to float on load (to_float) and the float result rounded once
// on store (from_compute), so a bf16/f16 kernel computes exactly what the float one does on
// the same values.
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

template <class T>
void stats_ref(const StatsArgs<T>& a, const Block& b) {
  const Geometry& g = a.geometry;
  int64_t f0, f1;
  block_features(g, b, f0, f1);
  const int64_t span_per_feature = g.span / g.features;  // exact: the span holds every feature equally often
  const double count = static_cast<double>((b.o1 - b.o0) * g.inner * span_per_feature);
  // Pass 1: block mean per feature.
  for (int64_t f = f0; f < f1; ++f) a.mean[f] = 0.0;
  for_each_row<T>(g, b, [&](int64_t base, int64_t f) {
    double s = 0.0;
    for (int64_t i = 0; i < g.inner; ++i) s += static_cast<double>(to_float(a.x[base + i]));
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
      const double d = static_cast<double>(to_float(a.x[base + i])) - m;
      s += d * d;
    }
    a.m2[f] += s;
  });
}

// a*b + c as the SIMD kernels' FMA computes it, without needing an FMA unit: for float the
// product is exact in double and the sum is rounded (almost always to the same float); for
// double, two roundings.
inline float fma_like(float a, float b, float c) {
  return static_cast<float>(static_cast<double>(a) * static_cast<double>(b) + static_cast<double>(c));
}
inline double fma_like(double a, double b, double c) { return a * b + c; }

template <class T>
void normalize_ref(const NormalizeArgs<T>& a, const Block& b) {
  using C = Compute<T>;
  for_each_row<T>(a.geometry, b, [&](int64_t base, int64_t f) {
    const C c = a.center[f], k = a.scale[f], t = a.shift[f];
    for (int64_t i = 0; i < a.geometry.inner; ++i) {
      C z = fma_like(to_float(a.x[base + i]) - c, k, t);
      if (a.residual) z += to_float(a.residual[base + i]);
      if (a.relu) z = z > C(0) ? z : C(0);
      a.y[base + i] = from_compute<T>(z);
    }
  });
}

// dy where the forward's ReLU was open (see Gate), element e of feature f.
template <class T>
inline Compute<T> gated(const Gate<T>& g, const T* x, const T* dy, int64_t e, int64_t f) {
  using C = Compute<T>;
  const C d = to_float(dy[e]);
  if (g.y) return to_float(g.y[e]) > C(0) ? d : C(0);
  if (g.z_center) {
    const C z = fma_like(to_float(x[e]) - g.z_center[f], g.z_scale[f], g.z_shift[f]);
    return z > relu_threshold<T>() ? d : C(0);
  }
  return d;
}

template <class T>
void backward_sums_ref(const BackwardSumsArgs<T>& a, const Block& b) {
  int64_t f0, f1;
  block_features(a.geometry, b, f0, f1);
  for (int64_t f = f0; f < f1; ++f) {
    a.sum_dy[f] = 0.0;
    a.sum_dyxc[f] = 0.0;
  }
  for_each_row<T>(a.geometry, b, [&](int64_t base, int64_t f) {
    const Compute<T> c = a.center[f];
    double sdy = 0.0, sdx = 0.0;
    for (int64_t i = 0; i < a.geometry.inner; ++i) {
      const double dy = static_cast<double>(gated(a.gate, a.x, a.dy, base + i, f));
      sdy += dy;
      sdx += dy * static_cast<double>(to_float(a.x[base + i]) - c);
    }
    a.sum_dy[f] += sdy;
    a.sum_dyxc[f] += sdx;
  });
}

template <class T>
void backward_dx_ref(const BackwardDxArgs<T>& a, const Block& b) {
  using C = Compute<T>;
  for_each_row<T>(a.geometry, b, [&](int64_t base, int64_t f) {
    const C c = a.center[f], kdy = a.k_dy[f], kx = a.k_x[f], kc = a.k_c[f];
    for (int64_t i = 0; i < a.geometry.inner; ++i) {
      const C dy = gated(a.gate, a.x, a.dy, base + i, f);
      if (a.dx) a.dx[base + i] = from_compute<T>(fma_like(kdy, dy, fma_like(kx, to_float(a.x[base + i]) - c, kc)));
      if (a.dresidual) a.dresidual[base + i] = from_compute<T>(dy);
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

const KernelTable<bf16>& reference_bf16() {
  static const KernelTable<bf16> table{"ref", &stats_ref<bf16>, &normalize_ref<bf16>, &backward_sums_ref<bf16>,
                                       &backward_dx_ref<bf16>};
  return table;
}

const KernelTable<f16>& reference_f16() {
  static const KernelTable<f16> table{"ref", &stats_ref<f16>, &normalize_ref<f16>, &backward_sums_ref<f16>,
                                      &backward_dx_ref<f16>};
  return table;
}

}  // namespace bn::kernels
