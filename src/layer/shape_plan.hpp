// From Keras' axis argument and an input shape to the kernels' 3-D view and the
// fixed block grid. Everything here depends on the shape only, never on threads.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/kernels.hpp"
#include "layer/config.hpp"

namespace bn {

// The axes, resolved against the rank at bn_create (Keras tf_utils.validate_axis).
struct AxisPlan {
  int32_t rank = 0;
  std::vector<bool> kept;             // per dim: normalized (kept) or reduced
  std::vector<int64_t> kept_sizes;    // per dim: the size fixed at create (kept dims only)
  int64_t features = 0;               // product of the kept sizes
  int64_t element_bytes = 1;          // of the layer's dtype: a call's tensor must fit in 2^63-1 bytes
};

// Throws Error(invalid_argument) for out-of-range or duplicate axes, Error(shape)
// for a bad shape. `who` is used in messages ("input_shape").
AxisPlan resolve_axes(const std::vector<int32_t>& axes, const int64_t* shape, int32_t ndim);

// Validates a call's shape against the layer; throws Error(shape).
void check_shape(const AxisPlan& axes, const int64_t* shape, int32_t ndim);

// Number of elements of a shape with non-negative sizes (0 if a size is 0). Throws Error(shape)
// when the product of the non-zero sizes times element_bytes exceeds 2^63-1: no buffer holds
// such a tensor, and that product bounds every partial product the plans form.
int64_t element_count(const int64_t* shape, int32_t ndim, int64_t element_bytes = 1);

struct BlockGrid {
  int64_t o_chunk = 1, s_chunk = 1;
  int64_t o_blocks = 0, s_blocks = 0;
  int64_t count() const { return o_blocks * s_blocks; }
  kernels::Block block(const kernels::Geometry& g, int64_t b) const {
    const int64_t bo = b / s_blocks, bs = b % s_blocks;
    const int64_t o0 = bo * o_chunk, s0 = bs * s_chunk;
    return {o0, o0 + o_chunk < g.outer ? o0 + o_chunk : g.outer, s0,
            s0 + s_chunk < g.span ? s0 + s_chunk : g.span};
  }
  // Elements of one feature inside the blocks of row bo (the Chan merge weights).
  double count_per_feature(const kernels::Geometry& g, int64_t bo) const {
    const int64_t o0 = bo * o_chunk;
    const int64_t rows = (o0 + o_chunk < g.outer ? o_chunk : g.outer - o0);
    return static_cast<double>(rows) * static_cast<double>(g.inner) *
           static_cast<double>(g.span / g.features);
  }
};

// Everything a call of one shape needs. Partial rows: o_blocks x features each.
struct ShapePlan {
  int64_t shape[kMaxRank] = {};
  int32_t ndim = 0;
  bool same_shape(const int64_t* other, int32_t other_ndim) const {
    if (other_ndim != ndim) return false;
    for (int32_t d = 0; d < ndim; ++d) {
      if (shape[d] != other[d]) return false;
    }
    return true;
  }
  kernels::Geometry geometry;
  BlockGrid grid;         // reductions (statistics, backward sums) and the passes fused with them
  BlockGrid stream_grid;  // elementwise passes alone: blocks of contiguous memory
  int64_t elements = 0;
  int64_t per_feature = 0;  // m: elements reduced into each feature's statistics
};

ShapePlan plan_shape(const AxisPlan& axes, const int64_t* shape, int32_t ndim);

}  // namespace bn
