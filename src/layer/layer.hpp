// The Keras BatchNormalization layer: configuration checks against the input shape,
// the fused-path decision, parameters and moving statistics, training vs inference,
// the saved forward for the backward, and the access guard. No C types here.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "layer/config.hpp"
#include "layer/shape_plan.hpp"
#include "layer/state_io.hpp"
#include "parallel/executor.hpp"

namespace bn {

enum class Param : int32_t {
  gamma = 0,
  beta = 1,
  moving_mean = 2,
  moving_variance = 3,
  renorm_mean = 4,
  renorm_stddev = 5,
  batch_mean = 6,
  batch_variance = 7,
  moving_stddev = 8,
};

// Per-feature constants handed to the kernels, in the kernels' compute type
// (kernels::Compute<E>: double for f64 layers, float for f32, bf16 and f16 layers).
template <class T>
struct PerFeature {
  std::vector<T> center, k1, k2, k3;
  void resize(size_t n) {
    center.assign(n, T(0));
    k1.assign(n, T(0));
    k2.assign(n, T(0));
    k3.assign(n, T(0));
  }
};

// Throws Error(invalid_argument) for renorm arguments Keras 3 refuses.
void check_renorm(const Renorm& renorm);

class Layer {
 public:
  // Throws Error for a configuration that does not fit the shape (or that Keras refuses).
  Layer(const Config& config, const int64_t* input_shape, int32_t ndim);
  // The layer a decoded state describes (layer_state.cpp), with `adjustment` and `allreduce`
  // as its callbacks (empty: none). The fused decision is recomputed as the saved layer took
  // it (with the callbacks it recorded), so it is the saved one whatever callbacks are given
  // (an adjustment callback may still refuse it). Throws Error(corrupt_data) when the state's
  // configuration is refused or its fused decision is not the one the configuration gives.
  Layer(const LayerState& state, const Adjustment& adjustment, const Allreduce& allreduce);

  int64_t num_features() const { return axes_.features; }
  bool fused() const { return fused_; }
  DType dtype() const { return config_.dtype; }
  const Config& config() const { return config_; }

  void set_training(bool training);
  void set_trainable(bool trainable);
  void set_momentum(double momentum);
  void set_renorm_clipping(double rmax, double rmin, double dmax);
  void set_renorm_momentum(double momentum);
  void set_nonfinite_policy(NonFinite policy);

  // Orthogonal mode flags (SEMANTICS A.9). bn_set_training/bn_set_trainable set the Keras
  // presets; set_mode overrides them until the next of those calls.
  static constexpr int32_t kBatchStatistics = 1;  // normalize with the batch statistics
  static constexpr int32_t kUpdateMoving = 2;     // update the moving (and renorm) statistics
  static constexpr int32_t kParamGradients = 4;   // backward reports dgamma/dbeta
  void set_mode(int32_t flags);
  int32_t mode() const;
  void set_num_threads(int32_t max_threads);

  // The caller's buffers of one call. Tensors are of the layer's dtype (16-bit ones as raw
  // IEEE half / bfloat16 bits); parameter buffers are double for f64 layers and float otherwise. Optional ones may be null; the C
  // boundary has checked the required ones.
  struct ForwardIo {
    const void* x;
    const void* residual;  // added before the ReLU
    void* y;
  };
  struct BackwardIo {
    const void* x;
    const void* y;  // the forward's output (ReLU mask), or null
    const void* dy;
    void* dx;
    void* dresidual;
    void* dgamma;
    void* dbeta;
  };
  void forward(const int64_t* shape, int32_t ndim, const ForwardIo& io);
  void backward(const int64_t* shape, int32_t ndim, const BackwardIo& io);

  void get_param(Param which, void* out, int64_t count) const;
  // The inference transform y = x*scale + shift (double), for folding.
  void fold(std::vector<double>& scale, std::vector<double>& shift) const;
  void set_param(Param which, const void* values, int64_t count);

  // Keras regularizers and constraints of gamma and beta (keras_params.cpp has the math).
  double regularization_loss() const;
  void apply_constraints();

  // State files (layer_state.cpp, format in state_io.hpp). state() is a copy of everything a
  // blob holds. load() replaces this layer's configuration, parameters, statistics, modes
  // and step counter with the state's, keeping its callbacks and thread bound;
  // the state must have this layer's structure (dtype, rank, kept axes and sizes, center,
  // scale, renorm, ghost batches on or off): Error(shape) / Error(invalid_argument)
  // otherwise. Strong guarantee: everything is built aside, then swapped in.
  LayerState state() const;
  void load(const LayerState& state);
  // Moving-statistics updates so far (PyTorch's num_batches_tracked): the cumulative
  // average weights the next batch 1/(count + 1).
  int64_t step_count() const;
  void set_step_count(int64_t count);

 private:
  class Access;  // RAII guard: shared (inference forward, reads) or exclusive

  bool uses_batch_statistics() const { return (mode_ & kBatchStatistics) != 0; }
  bool computes_batch_statistics() const { return (mode_ & (kBatchStatistics | kUpdateMoving)) != 0; }
  void apply_keras_preset();
  void replace_renorm(const Renorm& renorm);
  void renorm_correction(size_t f, double mean, double var, double& r, double& d) const;
  void update_moving_statistics(int64_t m);
  // Per the non-finite policy, for per-feature batch statistics (`features` = ghosts*C values,
  // ghost-major): throws Error(nonfinite) under REFUSE when one is not finite; returns true when
  // the moving statistics must not be updated (SKIP_UPDATE), false otherwise.
  bool screen_statistics(const double* mean, const double* var, int64_t features) const;
  // v rounded to the parameters' storage type (float unless the layer is f64).
  double round_param(double v) const {
    return config_.dtype == DType::f64 ? v : static_cast<double>(static_cast<float>(v));
  }
  void refresh_inference_transform();
  const ShapePlan& plan_for(const int64_t* shape, int32_t ndim);
  template <class T> void forward_training(const ShapePlan& plan, const ForwardIo& io);
  template <class T> void forward_inference(const ShapePlan& plan, const ForwardIo& io) const;
  template <class T> void backward_impl(const ShapePlan& plan, const BackwardIo& io, bool param_grads);
  template <class T> kernels::Gate<T> relu_gate(const BackwardIo& io);
  template <class T> PerFeature<T>& inference_constants();
  template <class T> const PerFeature<T>& inference_constants() const;
  template <class T> PerFeature<T>& call_constants();
  template <class T> PerFeature<T>& relu_constants();
  void write_params(const std::vector<double>& values, void* out) const;

  // Cross-replica statistics (layer_sync.cpp). Scratch for the collectives over `features`
  // per-feature statistics (C for the layer, G*C for ghost batches), sized with the plan so
  // that a steady-state call allocates nothing.
  struct SyncScratch {
    std::vector<double> buffer;    // 2 + 2*features: the collectives' payload
    std::vector<double> mean, m2;  // the local moments, kept for the second round
    std::vector<int64_t> poor;     // features whose shift was poor (second round)
    void resize(size_t features);
  };
  bool synchronized() const { return static_cast<bool>(config_.allreduce); }
  // One collective (throws Error(callback) when the callback fails).
  void allreduce(double* buffer, int64_t count, const char* what);
  // In: per feature, the local mean and M2 of `count` values; out: the global batch's mean and
  // M2. Returns the global count; `replicas` receives the replica count.
  double reduce_moments(SyncScratch& s, int64_t features, double count, double* mean, double* m2,
                        double& replicas);
  const std::vector<double>& renorm_param(Param which) const;  // throws unless renorm is on
  void init_keras_params();
  void check_fits(const Layer& other) const;  // load(): same structure, or throws
  void adopt(Layer& other) noexcept;          // load(): swaps the other's state in

  Config config_;
  std::vector<int64_t> input_shape_;  // as given at build (saved in state files)
  bool had_adjustment_ = false;       // the fused decision counted an adjustment callback
  bool had_allreduce_ = false;        // the fused decision counted an allreduce callback
  AxisPlan axes_;
  bool fused_ = false;
  double epsilon_ = 0;  // as used: clamped on the fused path
  bool training_ = false;
  int32_t mode_ = 0;

  // Parameters and statistics (values always representable in the parameter dtype).
  std::vector<double> gamma_, beta_, moving_mean_, moving_variance_;
  std::vector<double> batch_mean_, batch_variance_;  // last training forward, full precision
  std::vector<double> renorm_mean_, renorm_stddev_, moving_stddev_;  // renorm only
  // The saved training forward's renorm correction (r, d) and adjustment (scale, bias), and
  // the same being computed by the current call (swapped in at commit).
  std::vector<double> saved_r_, saved_d_, saved_adj_scale_, saved_adj_bias_;
  std::vector<double> call_r_, call_d_, call_adj_scale_, call_adj_bias_;
  int64_t updates_ = 0;                               // training steps taken (cumulative average)
  std::vector<int64_t> storage_shape_;                // Keras' shape of gamma/beta (constraint axes)

  // The folded inference transform (center, scale, shift), kept current so that concurrent
  // inference forwards only read; and the per-call constants of training calls. Only the
  // layer's compute type is sized (the f32 ones serve bf16 and f16 layers too).
  PerFeature<float> infer_f32_, call_f32_, relu_f32_;
  PerFeature<double> infer_f64_, call_f64_, relu_f64_;  // relu_: the training forward's transform
  bool inference_stale_ = true;  // fresh whenever uses_batch_statistics() is false

  // The most recent forward, for the backward.
  struct Saved {
    bool valid = false;
    bool batch_statistics = false;
    bool residual = false;  // the forward added a residual
    bool training_forward = false;  // computed batch statistics (else an inference forward)
    bool ghost = false;     // ghost batches: the statistics live in ghost_
    int64_t shape[kMaxRank] = {};
    int32_t ndim = 0;
  };
  Saved saved_;
  mutable std::mutex saved_mutex_;  // inference forwards record concurrently
  std::vector<double> saved_inv_std_;  // 1/sqrt(var + eps) the saved training forward used
  std::vector<double> saved_center_;   // its moving mean, when it normalized with the moving statistics
  bool have_batch_statistics_ = false;

  // Cross-replica statistics: the shift of the first round per feature (the global mean of
  // the previous synchronized training forward, 0 before: identical on every replica by
  // construction), the replica count and the saved forward's global values per feature.
  SyncScratch sync_;
  std::vector<double> sync_shift_;
  double replicas_ = 1.0;
  double saved_count_ = 0.0;

  // Scratch planned per shape: partial rows (o_blocks x features) and per-feature work.
  ShapePlan plan_;
  bool plan_valid_ = false;
  std::vector<double> partial_a_, partial_b_;
  std::vector<double> work_a_, work_b_, work_c_, work_d_;

  // Ghost batches (virtual_batch_size): the training view of a batch of N = vbs*G as
  // (vbs, G, ...) with G as one more kept axis (ghost j holds samples j, j+G, ...), planned
  // per shape, with the per-ghost statistics of the saved forward.
  struct Ghost {
    bool valid = false;
    int64_t shape[kMaxRank] = {};  // the real shape it was planned for
    int32_t ndim = 0;
    ShapePlan plan;                // of the virtual shape; features = G*C
    std::vector<double> mean, var, inv, partial_a, partial_b, sum_dy, sum_dyxc;
    PerFeature<float> fwd_f32, call_f32;  // the forward's folded transform; backward constants
    PerFeature<double> fwd_f64, call_f64;
    // A forward's statistics and transform until it commits (then swapped with the above).
    std::vector<double> next_mean, next_var, next_inv;
    PerFeature<float> next_f32;
    PerFeature<double> next_f64;
    SyncScratch sync;      // with an allreduce callback: G*C features
    double count = 0;      // values per ghost and feature of the saved forward (global batch)
  };
  Ghost ghost_;       // the plan of the saved ghost forward's shape (or the last one used)
  Ghost ghost_next_;  // a plan for another shape, until its forward commits
  Ghost& ghost_for(const int64_t* shape, int32_t ndim);
  void forward_ghost(Ghost& gh, const ForwardIo& io);  // dispatch on the element type
  void backward_ghost(Ghost& gh, const BackwardIo& io, bool param_grads);
  template <class T> void forward_ghost(Ghost& gh, const ForwardIo& io);
  template <class T> void backward_ghost(Ghost& gh, const BackwardIo& io, bool param_grads);

  parallel::Executor executor_;
  mutable std::atomic<int32_t> users_{0};  // >0 shared users, -1 exclusive
};

}  // namespace bn
