// Ghost batch normalization (virtual_batch_size).
#include "layer/layer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "kernels/kernels.hpp"
#include "layer/error.hpp"
#include "layer/layer_internal.hpp"

namespace bn {
using namespace detail;

// ---------------------------------------------------------------------------
// Ghost batches (SEMANTICS B.3)
//
// Keras reshapes a training batch of N = vbs*G samples to (vbs, G, ...) and reduces over axis 0
// and the other reduced axes: ghost j is samples {j, j+G, j+2G, ...}. That reshape is a view
// of the same memory, so the kernels run on it with G as one more kept axis (features G*C,
// f' = j*C + f): per-ghost statistics normalize each ghost; the moving statistics (and renorm's
// r, d) use the plain average over ghosts of their means and biased variances; the backward
// reduces per ghost and sums the parameter gradients over ghosts.
Layer::Ghost& Layer::ghost_for(const int64_t* shape, int32_t ndim) {
  const int64_t n = shape[0], vbs = config_.virtual_batch_size;
  if (n % vbs != 0) {
    fail(Status::shape, "virtual_batch_size=" + std::to_string(vbs) + " does not divide the batch size shape[0]=" +
                            std::to_string(n));
  }
  // The saved forward's plan and statistics stay in ghost_ until a forward of another shape
  // commits (a failing call changes nothing): that forward works in ghost_next_.
  auto planned = [&](const Ghost& g) { return g.valid && g.ndim == ndim && std::equal(shape, shape + ndim, g.shape); };
  if (planned(ghost_)) return ghost_;
  if (planned(ghost_next_)) return ghost_next_;
  int64_t vshape[kMaxRank];
  vshape[0] = vbs;
  vshape[1] = n / vbs;
  std::copy(shape + 1, shape + ndim, vshape + 2);
  std::vector<int32_t> vaxes{1};
  for (int32_t d = 1; d < ndim; ++d) {
    if (axes_.kept[d]) vaxes.push_back(d + 1);
  }
  Ghost gh;
  const AxisPlan vplan = resolve_axes(vaxes, vshape, ndim + 1);
  gh.plan = plan_shape(vplan, vshape, ndim + 1);
  const auto f = static_cast<size_t>(gh.plan.geometry.features);
  const size_t rows = static_cast<size_t>(gh.plan.grid.o_blocks) * f;
  for (auto* v : {&gh.mean, &gh.var, &gh.inv, &gh.next_mean, &gh.next_var, &gh.next_inv, &gh.sum_dy, &gh.sum_dyxc}) {
    v->assign(f, 0.0);
  }
  gh.partial_a.assign(rows, 0.0);
  gh.partial_b.assign(rows, 0.0);
  if (synchronized()) gh.sync.resize(f);
  if (config_.dtype == DType::f64) {
    gh.fwd_f64.resize(f);
    gh.next_f64.resize(f);
    gh.call_f64.resize(f);
  } else {
    gh.fwd_f32.resize(f);
    gh.next_f32.resize(f);
    gh.call_f32.resize(f);
  }
  gh.ndim = ndim;
  std::copy(shape, shape + ndim, gh.shape);
  gh.valid = true;
  ghost_next_ = std::move(gh);
  return ghost_next_;
}

template <class T>
void Layer::forward_ghost(Ghost& gh, const ForwardIo& io) {
  const ShapePlan& plan = gh.plan;
  const bool sync = synchronized();
  // Values per ghost and feature: of the local batch, or of the union of every replica's
  // ghost (Keras' SyncBatchNormalization) with a callback.
  double m = static_cast<double>(plan.per_feature);
  auto check_single_value = [&] {
    if (m == 1 && config_.single_value == SingleValue::reject) {
      fail(Status::shape, "training needs more than one value per feature and ghost batch (single-value policy "
                          "REJECT); each ghost batch has 1");
    }
  };
  if (!sync) check_single_value();
  const kernels::Geometry& g = plan.geometry;
  const BlockGrid& grid = plan.grid;
  const int64_t fv = g.features, c = axes_.features, ghosts = fv / c;
  const auto& k = kernels::selected<T>();
  const T* x = static_cast<const T*>(io.x);
  using C = kernels::Compute<T>;
  // This call's statistics and transform go to the next_* members, swapped in at commit: until
  // then the saved forward's stay intact for its backward.
  PerFeature<C>& pf = of_type<C>(gh.next_f32, gh.next_f64);
  std::vector<double>& gmean = gh.next_mean;
  std::vector<double>& gvar = gh.next_var;
  std::vector<double>& ginv = gh.next_inv;
  // Per-ghost moments, merged over blocks in block order.
  const bool cached = input_cached<T>(plan);
  executor_.for_blocks(grid.count(), [&](int64_t b) {
    const int64_t bo = b / grid.s_blocks;
    k.stats(kernels::StatsArgs<T>{g, x, gh.partial_a.data() + bo * fv, gh.partial_b.data() + bo * fv, cached}, grid.block(g, b));
  });
  merge_block_moments(grid, g, gh.partial_a.data(), gh.partial_b.data(), fv, 0, fv, gmean.data(), gvar.data());
  double replicas = 1.0;
  if (sync) {
    m = reduce_moments(gh.sync, fv, m, gmean.data(), gvar.data(), replicas);
    check_single_value();
  }
  for (int64_t f = 0; f < fv; ++f) {
    gvar[f] = nonnegative(gvar[f] / m);
    ginv[f] = 1.0 / std::sqrt(gvar[f] + epsilon_);
  }
  // The plain average over ghosts (B.3), for the moving statistics and renorm.
  for (int64_t f = 0; f < c; ++f) {
    double mean = 0.0, var = 0.0;
    for (int64_t j = 0; j < ghosts; ++j) {
      mean += gmean[j * c + f];
      var += gvar[j * c + f];
    }
    work_a_[f] = mean / static_cast<double>(ghosts);
    work_b_[f] = var / static_cast<double>(ghosts);
    work_d_[f] = 1.0 / std::sqrt(work_b_[f] + epsilon_);
    double r = 1.0, d = 0.0;
    if (config_.renorm.enabled) renorm_correction(static_cast<size_t>(f), work_a_[f], work_b_[f], r, d);
    call_r_[f] = r;
    call_d_[f] = d;
  }
  // Non-finite statistics, per the policy, before anything is written (per ghost, then the
  // averages, which can overflow on their own).
  const bool skip_update =
      screen_statistics(gmean.data(), gvar.data(), fv) || screen_statistics(work_a_.data(), work_b_.data(), c);
  // Normalize each ghost with its own statistics (r, d shared), or, without the batch
  // statistics (mode flags), every ghost with the moving statistics as they were.
  const bool batch = uses_batch_statistics();
  if (!batch) refresh_inference_transform();
  const PerFeature<C>& infer = inference_constants<C>();
  for (int64_t j = 0; j < ghosts; ++j) {
    for (int64_t f = 0; f < c; ++f) {
      const auto v = static_cast<size_t>(j * c + f);
      if (batch) {
        fold_normalize(pf, v, gmean[v], gamma_[f] * call_r_[f] * ginv[v], gamma_[f] * call_d_[f] + beta_[f]);
      } else {
        pf.center[v] = infer.center[f];
        pf.k1[v] = infer.k1[f];
        pf.k2[v] = infer.k2[f];
      }
    }
  }
  const kernels::NormalizeArgs<T> norm{g,           x,           static_cast<T*>(io.y), pf.center.data(),
                                       pf.k1.data(), pf.k2.data(), static_cast<const T*>(io.residual),
                                       config_.relu, stream_output<T>(plan, io.residual ? 3 : 2, executor_.concurrency())};
  executor_.for_blocks(grid.count(), [&](int64_t b) { k.normalize(norm, grid.block(g, b)); });

  // Commit: nothing below can fail.
  if (!batch) {
    // Normalized with the moving statistics as they were: the plain backward (inference
    // formula) differentiates it, with these.
    for (int64_t f = 0; f < c; ++f) {
      saved_center_[f] = moving_mean_[f];
      saved_inv_std_[f] = 1.0 / std::sqrt(moving_variance_[f] + epsilon_);
    }
  }
  if ((mode_ & kUpdateMoving) && !skip_update) update_moving_statistics(static_cast<int64_t>(m));
  if (sync) {
    for (int64_t f = 0; f < c; ++f) {
      if (std::isfinite(work_a_[f])) sync_shift_[f] = work_a_[f];
    }
    replicas_ = replicas;
  }
  gh.count = m;
  gh.mean.swap(gh.next_mean);
  gh.var.swap(gh.next_var);
  gh.inv.swap(gh.next_inv);
  std::swap(of_type<C>(gh.fwd_f32, gh.fwd_f64), of_type<C>(gh.next_f32, gh.next_f64));
  std::copy(work_a_.begin(), work_a_.end(), batch_mean_.begin());
  std::copy(work_b_.begin(), work_b_.end(), batch_variance_.begin());
  have_batch_statistics_ = true;
  if (batch) {
    saved_r_.swap(call_r_);
    saved_d_.swap(call_d_);
    std::fill(saved_adj_scale_.begin(), saved_adj_scale_.end(), 1.0);
    std::fill(saved_adj_bias_.begin(), saved_adj_bias_.end(), 0.0);
  }
  if (config_.relu && !batch) relu_constants<C>() = infer;
  saved_.valid = true;
  saved_.batch_statistics = batch;
  saved_.training_forward = true;
  saved_.residual = io.residual != nullptr;
  saved_.ghost = batch;
  saved_.ndim = gh.ndim;
  std::copy(gh.shape, gh.shape + gh.ndim, saved_.shape);
  if (&gh == &ghost_next_) std::swap(ghost_, ghost_next_);  // the plan of this shape is the saved one now
}

template <class T>
void Layer::backward_ghost(Ghost& gh, const BackwardIo& io, bool param_grads) {
  (void)param_grads;
  const ShapePlan& plan = gh.plan;
  const kernels::Geometry& g = plan.geometry;
  const BlockGrid& grid = plan.grid;
  const int64_t fv = g.features, c = axes_.features, ghosts = fv / c;
  const auto& k = kernels::selected<T>();
  const T* x = static_cast<const T*>(io.x);
  const T* dy = static_cast<const T*>(io.dy);
  using C = kernels::Compute<T>;
  PerFeature<C>& fwd = of_type<C>(gh.fwd_f32, gh.fwd_f64);
  PerFeature<C>& pf = of_type<C>(gh.call_f32, gh.call_f64);
  kernels::Gate<T> gate;
  if (config_.relu) {
    if (io.y) {
      gate.y = static_cast<const T*>(io.y);
    } else {
      gate.z_center = fwd.center.data();
      gate.z_scale = fwd.k1.data();
      gate.z_shift = fwd.k2.data();
    }
  }
  for (int64_t v = 0; v < fv; ++v) pf.center[v] = static_cast<C>(gh.mean[v]);
  executor_.for_blocks(grid.count(), [&](int64_t b) {
    const int64_t bo = b / grid.s_blocks;
    kernels::BackwardSumsArgs<T> args{g, x, dy, pf.center.data(), gh.partial_a.data() + bo * fv,
                                      gh.partial_b.data() + bo * fv, gate};
    k.backward_sums(args, grid.block(g, b));
  });
  // With a callback the per-ghost sums are global (the union of every replica's ghost j):
  // the replica's share of dgamma/dbeta from its local sums, dx from the global ones.
  const bool sync = synchronized();
  const double m = sync ? gh.count : static_cast<double>(plan.per_feature);
  double* global = sync ? gh.sync.buffer.data() : nullptr;
  std::fill(work_c_.begin(), work_c_.end(), 0.0);
  std::fill(work_d_.begin(), work_d_.end(), 0.0);
  auto dx_constants = [&](int64_t v, double sdy, double sxc) {
    const int64_t f = v % c;
    const double delta = gh.mean[v] - static_cast<double>(pf.center[v]);
    const double inv = gh.inv[v];
    const double k_dy = gamma_[f] * saved_r_[f] * inv;
    const double k_x = -(k_dy * inv * inv * sxc) / m;
    const double k_c = -(k_dy * sdy) / m;
    pf.k1[v] = static_cast<C>(k_dy);
    pf.k2[v] = static_cast<C>(k_x);
    pf.k3[v] = static_cast<C>(k_c - k_x * delta);
  };
  // Per ghost and feature as backward_impl, with g*r for g; parameter gradients summed over
  // ghosts in ghost order: dgamma = sum_j (r*s_j*Sxc_j + d*Sdy_j), dbeta = sum_j Sdy_j.
  for (int64_t j = 0; j < ghosts; ++j) {
    for (int64_t f = 0; f < c; ++f) {
      const int64_t v = j * c + f;
      double sdy = 0.0, sxc_c = 0.0;
      for (int64_t bo = 0; bo < grid.o_blocks; ++bo) {
        sdy += gh.partial_a[bo * fv + v];
        sxc_c += gh.partial_b[bo * fv + v];
      }
      const double delta = gh.mean[v] - static_cast<double>(pf.center[v]);
      const double sxc = sxc_c - delta * sdy;
      const double inv = gh.inv[v], r = saved_r_[f], d = saved_d_[f];
      work_c_[f] += r * inv * sxc + d * sdy;
      work_d_[f] += sdy;
      if (sync) {
        global[v] = sdy;
        global[fv + v] = sxc;
      } else {
        dx_constants(v, sdy, sxc);
      }
    }
  }
  if (sync) {
    allreduce(global, 2 * fv, "the backward's sums");
    for (int64_t v = 0; v < fv; ++v) dx_constants(v, global[v], global[fv + v]);
  }
  T* dx = static_cast<T*>(io.dx);
  T* dresidual = static_cast<T*>(io.dresidual);
  if (dx || dresidual) {
    const kernels::BackwardDxArgs<T> args{g,           x,           dy,          dx,   pf.center.data(),
                                          pf.k1.data(), pf.k2.data(), pf.k3.data(), gate, dresidual,
                                          stream_output<T>(plan, backward_tensors(dx, dresidual, gate), executor_.concurrency())};
    executor_.for_blocks(grid.count(), [&](int64_t b) { k.backward_dx(args, grid.block(g, b)); });
  }
}

void Layer::forward_ghost(Ghost& gh, const ForwardIo& io) {
  with_element(config_.dtype, [&](auto e) { forward_ghost<decltype(e)>(gh, io); });
}

void Layer::backward_ghost(Ghost& gh, const BackwardIo& io, bool param_grads) {
  with_element(config_.dtype, [&](auto e) { backward_ghost<decltype(e)>(gh, io, param_grads); });
}

}  // namespace bn
