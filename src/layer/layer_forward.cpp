// The forward: inference, training (statistics, renorm, adjustment, mode flags) and the
// moving statistics.
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
// Forward
// 16-bit layers (SEMANTICS A.7, B.9) compute in float from the widened inputs, with the
// statistics accumulated in double and float parameters, and round y once to the 16-bit type.
void Layer::forward(const int64_t* shape, int32_t ndim, const ForwardIo& io) {
  {
    Access shared(users_, false);
    if (!computes_batch_statistics()) {
      const ShapePlan plan = plan_shape(axes_, shape, ndim);
      with_element(config_.dtype, [&](auto e) { forward_inference<decltype(e)>(plan, io); });
      std::lock_guard<std::mutex> lock(saved_mutex_);
      saved_.valid = true;
      saved_.batch_statistics = false;
      saved_.training_forward = false;
      saved_.residual = io.residual != nullptr;
      saved_.ghost = false;
      saved_.ndim = ndim;
      std::copy(shape, shape + ndim, saved_.shape);
      return;
    }
  }
  Access exclusive(users_, true);
  if (!computes_batch_statistics()) {
    fail(Status::state, "the layer left training mode while this call started; call again");
  }
  check_shape(axes_, shape, ndim);
  if (config_.virtual_batch_size > 0 && element_count(shape, ndim) > 0) {
    Ghost& gh = ghost_for(shape, ndim);
    forward_ghost(gh, io);
    return;
  }
  const ShapePlan& plan = plan_for(shape, ndim);
  with_element(config_.dtype, [&](auto e) { forward_training<decltype(e)>(plan, io); });
}

template <class T>
void Layer::forward_inference(const ShapePlan& plan, const ForwardIo& io) const {
  const auto& k = kernels::selected<T>();
  const PerFeature<kernels::Compute<T>>& pf = inference_constants<kernels::Compute<T>>();
  const kernels::NormalizeArgs<T> args{plan.geometry,
                                       static_cast<const T*>(io.x),
                                       static_cast<T*>(io.y),
                                       pf.center.data(),
                                       pf.k1.data(),
                                       pf.k2.data(),
                                       static_cast<const T*>(io.residual),
                                       config_.relu,
                                       stream_output<T>(plan, io.residual ? 3 : 2, executor_.concurrency())};
  const BlockGrid& sg = plan.stream_grid;
  executor_.for_blocks(sg.count(), [&](int64_t b) { k.normalize(args, sg.block(plan.geometry, b)); });
}

template <class T>
void Layer::forward_training(const ShapePlan& plan, const ForwardIo& io) {
  const T* x = static_cast<const T*>(io.x);
  const bool sync = synchronized();
  // Values per feature: of the local batch, or of the global one with a callback (below).
  double m = static_cast<double>(plan.per_feature);
  auto check_single_value = [&] {
    if (m == 1 && config_.single_value == SingleValue::reject) {
      fail(Status::shape, "training needs more than one value per feature (single-value policy REJECT); " +
                              (sync ? std::string("the global batch of all replicas") : "shape " + shape_text(plan.shape, plan.ndim)) +
                              " has 1");
    }
  };
  if (!sync) check_single_value();
  const bool batch = uses_batch_statistics();
  const bool renorm = batch && config_.renorm.enabled;
  const bool adjust = batch && static_cast<bool>(config_.adjustment);
  const int64_t c = axes_.features;
  if (adjust) {
    // Keras calls adjustment(tf.shape(inputs)) in training; a failure changes nothing.
    std::fill(call_adj_scale_.begin(), call_adj_scale_.end(), 1.0);
    std::fill(call_adj_bias_.begin(), call_adj_bias_.end(), 0.0);
    if (!config_.adjustment(plan.shape, plan.ndim, call_adj_scale_.data(), call_adj_bias_.data(), c)) {
      fail(Status::callback, "the adjustment callback reported failure");
    }
    for (int64_t f = 0; f < c; ++f) {
      if (!std::isfinite(call_adj_scale_[f]) || !std::isfinite(call_adj_bias_[f])) {
        fail(Status::callback, "the adjustment callback returned a non-finite scale or bias for feature " +
                                   std::to_string(f));
      }
    }
  }
  const kernels::Geometry& g = plan.geometry;
  const BlockGrid& grid = plan.grid;
  const auto& k = kernels::selected<T>();
  using C = kernels::Compute<T>;
  PerFeature<C>& pf = call_constants<C>();
  // Per feature: keep mean, biased variance and 1/sqrt(var + eps); with the batch statistics,
  // fold y = g*(a_s*(r*xhat + d) + a_b) + b (SEMANTICS B.2, B.4): r, d the renorm correction
  // from the pre-update renorm statistics (constants for the gradient), a_s, a_b the
  // adjustment; k = g*a_s*r/sqrt(var + eps), t = g*(a_s*d + a_b) + b.
  auto transform = [&](int64_t f, double mean, double var) {
    work_a_[f] = mean;
    work_b_[f] = var;
    const double inv = 1.0 / std::sqrt(var + epsilon_);
    work_d_[f] = inv;
    if (!batch) return;
    double r = 1.0, d = 0.0;
    if (renorm) renorm_correction(static_cast<size_t>(f), mean, var, r, d);
    call_r_[f] = r;
    call_d_[f] = d;
    const double as = adjust ? call_adj_scale_[f] : 1.0, ab = adjust ? call_adj_bias_[f] : 0.0;
    fold_normalize(pf, static_cast<size_t>(f), mean, gamma_[f] * as * r * inv, gamma_[f] * (as * d + ab) + beta_[f]);
  };
  // transform() for features [f0, f1) from means and M2 sums over `count` values each. The
  // common case (batch statistics, no renorm, no adjustment: r = 1, d = 0, a_s = 1, a_b = 0)
  // in one loop without calls or branches, the same operations in the same order (measured:
  // the per-feature work was a third of a 64x1024 training forward).
  auto transform_range = [&](int64_t f0, int64_t f1, const double* mean, const double* m2, double count) {
    if (!batch || renorm || adjust) {
      for (int64_t f = f0; f < f1; ++f) transform(f, mean[f], nonnegative(m2[f] / count));
      return;
    }
    double *wa = work_a_.data(), *wb = work_b_.data(), *wd = work_d_.data(), *cr = call_r_.data(), *cd = call_d_.data();
    const double *gamma = gamma_.data(), *beta = beta_.data();
    C *center = pf.center.data(), *k1 = pf.k1.data(), *k2 = pf.k2.data();
    const double eps = epsilon_;
#pragma GCC ivdep  // the arrays are distinct members; mean/m2 may be wa/wb, read before written
    for (int64_t f = f0; f < f1; ++f) {
      const double mu = mean[f], v = m2[f] / count;
      const double var = 0.0 < v ? v : v != v ? v : 0.0;  // nonnegative(v), as selects
      const double inv = 1.0 / std::sqrt(var + eps);
      wa[f] = mu;
      wb[f] = var;
      wd[f] = inv;
      cr[f] = 1.0;
      cd[f] = 0.0;
      const double scale = gamma[f] * 1.0 * 1.0 * inv, shift = gamma[f] * (1.0 * 0.0 + 0.0) + beta[f];
      const C rounded = static_cast<C>(mu);
      center[f] = rounded;
      k1[f] = static_cast<C>(scale);
      k2[f] = static_cast<C>(shift - (mu - static_cast<double>(rounded)) * scale);
    }
  };
  // Without the batch statistics (mode flags), normalize with the moving ones as they were.
  if (!batch) refresh_inference_transform();
  const PerFeature<C>& used = batch ? pf : inference_constants<C>();
  const kernels::NormalizeArgs<T> norm{g,
                                       x,
                                       static_cast<T*>(io.y),
                                       used.center.data(),
                                       used.k1.data(),
                                       used.k2.data(),
                                       static_cast<const T*>(io.residual),
                                       config_.relu,
                                       stream_output<T>(plan, io.residual ? 3 : 2, executor_.concurrency())};

  double replicas = 1.0;
  bool skip_update = false;
  // Non-finite statistics (NaN or infinity in x) are found from the statistics themselves, so
  // finding them costs a pass over C values. Under REFUSE they must all be known before any y
  // is written (a failed call writes no output buffer).
  const bool refuse = config_.nonfinite == NonFinite::refuse;
  const bool cached = input_cached<T>(plan);
  if (plan.elements > 0 && grid.o_blocks == 1 && !sync) {
    // Every block holds all rows of its features, so its statistics are final: normalize
    // it right away, while it is still in cache (x is read from memory once). Under REFUSE,
    // every block's statistics first, then the same blocks normalized (small tensors: x stays
    // in cache). Not with a callback: the statistics must be global before anything is
    // normalized.
    executor_.for_blocks(grid.count(), [&](int64_t b) {
      const kernels::Block block = grid.block(g, b);
      k.stats(kernels::StatsArgs<T>{g, x, partial_a_.data(), partial_b_.data(), cached}, block);
      const double count = grid.count_per_feature(g, 0);
      int64_t f0, f1;
      kernels::block_features(g, block, f0, f1);
      transform_range(f0, f1, partial_a_.data(), partial_b_.data(), count);
      if (!refuse) k.normalize(norm, block);
    });
    skip_update = screen_statistics(work_a_.data(), work_b_.data(), c);
    if (refuse) executor_.for_blocks(grid.count(), [&](int64_t b) { k.normalize(norm, grid.block(g, b)); });
  } else if (const int64_t run = plan.elements > 0 && !sync && !refuse
                                     ? cached_feature_run(plan, int64_t{sizeof(T)}, int64_t{sizeof(T)})
                                     : 0) {
    // One feature's slice of x fits in L2 (see cached_feature_run): per run of features, its
    // statistics block row by block row, merged in block order as below, its transform, then
    // its normalization from the last block row back (x read from memory once). y with
    // ordinary stores, as the backward's dx on this path (streaming ones measured 2-40 %
    // slower: 32x64x56x56, 32x512x28x28, 16x128x1024).
    kernels::NormalizeArgs<T> run_norm = norm;
    run_norm.stream = false;
    executor_.for_blocks((c + run - 1) / run, [&](int64_t t) {
      const int64_t f0 = t * run, f1 = std::min(c, f0 + run);
      auto rows_of = [&](int64_t bo) {
        kernels::Block block = grid.block(g, bo * grid.s_blocks);
        block.s0 = f0;
        block.s1 = f1;
        return block;
      };
      for (int64_t bo = 0; bo < grid.o_blocks; ++bo) {
        k.stats(kernels::StatsArgs<T>{g, x, partial_a_.data() + bo * c, partial_b_.data() + bo * c, cached}, rows_of(bo));
      }
      merge_block_moments(grid, g, partial_a_.data(), partial_b_.data(), c, f0, f1, work_a_.data(), work_b_.data());
      transform_range(f0, f1, work_a_.data(), work_b_.data(), m);
      for (int64_t bo = grid.o_blocks - 1; bo >= 0; --bo) k.normalize(run_norm, rows_of(bo));
    });
    skip_update = screen_statistics(work_a_.data(), work_b_.data(), c);
  } else {
    // Per-block two-pass moments, Chan's merge in block order per feature (work_a_ the mean,
    // work_b_ M2), the collective (layer_sync.cpp), then normalize.
    if (plan.elements > 0) {
      executor_.for_blocks(grid.count(), [&](int64_t b) {
        const int64_t bo = b / grid.s_blocks;
        k.stats(kernels::StatsArgs<T>{g, x, partial_a_.data() + bo * c, partial_b_.data() + bo * c, cached},
                grid.block(g, b));
      });
      executor_.for_blocks((c + kFeaturesPerTask - 1) / kFeaturesPerTask, [&](int64_t t) {
        const int64_t f1 = std::min(c, (t + 1) * kFeaturesPerTask);
        merge_block_moments(grid, g, partial_a_.data(), partial_b_.data(), c, t * kFeaturesPerTask, f1, work_a_.data(),
                            work_b_.data());
      });
    } else {
      std::fill(work_a_.begin(), work_a_.end(), 0.0);
      std::fill(work_b_.begin(), work_b_.end(), 0.0);
    }
    if (sync) {
      m = reduce_moments(sync_, c, m, work_a_.data(), work_b_.data(), replicas);
      check_single_value();
    }
    if (m > 0) {
      executor_.for_blocks((c + kFeaturesPerTask - 1) / kFeaturesPerTask, [&](int64_t t) {
        const int64_t f1 = std::min(c, (t + 1) * kFeaturesPerTask);
        transform_range(t * kFeaturesPerTask, f1, work_a_.data(), work_b_.data(), m);
      });
      // With a callback these are the global statistics: every replica decides alike.
      skip_update = screen_statistics(work_a_.data(), work_b_.data(), c);
    }
    if (plan.elements > 0) {
      const BlockGrid& sg = plan.stream_grid;
      executor_.for_blocks(sg.count(), [&](int64_t b) { k.normalize(norm, sg.block(g, b)); });
    }
  }

  if (m > 0) {
    // Commit: nothing below can fail.
    if (!batch) {
      // The forward normalized with the moving statistics as they were: its backward needs
      // them, not the ones the update below writes.
      for (int64_t f = 0; f < c; ++f) {
        saved_center_[f] = moving_mean_[f];
        work_d_[f] = 1.0 / std::sqrt(moving_variance_[f] + epsilon_);
      }
    }
    if ((mode_ & kUpdateMoving) && !skip_update) update_moving_statistics(static_cast<int64_t>(m));
    if (sync) {
      for (int64_t f = 0; f < c; ++f) {
        if (std::isfinite(work_a_[f])) sync_shift_[f] = work_a_[f];
      }
      replicas_ = replicas;
    }
    batch_mean_.swap(work_a_);
    batch_variance_.swap(work_b_);
    saved_inv_std_.swap(work_d_);
    have_batch_statistics_ = true;
    if (batch) {
      saved_r_.swap(call_r_);
      saved_d_.swap(call_d_);
      if (adjust) {
        saved_adj_scale_.swap(call_adj_scale_);
        saved_adj_bias_.swap(call_adj_bias_);
      } else {
        std::fill(saved_adj_scale_.begin(), saved_adj_scale_.end(), 1.0);
        std::fill(saved_adj_bias_.begin(), saved_adj_bias_.end(), 0.0);
      }
    }
    if (config_.relu) relu_constants<C>() = used;  // sizes match: copies, no allocation
  }
  // An empty (global) batch normalizes nothing and leaves the statistics alone (Keras' rule
  // for zero-size inputs); it still has a (zero) gradient. A replica with an empty local
  // batch still takes part in the collectives and updates its statistics like the others.
  saved_.valid = true;
  saved_.batch_statistics = batch;
  saved_.training_forward = true;
  saved_.residual = io.residual != nullptr;
  saved_.ghost = false;
  saved_.ndim = plan.ndim;
  saved_count_ = m;
  std::copy(plan.shape, plan.shape + plan.ndim, saved_.shape);
}

bool Layer::screen_statistics(const double* mean, const double* var, int64_t features) const {
  if (config_.nonfinite == NonFinite::propagate) return false;
  // All finite (the common case) in one branch-free pass over the bits: a double is NaN or
  // infinite exactly when its exponent bits are all ones, i.e. (~bits & exponent) is 0, and
  // then (~bits & exponent) - 1 has its top bit set. Integer ORs vectorize (a floating-point
  // sum is one serial chain: measured 1.8 us of a 31 us 64x1024 training forward).
  constexpr uint64_t kExponent = 0x7ff0000000000000u;
  uint64_t nonfinite = 0;
  for (int64_t v = 0; v < features; ++v) {
    uint64_t a, b;
    std::memcpy(&a, mean + v, sizeof a);
    std::memcpy(&b, var + v, sizeof b);
    nonfinite |= ((~a & kExponent) - 1) | ((~b & kExponent) - 1);
  }
  if ((nonfinite >> 63) == 0) return false;
  for (int64_t v = 0; v < features; ++v) {
    if (std::isfinite(mean[v]) && std::isfinite(var[v])) continue;
    if (config_.nonfinite == NonFinite::skip_update) return true;
    const int64_t c = axes_.features;
    fail(Status::nonfinite, "the batch statistics of feature " + std::to_string(v % c) +
                                (features > c ? " in ghost batch " + std::to_string(v / c) : std::string()) +
                                " are not finite (mean " + std::to_string(mean[v]) + ", variance " +
                                std::to_string(var[v]) + "): the batch holds NaN or infinity; nothing changed "
                                "(non-finite policy REFUSE; PROPAGATE and SKIP_UPDATE write the output)");
  }
  return false;
}

// Moving statistics (SEMANTICS B.1/B.2) from the batch mean work_a_ and biased variance
// work_b_ over m values per feature: the fused path feeds the Bessel-corrected variance
// m/max(m-1,1) (TF's kernel form mu*v + (1-mu)*x); the non-fused path the biased one (Keras'
// v - (v - x)(1 - mu)). With renorm, renorm_mean/renorm_stddev follow renorm_momentum,
// moving_stddev follows momentum and moving_variance = relu(moving_stddev^2 - eps) is
// assigned. The variance override and the cumulative average (PyTorch momentum=None) are
// options beyond Keras. Each value is rounded to the parameter type, as Keras stores it.
void Layer::update_moving_statistics(int64_t m) {
  const bool bessel = config_.moving_variance == MovingVariance::unbiased ||
                      (config_.moving_variance == MovingVariance::automatic && fused_);
  const double correction = bessel ? static_cast<double>(m) / static_cast<double>(std::max<int64_t>(m - 1, 1)) : 1.0;
  ++updates_;
  const double mu = config_.momentum;
  const double wc = 1.0 / static_cast<double>(updates_);
  auto ema = [&](double& v, double value) {
    if (config_.cumulative_average) {
      v = round_param((1.0 - wc) * v + wc * value);
    } else if (fused_) {
      v = round_param(mu * v + (1.0 - mu) * value);  // TF's kernel form
    } else {
      v = round_param(v - (v - value) * (1.0 - mu));  // Keras' _assign_moving_average
    }
  };
  if (!config_.cumulative_average && !config_.renorm.enabled) {
    // The common case in one loop without calls or per-feature branches (vectorized; the same
    // operations as ema() below).
    const bool f64 = config_.dtype == DType::f64;
    double *mm = moving_mean_.data(), *mv = moving_variance_.data();
    const double *bm = work_a_.data(), *bv = work_b_.data();
    const auto n = static_cast<int64_t>(moving_mean_.size());
    auto round = [f64](double v) { return f64 ? v : static_cast<double>(static_cast<float>(v)); };
    if (fused_) {
#pragma GCC ivdep  // distinct arrays
      for (int64_t f = 0; f < n; ++f) {
        mm[f] = round(mu * mm[f] + (1.0 - mu) * bm[f]);
        mv[f] = round(mu * mv[f] + (1.0 - mu) * (bv[f] * correction));
      }
    } else {
#pragma GCC ivdep  // distinct arrays
      for (int64_t f = 0; f < n; ++f) {
        mm[f] = round(mm[f] - (mm[f] - bm[f]) * (1.0 - mu));
        mv[f] = round(mv[f] - (mv[f] - bv[f] * correction) * (1.0 - mu));
      }
    }
    inference_stale_ = true;
    return;
  }
  const double wr = 1.0 - config_.renorm.momentum;
  for (size_t f = 0; f < moving_mean_.size(); ++f) {
    const double mean = work_a_[f];
    const double var = work_b_[f] * correction;
    ema(moving_mean_[f], mean);
    if (config_.renorm.enabled) {
      const double stddev = std::sqrt(work_b_[f] + epsilon_);
      renorm_mean_[f] = round_param(renorm_mean_[f] - (renorm_mean_[f] - mean) * wr);
      renorm_stddev_[f] = round_param(renorm_stddev_[f] - (renorm_stddev_[f] - stddev) * wr);
      ema(moving_stddev_[f], std::sqrt(var + epsilon_));
      moving_variance_[f] = round_param(nonnegative(moving_stddev_[f] * moving_stddev_[f] - epsilon_));
    } else {
      ema(moving_variance_[f], var);
    }
  }
  inference_stale_ = true;
}

}  // namespace bn
