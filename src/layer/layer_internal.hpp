// Internal to the layer's translation units (layer*.cpp): the access guard, the per-call
// constants of each element type, and small helpers shared by the forward, backward and
// ghost-batch passes.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/kernels.hpp"
#include "layer/error.hpp"
#include "layer/layer.hpp"
#include "parallel/machine.hpp"

namespace bn {
namespace detail {

constexpr int64_t kFeaturesPerTask = 256;  // per-feature work is split in chunks of this size
// Outputs are written with non-temporal stores when the call's data (every tensor it reads
// or writes) cannot stay in the last-level cache between calls, and every row starts on the
// same 64-byte phase (mixing streaming and ordinary stores on one cache line, rows of 49
// floats, measured much slower than either). Measured with tensors of 4 to 16 MB and a 32 MB
// L3: on one thread ordinary stores are as fast or faster up to a working set of ~0.6 x L3,
// streaming ones up to 1.5x faster beyond; on two threads ordinary stores are up to 2.3x
// faster up to ~0.75 x L3 (cache hits outrun the streaming stores' memory bandwidth), and
// streaming ones up to 1.25x faster at 1 x L3.
constexpr int64_t kStreamBytesUnknownCache = int64_t{16} << 20;

template <class T>
inline bool stream_output(const ShapePlan& plan, int tensors, int32_t threads) {
  const kernels::Geometry& g = plan.geometry;
  if (!g.identity()) return false;
  const int64_t llc = parallel::last_level_cache_bytes();
  const int64_t limit = llc <= 0 ? kStreamBytesUnknownCache : threads > 1 ? llc / 4 * 3 : llc / 8 * 5;
  if (plan.elements * static_cast<int64_t>(sizeof(T)) * tensors <= limit) return false;
  const int64_t row_bytes = (g.inner > 1 ? g.inner : g.span) * static_cast<int64_t>(sizeof(T));
  return row_bytes % 64 == 0;
}

// The statistics kernels' hint StatsArgs::cached: x fits in half the last-level cache, so
// that a call that follows the one which wrote x (or an earlier call on it) reads it from
// cache; larger tensors are read from memory, where the features-first statistics' one pass
// of shifted sums measured 4-7 % slower than two passes (32x512x28x28).
template <class T>
inline bool input_cached(const ShapePlan& plan) {
  const int64_t llc = parallel::last_level_cache_bytes();
  const int64_t cache = llc > 0 ? llc : kStreamBytesUnknownCache;
  return plan.elements * static_cast<int64_t>(sizeof(T)) <= cache / 2;
}

// Backward of features-first (planar) tensors whose x and dy (`reread_bytes` per element)
// are far larger than the last-level cache: the grid's feature columns in groups of about a
// quarter of that cache, each group's sums and then its dx right away, so that the second read
// of x and dy comes from the cache and not from memory. Returns the columns per group; 0 for
// one pass of sums over every block and then one dx pass in memory order. Measured (x and dy
// 2 to 6 times a 32 MB L3): 32x256x56x56 10-23 % faster, 32x512x28x28 ~5 %; at 1.6 times
// (32x64x56x56) and below, grouping was 4-16 % slower. A training forward would gain as
// little, and under the non-finite policy REFUSE must not write y before every statistic is
// known, so it keeps the two passes.
inline int64_t cached_group_columns(const ShapePlan& plan, int64_t reread_bytes) {
  const kernels::Geometry& g = plan.geometry;
  const BlockGrid& grid = plan.grid;
  if (!g.identity() || g.inner < 16 || grid.o_blocks <= 1 || grid.s_blocks <= 1) return 0;
  const int64_t llc = parallel::last_level_cache_bytes();
  const int64_t cache = llc > 0 ? llc : kStreamBytesUnknownCache;
  // In double: elements * reread_bytes may exceed 2^63 for a tensor of 2^62 bytes.
  const double column = static_cast<double>(g.outer * grid.s_chunk * g.inner) * static_cast<double>(reread_bytes);
  if (static_cast<double>(plan.elements) * static_cast<double>(reread_bytes) <= 2.0 * static_cast<double>(cache)) {
    return 0;
  }
  return std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(cache) / 4.0 / column));
}

// Planar tensors with long rows whose one feature's slice (all its rows of the `reread_bytes`
// per element read twice: x and dy in a backward) fits in a core's L2: a task per run of
// features walks its blocks' sums, its constants and then its dx in reverse block-row order,
// so that the second read of x and dy comes from L2 (the rows read last come back first).
// Same blocks and the same addition order per feature as the pass over the whole grid: the
// results are bitwise the same. Returns the features per task; 0 for the other paths. Rows
// shorter than 1 KiB are left to the whole-grid passes, whose flat walks serve them better.
inline int64_t cached_feature_run(const ShapePlan& plan, int64_t element_bytes, int64_t reread_bytes) {
  const kernels::Geometry& g = plan.geometry;
  const BlockGrid& grid = plan.grid;
  if (!g.identity() || g.inner * element_bytes < 1024 || grid.o_blocks <= 1 || plan.elements == 0) return 0;
  const int64_t l2 = parallel::l2_cache_bytes();
  const double slice = static_cast<double>(g.outer) * static_cast<double>(g.inner) * static_cast<double>(reread_bytes);
  if (l2 <= 0 || slice > static_cast<double>(l2)) return 0;
  // Several features per task where slices are small, but at least 16 tasks.
  const int64_t fit = static_cast<int64_t>(static_cast<double>(l2) / 2.0 / slice);
  return std::max<int64_t>(1, std::min(fit, g.span / 16));
}

// The tensors a backward touches: x and dy, dx and dresidual where wanted, y for the ReLU gate.
template <class T>
inline int backward_tensors(const T* dx, const T* dresidual, const kernels::Gate<T>& gate) {
  return 2 + (dx ? 1 : 0) + (dresidual ? 1 : 0) + (gate.y ? 1 : 0);
}

// max(0, v) that keeps NaN (std::max(0.0, NaN) is 0): a variance from NaN data stays NaN, as
// in Keras, so that the non-finite policy sees it and PROPAGATE propagates it.
inline double nonnegative(double v) { return std::isnan(v) ? v : std::max(0.0, v); }

// Chan's merge of per-block moments (means pa, M2 pb; block row bo at pa + bo * stride) in
// block order, for features [f0, f1) into mean, m2; the same operations, in the same order, as
// merging feature by feature. Every block of a grid row
// holds the same count for each of its features, so the weights
//   n' = n + n_b,  mean += (mean_b - mean) * n_b/n',  M2 += M2_b + delta^2 * n*n_b/n'
// are computed once per block row and the loop over features is contiguous.
inline void merge_block_moments(const BlockGrid& grid, const kernels::Geometry& g, const double* pa,
                                const double* pb, int64_t stride, int64_t f0, int64_t f1, double* mean,
                                double* m2) {
  double n = 0;
  for (int64_t bo = 0; bo < grid.o_blocks; ++bo) {
    const double count = grid.count_per_feature(g, bo);
    if (count <= 0) continue;
    const double* a = pa + bo * stride;
    const double* b = pb + bo * stride;
    if (n <= 0) {
      std::copy(a + f0, a + f1, mean + f0);
      std::copy(b + f0, b + f1, m2 + f0);
      n = count;
      continue;
    }
    const double total = n + count;
    const double wb = count / total, wab = n * count / total;
    for (int64_t f = f0; f < f1; ++f) {
      const double delta = a[f] - mean[f];
      mean[f] += delta * wb;
      m2[f] += b[f] + delta * delta * wab;
    }
    n = total;
  }
  if (n <= 0) {
    std::fill(mean + f0, mean + f1, 0.0);
    std::fill(m2 + f0, m2 + f1, 0.0);
  }
}

inline std::string shape_text(const int64_t* shape, int32_t ndim) {
  std::string s = "(";
  for (int32_t i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (ndim == 1 ? ",)" : ")");
}

// Calls fn with a value of the kernels' element type E for `dtype`: double for f64, the
// 16-bit tags for bf16 and f16, float for f32. Parameters, statistics and the per-feature
// kernel constants are double for f64 and float otherwise (kernels::Compute<E>).
template <class Fn>
void with_element(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f64: return fn(double{});
    case DType::bf16: return fn(kernels::bf16{});
    case DType::f16: return fn(kernels::f16{});
    case DType::f32: break;
  }
  fn(float{});
}

// The normalization y = (x - mean)*k + t, folded for kernels computing
// fma(x - center, k1, k2) in T (the compute type): center = T(mean) makes x - center exact
// near the mean (Sterbenz), and the shift absorbs the rounding of the mean. 16-bit elements
// are exact in float, so this holds for them too.
template <class T>
void fold_normalize(PerFeature<T>& out, size_t f, double mean, double k, double t) {
  const T center = static_cast<T>(mean);
  out.center[f] = center;
  out.k1[f] = static_cast<T>(k);
  out.k2[f] = static_cast<T>(t - (mean - static_cast<double>(center)) * k);
}

// The member of the kernels' element type T.
template <class T>
PerFeature<T>& of_type(PerFeature<float>& f32, PerFeature<double>& f64) {
  if constexpr (std::is_same_v<T, float>) {
    return f32;
  } else {
    return f64;
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Access guard: many concurrent readers (inference forwards, get_param) or one writer.
// Misuse is reported, never raced.
class Layer::Access {
 public:
  Access(std::atomic<int32_t>& users, bool exclusive) : users_(users), exclusive_(exclusive) {
    if (exclusive) {
      int32_t expected = 0;
      if (!users.compare_exchange_strong(expected, -1, std::memory_order_acquire)) busy();
      return;
    }
    int32_t v = users.load(std::memory_order_relaxed);
    do {
      if (v < 0) busy();
    } while (!users.compare_exchange_weak(v, v + 1, std::memory_order_acquire));
  }
  ~Access() {
    if (exclusive_) {
      users_.store(0, std::memory_order_release);
    } else {
      users_.fetch_sub(1, std::memory_order_release);
    }
  }
  Access(const Access&) = delete;
  Access& operator=(const Access&) = delete;

 private:
  [[noreturn]] static void busy() {
    fail(Status::state,
         "the layer is in use by another thread; only inference-mode bn_forward and bn_get_param may run "
         "concurrently on one layer");
  }
  std::atomic<int32_t>& users_;
  bool exclusive_;
};

template <class T>
inline PerFeature<T>& Layer::inference_constants() {
  if constexpr (std::is_same_v<T, float>) return infer_f32_; else return infer_f64_;
}
template <class T>
inline const PerFeature<T>& Layer::inference_constants() const {
  if constexpr (std::is_same_v<T, float>) return infer_f32_; else return infer_f64_;
}
template <class T>
inline PerFeature<T>& Layer::call_constants() {
  if constexpr (std::is_same_v<T, float>) return call_f32_; else return call_f64_;
}
template <class T>
inline PerFeature<T>& Layer::relu_constants() {
  if constexpr (std::is_same_v<T, float>) return relu_f32_; else return relu_f64_;
}

}  // namespace bn
