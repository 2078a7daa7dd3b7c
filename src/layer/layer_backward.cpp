// The backward: dx, dgamma, dbeta of the saved forward, with the ReLU gate.
#include "layer/layer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "kernels/kernels.hpp"
#include "layer/error.hpp"
#include "layer/keras_params.hpp"
#include "layer/layer_internal.hpp"

namespace bn {
using namespace detail;

// ---------------------------------------------------------------------------
// Backward
//
// Training (per feature, m reduced elements, s = 1/sqrt(var_B + eps), xhat = (x - mean)*s,
// y = g*xhat + b; mean and var are differentiated through):
//   dx = g*s * (dy - mean(dy) - xhat * mean(dy*xhat))
//      = (g*s)*dy  +  (-g*s^3 * Sxc / m)*(x - mean)  +  (-g*s * Sdy / m)
//   with Sdy = sum dy and Sxc = sum dy*(x - mean);  dgamma = s*Sxc;  dbeta = Sdy.
// Inference (moving statistics are constants): dx = (g*s_mv)*dy, dgamma = s_mv * sum dy*(x - mm).
// Mixed precision (bf16/f16 x, dy): everything above is computed in float from the widened
// 16-bit values, and dx is rounded once to the 16-bit type; dgamma and dbeta are float.
// The kernels take the sums around c = C(mean) (C = Compute<T>: double for f64, float
// otherwise) and compute x - c in C; with delta = mean - c:
//   Sxc = sum dy*(x - c) - delta*Sdy,   k_x*(x - mean) + k_c = k_x*(x - c) + (k_c - k_x*delta).
void Layer::backward(const int64_t* shape, int32_t ndim, const BackwardIo& io) {
  Access exclusive(users_, true);
  check_shape(axes_, shape, ndim);
  if (!saved_.valid) {
    fail(Status::state, "there is no forward to differentiate: call bn_forward first (a bn_set_param since the "
                        "last forward also clears it)");
  }
  if (saved_.ndim != ndim || !std::equal(shape, shape + ndim, saved_.shape)) {
    fail(Status::state, "shape " + shape_text(shape, ndim) + " differs from the shape " +
                            shape_text(saved_.shape, saved_.ndim) + " of the most recent bn_forward");
  }
  if (config_.relu && saved_.residual && !io.y) {
    fail(Status::state, "the forward added a residual before the ReLU, so its mask needs that forward's output: "
                        "pass y to bn_backward_residual");
  }
  const bool param_grads = (io.dgamma || io.dbeta) && (mode_ & kParamGradients) && (config_.scale || config_.center);
  if (saved_.ghost) {
    backward_ghost(ghost_, io, param_grads);
  } else {
    const ShapePlan& plan = plan_for(shape, ndim);
    with_element(config_.dtype, [&](auto e) { backward_impl<decltype(e)>(plan, io, param_grads); });
  }
  // work_c_ holds dgamma, work_d_ dbeta (zero where the parameter is absent or frozen).
  std::vector<double>& dg = work_c_;
  std::vector<double>& db = work_d_;
  if (param_grads) {
    // Keras adds the regularizers' gradients (B.8); absent parameters are zeroed below. With a
    // callback each replica reports its share of the global gradient, so it adds 1/R of the
    // regularizer's: the sum over the replicas counts it once (R from the latest collective
    // of a forward, 1 before the first).
    const double share = synchronized() ? replicas_ : 1.0;
    add_regularizer_gradient(config_.keras.gamma_regularizer, gamma_, dg, share);
    add_regularizer_gradient(config_.keras.beta_regularizer, beta_, db, share);
  }
  // Rounded to the parameter type (zero where absent or frozen), in loops that vectorize.
  auto finish = [&](std::vector<double>& v, bool wanted) {
    if (!wanted) {
      std::fill(v.begin(), v.end(), 0.0);
    } else if (config_.dtype != DType::f64) {
      for (double& e : v) e = static_cast<double>(static_cast<float>(e));
    }
  };
  finish(dg, param_grads && config_.scale);
  finish(db, param_grads && config_.center);
  if (io.dgamma) write_params(dg, io.dgamma);
  if (io.dbeta) write_params(db, io.dbeta);
}

// The ReLU mask of the saved forward: from its output when the caller passes it, else
// recomputed from x with the transform that forward used.
template <class T>
kernels::Gate<T> Layer::relu_gate(const BackwardIo& io) {
  kernels::Gate<T> gate;
  if (!config_.relu) return gate;
  if (io.y) {
    gate.y = static_cast<const T*>(io.y);
    return gate;
  }
  using C = kernels::Compute<T>;
  const PerFeature<C>& pf = saved_.training_forward ? relu_constants<C>() : inference_constants<C>();
  gate.z_center = pf.center.data();
  gate.z_scale = pf.k1.data();
  gate.z_shift = pf.k2.data();
  return gate;
}

template <class T>
void Layer::backward_impl(const ShapePlan& plan, const BackwardIo& io, bool param_grads) {
  const T* x = static_cast<const T*>(io.x);
  const T* dy = static_cast<const T*>(io.dy);
  T* dx = static_cast<T*>(io.dx);
  T* dresidual = static_cast<T*>(io.dresidual);
  const kernels::Gate<T> gate = relu_gate<T>(io);
  const int64_t c = axes_.features;
  const kernels::Geometry& g = plan.geometry;
  const BlockGrid& grid = plan.grid;
  const auto& k = kernels::selected<T>();
  const bool batch = saved_.batch_statistics;
  // Moving statistics saved by a training-path forward that normalized with them (mode flags).
  const bool snapshot = !batch && saved_.training_forward;
  const std::vector<double>& center = batch ? batch_mean_ : snapshot ? saved_center_ : moving_mean_;
  std::vector<double>& dgamma = work_c_;
  std::vector<double>& dbeta = work_d_;
  using C = kernels::Compute<T>;
  PerFeature<C>& pf = call_constants<C>();
  // Per-feature set-up in loops that vectorize (one scalar loop doing all four measured 3 us
  // of a 43 us 64x1024 backward).
  const double* inv = saved_inv_std_.data();
  if (!batch && !snapshot) {
    double* w = work_b_.data();
    for (int64_t f = 0; f < c; ++f) w[f] = 1.0 / std::sqrt(moving_variance_[f] + epsilon_);
    inv = w;
  }
  {
    const double* src = center.data();
    C* dst = pf.center.data();
    for (int64_t f = 0; f < c; ++f) dst[f] = static_cast<C>(src[f]);
  }
  std::fill(dgamma.begin(), dgamma.begin() + c, 0.0);
  std::fill(dbeta.begin(), dbeta.begin() + c, 0.0);
  // With a callback, the sums of a batch-statistics forward are global (layer_sync.cpp): even
  // an empty replica takes part in the collective.
  const bool sync = batch && synchronized();
  if (plan.elements == 0 && !sync) return;
  const double m = sync ? saved_count_ : static_cast<double>(plan.per_feature);
  // From the sums of feature f (sdy = Sdy, sxc = Sxc around the saved centre): parameter
  // gradients and dx constants. With the batch statistics, y = g*(a_s*(r*xhat + d) + a_b) + b
  // with r, d, a_s, a_b constants: dx as above with g*a_s*r for g;
  // dgamma = a_s*r*s*Sxc + (a_s*d + a_b)*Sdy.
  auto gradients = [&](int64_t f, double sdy, double sxc) {
    const double r = batch ? saved_r_[f] : 1.0, d = batch ? saved_d_[f] : 0.0;
    const double as = batch ? saved_adj_scale_[f] : 1.0, ab = batch ? saved_adj_bias_[f] : 0.0;
    dgamma[f] = as * r * inv[f] * sxc + (as * d + ab) * sdy;
    dbeta[f] = sdy;
  };
  auto dx_constants = [&](int64_t f, double sdy, double sxc) {
    const double delta = center[f] - static_cast<double>(pf.center[f]);
    const double r = batch ? saved_r_[f] : 1.0;
    const double as = batch ? saved_adj_scale_[f] : 1.0;
    const double k_dy = gamma_[f] * as * r * inv[f];
    const double k_x = batch ? -(k_dy * inv[f] * inv[f] * sxc) / m : 0.0;
    const double k_c = batch ? -(k_dy * sdy) / m : 0.0;
    pf.k1[f] = static_cast<C>(k_dy);
    pf.k2[f] = static_cast<C>(k_x);
    pf.k3[f] = static_cast<C>(k_c - k_x * delta);
  };
  // The kernels' sums are taken around pf.center (sxc_c): Sxc = sxc_c - delta*Sdy.
  auto coefficients = [&](int64_t f, double sdy, double sxc_c) {
    const double sxc = sxc_c - (center[f] - static_cast<double>(pf.center[f])) * sdy;
    gradients(f, sdy, sxc);
    dx_constants(f, sdy, sxc);
  };
  // coefficients() for features [f0, f1); with the batch statistics in one loop without calls
  // or per-feature branches, the same operations in the same order (measured: the per-feature
  // work was a fifth of a 64x1024 backward).
  auto coefficients_range = [&](int64_t f0, int64_t f1, const double* sdy, const double* sxc_c) {
    if (!batch) {
      for (int64_t f = f0; f < f1; ++f) coefficients(f, sdy[f], sxc_c[f]);
      return;
    }
    const double *mean = center.data(), *is = inv, *gamma = gamma_.data(), *rs = saved_r_.data(),
                 *ds = saved_d_.data(), *scales = saved_adj_scale_.data(), *biases = saved_adj_bias_.data();
    double *dg = dgamma.data(), *db = dbeta.data();
    C *pc = pf.center.data(), *k1 = pf.k1.data(), *k2 = pf.k2.data(), *k3 = pf.k3.data();
#pragma GCC ivdep  // distinct arrays
    for (int64_t f = f0; f < f1; ++f) {
      const double a = sdy[f];
      const double delta = mean[f] - static_cast<double>(pc[f]);
      const double sxc = sxc_c[f] - delta * a;
      const double r = rs[f], as = scales[f];
      dg[f] = as * r * is[f] * sxc + (as * ds[f] + biases[f]) * a;
      db[f] = a;
      const double k_dy = gamma[f] * as * r * is[f];
      const double k_x = -(k_dy * is[f] * is[f] * sxc) / m;
      const double k_c = -(k_dy * a) / m;
      k1[f] = static_cast<C>(k_dy);
      k2[f] = static_cast<C>(k_x);
      k3[f] = static_cast<C>(k_c - k_x * delta);
    }
  };
  const kernels::BackwardSumsArgs<T> sums{g, x, dy, pf.center.data(), partial_a_.data(), partial_b_.data(), gate};
  const kernels::BackwardDxArgs<T> dx_args{g,           x,           dy,          dx,   pf.center.data(),
                                           pf.k1.data(), pf.k2.data(), pf.k3.data(), gate, dresidual,
                                           stream_output<T>(plan, backward_tensors(dx, dresidual, gate), executor_.concurrency())};
  const bool elementwise = (dx || dresidual) && plan.elements > 0;

  if (!batch && !param_grads) {
    // Inference without parameter gradients: dx = (g*s_mv)*dy needs no reduction.
    for (int64_t f = 0; f < c; ++f) coefficients(f, 0.0, 0.0);
    const BlockGrid& sg = plan.stream_grid;
    if (elementwise) executor_.for_blocks(sg.count(), [&](int64_t b) { k.backward_dx(dx_args, sg.block(g, b)); });
    return;
  }
  if (grid.o_blocks == 1 && !sync) {
    // Blocks hold all rows of their features: sums, constants and dx while x and dy are in cache.
    executor_.for_blocks(grid.count(), [&](int64_t b) {
      const kernels::Block block = grid.block(g, b);
      k.backward_sums(sums, block);
      int64_t f0, f1;
      kernels::block_features(g, block, f0, f1);
      coefficients_range(f0, f1, partial_a_.data(), partial_b_.data());
      if (elementwise) k.backward_dx(dx_args, block);
    });
    return;
  }
  auto block_sums = [&](int64_t b) {
    const int64_t bo = b / grid.s_blocks;
    kernels::BackwardSumsArgs<T> args = sums;
    args.sum_dy = partial_a_.data() + bo * c;
    args.sum_dyxc = partial_b_.data() + bo * c;
    k.backward_sums(args, grid.block(g, b));
  };
  // The block rows' sums of features [f0, f1) added in block order into row 0, block row by
  // block row, so that the loops over features are contiguous (per feature: 0 + s_0 + s_1 +
  // ..., as before). An empty batch has no block rows (and no partials): its sums are 0.
  double* sa = partial_a_.data();
  double* sb = partial_b_.data();
  auto add_block_rows = [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; grid.o_blocks > 0 && f < f1; ++f) {
      sa[f] = 0.0 + sa[f];
      sb[f] = 0.0 + sb[f];
    }
    for (int64_t bo = 1; bo < grid.o_blocks; ++bo) {
      const double* pa = sa + bo * c;
      const double* pb = sb + bo * c;
      for (int64_t f = f0; f < f1; ++f) {
        sa[f] += pa[f];
        sb[f] += pb[f];
      }
    }
  };
  if (const int64_t run = sync ? 0 : cached_feature_run(plan, int64_t{sizeof(T)}, 2 * int64_t{sizeof(T)})) {
    // One feature's slice fits in L2 (see cached_feature_run): per run of features, its
    // sums block row by block row, its constants, then its dx from the last block row back.
    // dx with ordinary stores: written a feature's rows at a time, last block row first,
    // streaming stores measured 3-10 % slower here than ordinary ones on every size (x and
    // dy 0.5 to 6 times a 35 MiB L3: 16x128x1024, 32x64x56x56, 32x512x28x28, 32x256x56x56).
    kernels::BackwardDxArgs<T> run_dx = dx_args;
    run_dx.stream = false;
    executor_.for_blocks((c + run - 1) / run, [&](int64_t t) {
      const int64_t f0 = t * run, f1 = std::min(c, f0 + run);
      for (int64_t bo = 0; bo < grid.o_blocks; ++bo) {
        kernels::Block block = grid.block(g, bo * grid.s_blocks);
        block.s0 = f0;
        block.s1 = f1;
        kernels::BackwardSumsArgs<T> args = sums;
        args.sum_dy = partial_a_.data() + bo * c;
        args.sum_dyxc = partial_b_.data() + bo * c;
        k.backward_sums(args, block);
      }
      add_block_rows(f0, f1);
      coefficients_range(f0, f1, sa, sb);
      for (int64_t bo = grid.o_blocks - 1; elementwise && bo >= 0; --bo) {
        kernels::Block block = grid.block(g, bo * grid.s_blocks);
        block.s0 = f0;
        block.s1 = f1;
        k.backward_dx(run_dx, block);
      }
    });
    return;
  }
  if (const int64_t group = sync || plan.elements == 0 ? 0 : cached_group_columns(plan, 2 * int64_t{sizeof(T)})) {
    // Large planar tensors: the same blocks and sums as below, group of feature columns by
    // group (see cached_group_columns), each group's dx while its x and dy are in cache.
    for (int64_t bs0 = 0; bs0 < grid.s_blocks; bs0 += group) {
      const int64_t cols = std::min(group, grid.s_blocks - bs0);
      auto block_of = [&](int64_t t) { return (t / cols) * grid.s_blocks + bs0 + t % cols; };
      executor_.for_blocks(grid.o_blocks * cols, [&](int64_t t) { block_sums(block_of(t)); });
      const int64_t f0 = bs0 * grid.s_chunk, f1 = std::min(c, (bs0 + cols) * grid.s_chunk);
      add_block_rows(f0, f1);
      coefficients_range(f0, f1, sa, sb);
      if (elementwise) {
        executor_.for_blocks(grid.o_blocks * cols, [&](int64_t t) { k.backward_dx(dx_args, grid.block(g, block_of(t))); });
      }
    }
    return;
  }
  if (plan.elements > 0) executor_.for_blocks(grid.count(), block_sums);
  // With a callback: the replica's share of dgamma/dbeta from its local sums, and the local
  // sums into the collective's buffer [Sdy (C values), Sxc (C values)].
  double* global = sync ? sync_.buffer.data() : nullptr;
  executor_.for_blocks((c + kFeaturesPerTask - 1) / kFeaturesPerTask, [&](int64_t t) {
    const int64_t f0 = t * kFeaturesPerTask, f1 = std::min(c, f0 + kFeaturesPerTask);
    add_block_rows(f0, f1);
    const bool rows = grid.o_blocks > 0;
    if (!sync) {  // then the batch is not empty: rows holds
      coefficients_range(f0, f1, sa, sb);
      return;
    }
    for (int64_t f = f0; f < f1; ++f) {
      const double a = rows ? sa[f] : 0.0, b = rows ? sb[f] : 0.0;
      const double sxc = b - (center[f] - static_cast<double>(pf.center[f])) * a;
      gradients(f, a, sxc);
      global[f] = a;
      global[c + f] = sxc;
    }
  });
  if (sync) {
    allreduce(global, 2 * c, "the backward's sums");
    for (int64_t f = 0; f < c; ++f) dx_constants(f, global[f], global[c + f]);
  }
  const BlockGrid& sg = plan.stream_grid;
  if (elementwise) executor_.for_blocks(sg.count(), [&](int64_t b) { k.backward_dx(dx_args, sg.block(g, b)); });
}

}  // namespace bn
