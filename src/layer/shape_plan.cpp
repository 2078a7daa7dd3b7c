#include "layer/shape_plan.hpp"

#include <algorithm>
#include <limits>
#include <string>

#include "layer/config.hpp"
#include "layer/error.hpp"

namespace bn {
namespace {

// Blocks hold about this many elements (a cache-resident slice for the two-pass
// statistics) and every partial summarizes at least kMinPerPartial elements, which
// bounds the partial storage to a small fraction of the tensor.
constexpr int64_t kBlockTarget = int64_t{1} << 15;
constexpr int64_t kMinPerPartial = 256;
// Small features-first tensors (at most kColumnTensor elements) whose per-feature slice (all
// rows of one feature) holds at most kColumnBudget elements get column blocks: a block holds
// every row of its features, so the training forward and the backward finish a block while it
// is in cache, in one task. Larger tensors are faster in two passes of contiguous memory
// (measured: column blocks stride across the tensor, which the prefetchers follow badly).
constexpr int64_t kColumnBudget = int64_t{1} << 12;
constexpr int64_t kColumnTensor = int64_t{1} << 19;
constexpr int64_t kMinPlanarInner = 16;
// Features-last layouts: blocks of whole rows of up to kMaxRowBlock features, at least
// kMinRowsInterleaved rows (so the partials stay at most 1/16 of x in bytes).
constexpr int64_t kMaxRowBlock = int64_t{1} << 14;
constexpr int64_t kMinRowsInterleaved = 64;
// Large features-last tensors (at least kLargeInterleaved elements, read from memory in any
// case): blocks of about kLargeRowBlockTarget elements. The statistics and backward kernels
// read them in one pass, so a block need not fit in L1; larger blocks mean fewer partial rows
// to write and merge (measured: the merge of 64-row blocks' partials, 3.3 MB for
// 32x28x28x512, was 5 % of a training forward).
constexpr int64_t kLargeInterleaved = int64_t{1} << 20;
constexpr int64_t kLargeRowBlockTarget = int64_t{1} << 17;

std::string shape_text(const int64_t* shape, int32_t ndim) {
  std::string s = "(";
  for (int32_t i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (ndim == 1 ? ",)" : ")");
}

void check_rank(int32_t ndim) {
  if (ndim < 1 || ndim > kMaxRank) {
    fail(Status::shape, "ndim=" + std::to_string(ndim) + " but the rank must be 1 to " +
                            std::to_string(kMaxRank));
  }
}

void check_sizes(const int64_t* shape, int32_t ndim, const char* name) {
  for (int32_t i = 0; i < ndim; ++i) {
    if (shape[i] < 0) {
      fail(Status::shape, std::string(name) + "[" + std::to_string(i) + "]=" + std::to_string(shape[i]) +
                              " is negative in shape " + shape_text(shape, ndim));
    }
  }
}

}  // namespace

int64_t element_count(const int64_t* shape, int32_t ndim, int64_t element_bytes) {
  const int64_t limit = std::numeric_limits<int64_t>::max() / element_bytes;
  int64_t n = 1;
  bool empty = false;
  for (int32_t i = 0; i < ndim; ++i) {
    if (shape[i] == 0) {
      empty = true;
      continue;
    }
    if (n > limit / shape[i]) {
      const std::string what = element_bytes == 1 ? " has more than 2^63-1 elements"
                                                  : " of " + std::to_string(element_bytes) +
                                                        "-byte elements needs more than 2^63-1 bytes";
      fail(Status::shape, "shape " + shape_text(shape, ndim) + what + " (counting its non-zero sizes)");
    }
    n *= shape[i];
  }
  return empty ? 0 : n;
}

AxisPlan resolve_axes(const std::vector<int32_t>& axes, const int64_t* shape, int32_t ndim) {
  check_rank(ndim);
  check_sizes(shape, ndim, "input_shape");
  element_count(shape, ndim);
  AxisPlan plan;
  plan.rank = ndim;
  plan.kept.assign(ndim, false);
  plan.kept_sizes.assign(ndim, 0);
  if (axes.empty()) fail(Status::invalid_argument, "axes is empty; at least one axis is required");
  for (int32_t a : axes) {
    if (a < -ndim || a >= ndim) {
      fail(Status::invalid_argument, "axis " + std::to_string(a) + " is out of range for an input of rank " +
                                         std::to_string(ndim) + " (expected -" + std::to_string(ndim) +
                                         " to " + std::to_string(ndim - 1) + ")");
    }
    const int32_t r = a < 0 ? a + ndim : a;
    if (plan.kept[r]) {
      fail(Status::invalid_argument, "axis " + std::to_string(a) + " repeats axis " + std::to_string(r) +
                                         " for an input of rank " + std::to_string(ndim));
    }
    plan.kept[r] = true;
  }
  plan.features = 1;
  for (int32_t d = 0; d < ndim; ++d) {
    if (!plan.kept[d]) continue;
    if (shape[d] < 1) {
      fail(Status::shape, "input_shape[" + std::to_string(d) + "]=" + std::to_string(shape[d]) +
                              " is a normalized axis and must be at least 1");
    }
    if (plan.features > std::numeric_limits<int32_t>::max() / shape[d]) {
      fail(Status::shape, "the normalized axes of input_shape " + shape_text(shape, ndim) +
                              " hold more than 2^31-1 features");
    }
    plan.features *= shape[d];
    plan.kept_sizes[d] = shape[d];
  }
  return plan;
}

void check_shape(const AxisPlan& axes, const int64_t* shape, int32_t ndim) {
  check_rank(ndim);
  if (ndim != axes.rank) {
    fail(Status::shape, "ndim=" + std::to_string(ndim) + " but the layer was built for rank " +
                            std::to_string(axes.rank));
  }
  check_sizes(shape, ndim, "shape");
  for (int32_t d = 0; d < ndim; ++d) {
    if (axes.kept[d] && shape[d] != axes.kept_sizes[d]) {
      fail(Status::shape, "shape[" + std::to_string(d) + "]=" + std::to_string(shape[d]) +
                              " but the layer was built for " + std::to_string(axes.kept_sizes[d]) +
                              " on this normalized axis");
    }
  }
  element_count(shape, ndim, axes.element_bytes);
}

ShapePlan plan_shape(const AxisPlan& axes, const int64_t* shape, int32_t ndim) {
  check_shape(axes, shape, ndim);
  ShapePlan p;
  p.ndim = ndim;
  for (int32_t d = 0; d < ndim; ++d) p.shape[d] = shape[d];
  p.elements = element_count(shape, ndim);
  p.per_feature = p.elements / axes.features;

  int32_t first = 0, last = ndim - 1;
  while (!axes.kept[first]) ++first;
  while (!axes.kept[last]) --last;
  kernels::Geometry& g = p.geometry;
  g.features = axes.features;
  g.outer = 1;
  g.inner = 1;
  for (int32_t d = 0; d < first; ++d) g.outer *= shape[d];
  for (int32_t d = last + 1; d < ndim; ++d) g.inner *= shape[d];
  // Span dims, neighbours of one kind merged; feature strides row-major over kept dims.
  g.span = 1;
  g.span_dims = 0;
  int64_t fstride = 1;
  for (int32_t d = last; d >= first; --d) {
    const bool kept = axes.kept[d];
    const int64_t size = shape[d];
    g.span *= size;
    const bool merge = g.span_dims > 0 && (g.span_fstrides[0] != 0) == kept;
    if (merge) {
      g.span_sizes[0] *= size;
    } else {
      // Insert a new dim at the front (we walk from the last dim backwards).
      for (int i = g.span_dims; i > 0; --i) {
        g.span_sizes[i] = g.span_sizes[i - 1];
        g.span_fstrides[i] = g.span_fstrides[i - 1];
      }
      g.span_sizes[0] = size;
      g.span_fstrides[0] = kept ? fstride : 0;
      ++g.span_dims;
    }
    if (kept) fstride *= size;
  }

  BlockGrid& grid = p.grid;
  if (p.elements == 0) return p;  // nothing to compute; o_blocks = 0
  const int64_t inner = g.inner;
  const int64_t o_min = std::max<int64_t>(1, (kMinPerPartial + inner - 1) / inner);
  if (g.identity() && inner >= kMinPlanarInner && g.outer * inner <= kColumnBudget &&
      p.elements <= kColumnTensor) {
    // Features first, small slices: column blocks (see kColumnBudget).
    grid.o_chunk = g.outer;
    grid.s_chunk = std::min(g.span, std::max<int64_t>(1, kBlockTarget / (g.outer * inner)));
  } else if (g.identity() && inner == 1) {
    // Features last: cache-sized blocks of row segments (up to kMaxRowBlock features) and at
    // least kMinRowsInterleaved rows, so the partials stay a small fraction of x.
    grid.s_chunk = std::min(g.span, kMaxRowBlock);
    const int64_t target = p.elements >= kLargeInterleaved ? kLargeRowBlockTarget : kBlockTarget;
    grid.o_chunk = std::min(g.outer, std::max(kMinRowsInterleaved, target / grid.s_chunk));
  } else if (g.identity()) {
    // Features first, large slices: cache-sized blocks of whole rows of few features.
    const int64_t per_s = inner * o_min;
    grid.s_chunk = std::min(g.span, std::max<int64_t>(1, kBlockTarget / per_s));
    grid.o_chunk = std::min(g.outer, std::max(o_min, kBlockTarget / std::max<int64_t>(1, grid.s_chunk * inner)));
  } else {
    // Kept axes separated by reduced ones: a block covers the whole span, so every
    // block holds every feature.
    grid.s_chunk = g.span;
    const int64_t per_o = g.span * inner;
    grid.o_chunk = std::min(g.outer, std::max<int64_t>(1, kBlockTarget / per_o));
  }
  grid.o_chunk = std::max<int64_t>(1, grid.o_chunk);
  grid.o_blocks = (g.outer + grid.o_chunk - 1) / grid.o_chunk;
  grid.s_blocks = (g.span + grid.s_chunk - 1) / grid.s_chunk;
  // Elementwise passes over features-first data: runs of whole rows in memory order (the
  // column blocks above stride across the tensor), about kBlockTarget elements each.
  p.stream_grid = grid;
  if (g.identity() && inner >= kMinPlanarInner) {
    BlockGrid& sg = p.stream_grid;
    const int64_t row = g.span * inner;
    if (row >= kBlockTarget) {
      sg.o_chunk = 1;
      sg.s_chunk = std::min(g.span, std::max<int64_t>(1, kBlockTarget / inner));
    } else {
      sg.s_chunk = g.span;
      sg.o_chunk = std::min(g.outer, std::max<int64_t>(1, kBlockTarget / row));
    }
    sg.o_blocks = (g.outer + sg.o_chunk - 1) / sg.o_chunk;
    sg.s_blocks = (g.span + sg.s_chunk - 1) / sg.s_chunk;
  }
  if (g.identity() && inner == 1 && grid.o_blocks == 1 && g.outer * grid.s_chunk > kBlockTarget / 2) {
    // Features last with every row in one block row (each block's statistics are final and it
    // is normalized while in cache): segments of about kBlockTarget/2 elements, whole multiples
    // of 64 features, so that more than one thread has work (measured on 64x1024, two threads:
    // training forward and backward 15-25 % faster). Not the elementwise grid: an inference
    // pass over so few elements measured slower split.
    grid.s_chunk = std::min(grid.s_chunk, std::max<int64_t>(64, kBlockTarget / 2 / g.outer / 64 * 64));
    grid.s_blocks = (g.span + grid.s_chunk - 1) / grid.s_chunk;
  }
  return p;
}

}  // namespace bn
