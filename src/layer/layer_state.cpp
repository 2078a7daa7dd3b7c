// The layer's side of state files: its state as a LayerState, a layer built from one, and
// loading one into a live layer (docs/state_format.md says what is and is not replaced).
#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "layer/error.hpp"
#include "layer/layer.hpp"
#include "layer/layer_internal.hpp"

namespace bn {
namespace {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "BN_F32";
    case DType::f64: return "BN_F64";
    case DType::bf16: return "BN_BF16";
    case DType::f16: return "BN_F16";
  }
  return "?";
}

// The configuration to build with: the given adjustment callback, or, when the saved layer
// had one and none is given, a stand-in that only takes part in the build's decisions (fused
// path, ghost batches) as the saved layer's did. The allreduce callback is a stand-in exactly
// when the saved layer's decision counted one (fused AUTO then resolves to non-fused), whatever
// the target has: the loaded layer keeps the saved decision. The stand-ins are dropped right
// after the build.
Config build_config(const LayerState& s, const Adjustment& adjustment) {
  Config c = s.config;
  if (adjustment) {
    c.adjustment = adjustment;
  } else if (s.had_adjustment) {
    c.adjustment = [](const int64_t*, int32_t, double*, double*, int64_t) { return true; };
  }
  c.allreduce = nullptr;
  if (s.had_allreduce) c.allreduce = [](double*, int64_t) { return true; };
  return c;
}

// "(1, 3)": the kept dims of an axis plan, for messages.
std::string kept_text(const AxisPlan& a) {
  std::string s = "(";
  for (int32_t d = 0; d < a.rank; ++d) {
    if (a.kept[d]) s += (s.size() > 1 ? ", " : "") + std::to_string(d);
  }
  return s + ")";
}

std::string sizes_text(const AxisPlan& a) {
  std::string s = "(";
  for (int32_t d = 0; d < a.rank; ++d) {
    if (a.kept[d]) s += (s.size() > 1 ? ", " : "") + std::to_string(a.kept_sizes[d]);
  }
  return s + ")";
}

std::string on_off(bool v) {
  return v ? "on" : "off";
}

}  // namespace

// The function-try-block turns every refusal of the build into corrupt_data: a state that
// passed its checksum but describes a layer bn_create would refuse is damaged or forged.
Layer::Layer(const LayerState& s, const Adjustment& adjustment, const Allreduce& allreduce) try
    : Layer(build_config(s, adjustment), s.input_shape.data(), static_cast<int32_t>(s.input_shape.size())) {
  if (fused_ != s.fused) {
    fail(Status::corrupt_data, std::string("the state records the fused path ") + (s.fused ? "on" : "off") +
                                   " but its configuration gives " + (fused_ ? "on" : "off"));
  }
  const auto c = static_cast<size_t>(axes_.features);
  auto install = [&](std::vector<double>& target, const std::vector<double>& values) {
    if (values.size() != c) fail(Status::internal, "a state array does not have num_features values");
    target = values;
  };
  if (config_.scale) install(gamma_, s.gamma);
  if (config_.center) install(beta_, s.beta);
  install(moving_mean_, s.moving_mean);
  install(moving_variance_, s.moving_variance);
  if (config_.renorm.enabled) {
    install(renorm_mean_, s.renorm_mean);
    install(renorm_stddev_, s.renorm_stddev);
    install(moving_stddev_, s.moving_stddev);
  }
  config_.adjustment = adjustment;
  had_adjustment_ = s.had_adjustment || static_cast<bool>(adjustment);
  // The decision was taken as the saved layer's (build_config); the layer synchronizes iff
  // `allreduce` is given, whatever the saved layer did.
  config_.allreduce = allreduce;
  had_allreduce_ = s.had_allreduce;
  if (allreduce) {
    sync_.resize(c);
    sync_shift_.assign(c, 0.0);
  } else {
    sync_ = SyncScratch{};
    sync_shift_.clear();
  }
  training_ = s.training;
  mode_ = s.mode;
  updates_ = s.step_count;
  inference_stale_ = true;
  refresh_inference_transform();
} catch (const Error& e) {
  if (e.status() == Status::corrupt_data || e.status() == Status::internal) throw;
  throw Error(Status::corrupt_data, std::string("the state's configuration is refused: ") + e.what());
}

LayerState Layer::state() const {
  Access shared(users_, false);
  LayerState s;
  s.config = config_;
  s.config.adjustment = nullptr;
  s.config.allreduce = nullptr;
  s.had_adjustment = had_adjustment_;
  s.had_allreduce = had_allreduce_;
  s.input_shape = input_shape_;
  s.fused = fused_;
  s.training = training_;
  s.mode = mode_;
  s.step_count = updates_;
  s.features = axes_.features;
  if (config_.scale) s.gamma = gamma_;
  if (config_.center) s.beta = beta_;
  s.moving_mean = moving_mean_;
  s.moving_variance = moving_variance_;
  if (config_.renorm.enabled) {
    s.renorm_mean = renorm_mean_;
    s.renorm_stddev = renorm_stddev_;
    s.moving_stddev = moving_stddev_;
  }
  return s;
}

void Layer::check_fits(const Layer& o) const {
  if (o.config_.dtype != config_.dtype) {
    fail(Status::invalid_argument, std::string("the state is of a ") + dtype_name(o.config_.dtype) +
                                       " layer but this layer's dtype is " + dtype_name(config_.dtype));
  }
  if (o.axes_.rank != axes_.rank) {
    fail(Status::shape, "the state is of a layer built for rank " + std::to_string(o.axes_.rank) +
                            " but this layer was built for rank " + std::to_string(axes_.rank));
  }
  if (o.axes_.kept != axes_.kept) {
    fail(Status::shape,
         "the state normalizes over the dims " + kept_text(o.axes_) + " but this layer over " + kept_text(axes_));
  }
  if (o.axes_.kept_sizes != axes_.kept_sizes) {
    fail(Status::shape,
         "the state's kept sizes are " + sizes_text(o.axes_) + " but this layer's are " + sizes_text(axes_));
  }
  auto same = [](const char* what, bool state, bool mine) {
    if (state != mine) {
      fail(Status::invalid_argument, std::string("the state's layer has ") + what + " " + on_off(state) +
                                         " but this layer has it " + on_off(mine));
    }
  };
  same("scale (gamma)", o.config_.scale, config_.scale);
  same("center (beta)", o.config_.center, config_.center);
  same("renorm", o.config_.renorm.enabled, config_.renorm.enabled);
  same("ghost batches (virtual_batch_size > 0)", o.config_.virtual_batch_size > 0, config_.virtual_batch_size > 0);
}

void Layer::load(const LayerState& s) {
  Layer probe(s, Adjustment{}, Allreduce{});  // corrupt_data: the state's own configuration is refused
  Access exclusive(users_, true);
  check_fits(probe);
  std::unique_ptr<Layer> with_callback;
  if (config_.adjustment) {
    try {
      with_callback = std::make_unique<Layer>(s, config_.adjustment, config_.allreduce);
    } catch (const Error& e) {
      fail(Status::invalid_argument,
           std::string("the state does not fit this layer's adjustment callback: ") + e.what());
    }
  } else if (config_.allreduce) {
    // Cannot be refused: the allreduce callback does not take part in the build (build_config).
    with_callback = std::make_unique<Layer>(s, Adjustment{}, config_.allreduce);
  }
  // Commit: nothing below can fail.
  adopt(with_callback ? *with_callback : probe);
}

static_assert(std::is_nothrow_move_constructible_v<Config> && std::is_nothrow_move_assignable_v<Config>,
              "Layer::adopt swaps configurations and must not throw");

void Layer::adopt(Layer& o) noexcept {
  using std::swap;
  swap(config_, o.config_);
  input_shape_.swap(o.input_shape_);
  had_adjustment_ = o.had_adjustment_;
  had_allreduce_ = o.had_allreduce_;
  fused_ = o.fused_;
  epsilon_ = o.epsilon_;
  training_ = o.training_;
  mode_ = o.mode_;
  for (auto [mine, theirs] : {std::pair{&gamma_, &o.gamma_},
                              {&beta_, &o.beta_},
                              {&moving_mean_, &o.moving_mean_},
                              {&moving_variance_, &o.moving_variance_},
                              {&renorm_mean_, &o.renorm_mean_},
                              {&renorm_stddev_, &o.renorm_stddev_},
                              {&moving_stddev_, &o.moving_stddev_}}) {
    mine->swap(*theirs);
  }
  updates_ = o.updates_;
  storage_shape_.swap(o.storage_shape_);
  swap(infer_f32_, o.infer_f32_);
  swap(infer_f64_, o.infer_f64_);
  swap(relu_f32_, o.relu_f32_);
  swap(relu_f64_, o.relu_f64_);
  inference_stale_ = o.inference_stale_;
  // A loaded layer has no saved forward and no batch statistics, as a new one; the ghost
  // plan depends on the virtual batch size, which may have changed.
  saved_.valid = false;
  have_batch_statistics_ = false;
  ghost_.valid = false;
  // The synchronization shift restarts at 0, as a new layer's: it must be bitwise the same on
  // every replica, and a replica restarted from the blob has 0 (the shift is not saved).
  std::fill(sync_shift_.begin(), sync_shift_.end(), 0.0);
}

int64_t Layer::step_count() const {
  Access shared(users_, false);
  return updates_;
}

void Layer::set_step_count(int64_t count) {
  if (count < 0) fail(Status::invalid_argument, "count=" + std::to_string(count) + " but it must be >= 0");
  Access exclusive(users_, true);
  updates_ = count;
}

}  // namespace bn
