// Kernel interface: pure functions over one block of a tensor.
//
// Every layout reaches the kernels as a 3-D view [outer O, span S, inner I] of the
// row-major tensor: `outer` is the product of the dims before the first kept axis,
// `inner` the product of the dims after the last kept axis, `span` everything in
// between. Inside the span the feature index of position s is
//     f(s) = sum_d idx_d(s) * fstride_d        (fstride_d = 0 for a reduced dim),
// so a single kept group (NCHW, NHWC, dense, NCL, contiguous multi-axis) has one span
// dim with fstride 1 and f(s) = s, while kept axes separated by reduced ones
// (e.g. axes {1,3} of NHWC) keep the reduced dims in the span with fstride 0.
//
// Kernels take raw pointers and one argument struct; they never allocate, lock,
// throw or spawn threads. A block is a fixed rectangle [o0,o1) x [s0,s1) x [0,I)
// chosen from the shape alone, so results never depend on the thread count.
//
// Element types E: float, double, and the 16-bit bf16 and f16 (half.hpp). Kernels compute in
// Compute<E> (double for double, float otherwise): 16-bit elements are widened to float on
// load and rounded once on store, and the per-feature constants are Compute<E>.
#pragma once

#include <cstdint>

#include "kernels/half.hpp"

namespace bn::kernels {

constexpr int kMaxSpanDims = 8;

struct Geometry {
  int64_t outer = 0;
  int64_t span = 0;
  int64_t inner = 0;
  int64_t features = 0;   // C
  int32_t span_dims = 1;  // dims of the span after merging neighbours of one kind
  int64_t span_sizes[kMaxSpanDims] = {};
  int64_t span_fstrides[kMaxSpanDims] = {};
  bool identity() const { return span_dims == 1 && span_fstrides[0] == 1; }
};

struct Block {
  int64_t o0, o1, s0, s1;
};

// Features a block touches: [s0, s1) for a single kept group; all of them otherwise (a block
// then covers the whole span).
inline void block_features(const Geometry& g, const Block& b, int64_t& f0, int64_t& f1) {
  f0 = g.identity() ? b.s0 : 0;
  f1 = g.identity() ? b.s1 : g.features;
}

// Walks span positions s0, s0+1, ... and yields the feature index of each.
class SpanCursor {
 public:
  SpanCursor(const Geometry& g, int64_t s) : g_(g), feature_(0) {
    for (int d = g.span_dims - 1; d >= 0; --d) {
      idx_[d] = s % g.span_sizes[d];
      s /= g.span_sizes[d];
      feature_ += idx_[d] * g.span_fstrides[d];
    }
  }
  int64_t feature() const { return feature_; }
  void next() {
    for (int d = g_.span_dims - 1; d >= 0; --d) {
      feature_ += g_.span_fstrides[d];
      if (++idx_[d] < g_.span_sizes[d]) return;
      feature_ -= idx_[d] * g_.span_fstrides[d];
      idx_[d] = 0;
    }
  }

 private:
  const Geometry& g_;
  int64_t idx_[kMaxSpanDims] = {};
  int64_t feature_;
};

// Statistics of one block, written to this block's partial rows (indexed by feature):
// mean[f] and m2[f] = sum (x - mean[f])^2 over the block's elements of feature f.
// Two passes over the block (it is cache-sized), accumulated in double.
template <class T>
struct StatsArgs {
  Geometry geometry;
  const T* x;
  double* mean;  // partial row of this block, C entries
  double* m2;
  // Hint: x comes from cache (features first: each feature of a block in one pass of shifted
  // sums, falling back to two exact passes where the shift is far off; else two passes, the
  // second from cache, which measured faster on data streamed from memory).
  bool cached = false;
};

// y = fma(x - center[f], scale[f], shift[f]), computed in Compute<T>. The layer folds the
// transform so that this is exact to a few ulps even for large means: center is the
// batch mean rounded to Compute<T> (so x - center is exact by Sterbenz' lemma near the mean),
// and shift absorbs the rounding of the mean: shift = beta - (mean - center) * scale.
// Being elementwise with one FMA, every ISA produces the same bits.
//
// Epilogue (optional): y = max(z + residual, 0), with z the normalized value; the residual is
// added when non-null, the ReLU applied when `relu`.
template <class T>
struct NormalizeArgs {
  Geometry geometry;
  const T* x;
  T* y;
  const Compute<T>* center;
  const Compute<T>* scale;
  const Compute<T>* shift;
  const T* residual = nullptr;
  bool relu = false;
  bool stream = false;  // hint: y is too large to stay in cache (non-temporal stores)
};

// The ReLU mask of a forward with the epilogue, for the backward: the gradient that reaches
// the normalization is dy where the ReLU was open, 0 elsewhere. The mask is read from the
// forward's output (y > 0) when `y` is set, else recomputed from x with the forward's folded
// transform (z = fma(x - z_center, z_scale, z_shift), open where the forward's output, z
// rounded to T, is > 0: z > relu_threshold<T>(), bitwise the forward's decision) when
// z_center is set; no mask (no ReLU) when neither is.
template <class T>
struct Gate {
  const T* y = nullptr;
  const Compute<T>* z_center = nullptr;
  const Compute<T>* z_scale = nullptr;
  const Compute<T>* z_shift = nullptr;
};

// Backward reductions of one block, accumulated in double:
//   sum_dy[f] = sum dy,   sum_dyxc[f] = sum dy * (x - center[f])   (x - center in Compute<T>).
template <class T>
struct BackwardSumsArgs {
  Geometry geometry;
  const T* x;
  const T* dy;
  const Compute<T>* center;
  double* sum_dy;  // partial row of this block
  double* sum_dyxc;
  Gate<T> gate = {};  // dy means the gated dy throughout when a mask is set
};

// dx = fma(k_dy[f], dy, fma(k_x[f], x - center[f], k_c[f])), computed in Compute<T>
// (see layer.cpp for the derivation and the folding of the centre's rounding).
template <class T>
struct BackwardDxArgs {
  Geometry geometry;
  const T* x;
  const T* dy;
  T* dx;
  const Compute<T>* center;
  const Compute<T>* k_dy;
  const Compute<T>* k_x;
  const Compute<T>* k_c;
  Gate<T> gate = {};
  T* dresidual = nullptr;  // when set: the gated dy (the residual's gradient); dx may be null then
  bool stream = false;     // hint: dx is too large to stay in cache (non-temporal stores)
};

template <class T>
struct KernelTable {
  const char* isa;
  void (*stats)(const StatsArgs<T>&, const Block&);
  void (*normalize)(const NormalizeArgs<T>&, const Block&);
  void (*backward_sums)(const BackwardSumsArgs<T>&, const Block&);
  void (*backward_dx)(const BackwardDxArgs<T>&, const Block&);
};

// The scalar reference kernels: always present; fallback and test oracle.
const KernelTable<float>& reference_f32();
const KernelTable<double>& reference_f64();
const KernelTable<bf16>& reference_bf16();
const KernelTable<f16>& reference_f16();
template <class T>
const KernelTable<T>& reference() {
  if constexpr (std::is_same_v<T, double>) {
    return reference_f64();
  } else if constexpr (std::is_same_v<T, bf16>) {
    return reference_bf16();
  } else if constexpr (std::is_same_v<T, f16>) {
    return reference_f16();
  } else {
    return reference_f32();
  }
}
// The tables of one ISA by name ("ref", "avx2", "avx512"); nullptr where this CPU lacks the
// ISA. Lets the tests run every table the machine can execute. Defined for float, bf16, f16.
template <class T>
const KernelTable<T>* kernels_for_isa(const char* isa);
inline const KernelTable<float>* kernels_for_isa_f32(const char* isa) { return kernels_for_isa<float>(isa); }

// The kernels chosen once for this CPU (dispatch.cpp): the widest ISA the CPU has, or the
// one named by the environment variable BN_ISA (ref, avx2, avx512) when the CPU has it.
template <class T>
const KernelTable<T>& selected();

}  // namespace bn::kernels
