// The C boundary: every entry point validates its C arguments, translates them to the
// core's types and calls the core through guarded(), which maps every exception to a
// status and a thread-local message. Nothing else lives here.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "batchnorm/batchnorm.h"
#include "io/file.hpp"
#include "layer/config.hpp"
#include "layer/error.hpp"
#include "layer/keras_params.hpp"
#include "layer/layer.hpp"
#include "layer/state_io.hpp"

struct bn_config {
  bn::Config config;
};

struct bn_layer {
  template <class... Args>
  explicit bn_layer(Args&&... args) : layer(std::forward<Args>(args)...) {}
  bn::Layer layer;
};

namespace {

static_assert(BN_ERR_INVALID_ARGUMENT == static_cast<int32_t>(bn::Status::invalid_argument), "status");
static_assert(BN_ERR_SHAPE == static_cast<int32_t>(bn::Status::shape), "status");
static_assert(BN_ERR_STATE == static_cast<int32_t>(bn::Status::state), "status");
static_assert(BN_ERR_OUT_OF_MEMORY == static_cast<int32_t>(bn::Status::out_of_memory), "status");
static_assert(BN_ERR_UNSUPPORTED == static_cast<int32_t>(bn::Status::unsupported), "status");
static_assert(BN_ERR_CORRUPT_DATA == static_cast<int32_t>(bn::Status::corrupt_data), "status");
static_assert(BN_ERR_CALLBACK == static_cast<int32_t>(bn::Status::callback), "status");
static_assert(BN_ERR_NONFINITE == static_cast<int32_t>(bn::Status::nonfinite), "status");
static_assert(BN_ERR_INTERNAL == static_cast<int32_t>(bn::Status::internal), "status");
static_assert(BN_F16 == static_cast<int32_t>(bn::DType::f16), "dtype");
static_assert(BN_PARAM_MOVING_STDDEV == static_cast<int32_t>(bn::Param::moving_stddev), "param");
static_assert(BN_NONFINITE_SKIP_UPDATE == static_cast<int32_t>(bn::NonFinite::skip_update), "nonfinite");
static_assert(BN_NONFINITE_PROPAGATE == static_cast<int32_t>(bn::NonFinite::propagate), "nonfinite");
static_assert(BN_MODE_BATCH_STATISTICS == bn::Layer::kBatchStatistics, "mode");
static_assert(BN_MODE_UPDATE_MOVING == bn::Layer::kUpdateMoving, "mode");
static_assert(BN_MODE_PARAM_GRADIENTS == bn::Layer::kParamGradients, "mode");
static_assert(BN_INITIALIZER_TRUNCATED_NORMAL == static_cast<int32_t>(bn::InitKind::truncated_normal), "initializer");
static_assert(BN_INITIALIZER_ZEROS == static_cast<int32_t>(bn::InitKind::zeros), "initializer");
static_assert(BN_CONSTRAINT_MIN_MAX_NORM == static_cast<int32_t>(bn::ConstraintKind::min_max_norm), "constraint");
static_assert(BN_CONSTRAINT_NONE == static_cast<int32_t>(bn::ConstraintKind::none), "constraint");

// Fixed buffer: no allocation, so out-of-memory can still be reported.
thread_local char g_last_error[512] = "";

bn_status set_error(bn_status status, const char* function, const char* message) {
  std::snprintf(g_last_error, sizeof g_last_error, "%s: %s", function, message);
  return status;
}

// The single guard every entry point goes through.
template <class Fn>
bn_status guarded(const char* function, Fn&& fn) noexcept {
  try {
    fn();
    return BN_OK;
  } catch (const bn::Error& e) {
    return set_error(static_cast<bn_status>(e.status()), function, e.what());
  } catch (const std::bad_alloc&) {
    return set_error(BN_ERR_OUT_OF_MEMORY, function, "out of memory");
  } catch (const std::exception& e) {
    return set_error(BN_ERR_INTERNAL, function, e.what());
  } catch (...) {
    return set_error(BN_ERR_INTERNAL, function, "unknown internal error");
  }
}

[[noreturn]] void invalid(const std::string& message) { bn::fail(bn::Status::invalid_argument, message); }

void require(const void* pointer, const char* name) {
  if (!pointer) invalid(std::string(name) + " is NULL");
}

bool as_flag(int value, const char* name) {
  if (value != 0 && value != 1) invalid(std::string(name) + "=" + std::to_string(value) + " but it must be 0 or 1");
  return value == 1;
}

template <class Enum>
Enum as_enum(int32_t value, int32_t lo, int32_t hi, const char* name) {
  if (value < lo || value > hi) {
    invalid(std::string(name) + "=" + std::to_string(value) + " is not a known value (expected " +
            std::to_string(lo) + " to " + std::to_string(hi) + ")");
  }
  return static_cast<Enum>(value);
}

void require_shape(const int64_t* shape, int32_t ndim, const char* name) {
  require(shape, name);
  if (ndim < 1 || ndim > bn::kMaxRank) {
    bn::fail(bn::Status::shape, "ndim=" + std::to_string(ndim) + " but the rank must be 1 to " +
                                    std::to_string(bn::kMaxRank));
  }
}

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void check_momentum(double momentum) {
  if (!(momentum >= 0.0 && momentum <= 1.0)) {
    invalid("momentum=" + number(momentum) + " but it must be in [0, 1]");
  }
}


void require_count(const bn_layer* layer, int64_t count) {
  if (count != layer->layer.num_features()) {
    bn::fail(bn::Status::shape, "count=" + std::to_string(count) + " but the layer has " +
                                    std::to_string(layer->layer.num_features()) + " features");
  }
}

// Scales each output row of the weights and folds the bias, in the parameter element type T.
template <class T>
void fold_into(const std::vector<double>& scale, const std::vector<double>& shift, T* weights, int64_t per_feature,
               const T* bias, T* bias_out) {
  for (size_t o = 0; o < scale.size(); ++o) {
    T* row = weights ? weights + static_cast<int64_t>(o) * per_feature : nullptr;
    for (int64_t k = 0; row && k < per_feature; ++k) row[k] = static_cast<T>(static_cast<double>(row[k]) * scale[o]);
    const double b = bias ? static_cast<double>(bias[o]) : 0.0;
    bias_out[o] = static_cast<T>(b * scale[o] + shift[o]);
  }
}

// A state blob in the caller's memory.
void require_blob(const void* data, int64_t size) {
  require(data, "data");
  if (size < 0) invalid("size=" + std::to_string(size) + " but it must be >= 0");
}

const uint8_t* bytes_of(const void* data) { return static_cast<const uint8_t*>(data); }

// A state file's bytes: a foreign or inconsistent file is refused from its header.
std::vector<uint8_t> read_state_file(const char* path) {
  require(path, "path");
  const std::string file(path);
  try {
    return bn::io::read_file(file, bn::kStateHeaderSize, [](const uint8_t* p, size_t n, uint64_t file_size) {
      bn::check_state_prefix(p, n, file_size);
    });
  } catch (const bn::Error& e) {
    if (e.status() != bn::Status::corrupt_data) throw;
    bn::fail(e.status(), "'" + file + "': " + e.what());
  }
}

// Decodes a file's bytes, naming the file in a refusal.
bn::LayerState decode_file(const char* path, const std::vector<uint8_t>& bytes) {
  try {
    return bn::decode_state(bytes.data(), bytes.size());
  } catch (const bn::Error& e) {
    if (e.status() != bn::Status::corrupt_data) throw;
    bn::fail(e.status(), "'" + std::string(path) + "': " + e.what());
  }
}

// GAMMA or BETA, the parameters that have regularizers and constraints.
bn::Param trainable_param(bn_param which) {
  if (which != BN_PARAM_GAMMA && which != BN_PARAM_BETA) {
    invalid("which=" + std::to_string(which) + " but only BN_PARAM_GAMMA (0) and BN_PARAM_BETA (1) are trainable");
  }
  return static_cast<bn::Param>(which);
}

}  // namespace

extern "C" {

uint32_t bn_version(void) { return BN_VERSION_NUMBER; }

const char* bn_version_string(void) {
#define BN_STR2(x) #x
#define BN_STR(x) BN_STR2(x)
  return BN_STR(BN_VERSION_MAJOR) "." BN_STR(BN_VERSION_MINOR) "." BN_STR(BN_VERSION_PATCH);
}

const char* bn_status_string(bn_status status) {
  switch (status) {
    case BN_OK: return "BN_OK";
    case BN_ERR_INVALID_ARGUMENT: return "BN_ERR_INVALID_ARGUMENT";
    case BN_ERR_SHAPE: return "BN_ERR_SHAPE";
    case BN_ERR_STATE: return "BN_ERR_STATE";
    case BN_ERR_OUT_OF_MEMORY: return "BN_ERR_OUT_OF_MEMORY";
    case BN_ERR_UNSUPPORTED: return "BN_ERR_UNSUPPORTED";
    case BN_ERR_CORRUPT_DATA: return "BN_ERR_CORRUPT_DATA";
    case BN_ERR_CALLBACK: return "BN_ERR_CALLBACK";
    case BN_ERR_NONFINITE: return "BN_ERR_NONFINITE";
    case BN_ERR_INTERNAL: return "BN_ERR_INTERNAL";
    default: return "BN_UNKNOWN_STATUS";
  }
}

const char* bn_last_error(void) { return g_last_error; }

// ---------------------------------------------------------------------------
// Config
bn_status bn_config_create(bn_config** out) {
  return guarded("bn_config_create", [&] {
    require(out, "out");
    *out = new bn_config();
  });
}

void bn_config_destroy(bn_config* cfg) { delete cfg; }

bn_status bn_config_set_axes(bn_config* cfg, const int32_t* axes, int32_t count) {
  return guarded("bn_config_set_axes", [&] {
    require(cfg, "cfg");
    require(axes, "axes");
    if (count < 1 || count > bn::kMaxRank) {
      invalid("count=" + std::to_string(count) + " but it must be 1 to " + std::to_string(bn::kMaxRank));
    }
    for (int32_t i = 0; i < count; ++i) {
      if (axes[i] <= -bn::kMaxRank - 1 || axes[i] >= bn::kMaxRank) {
        invalid("axes[" + std::to_string(i) + "]=" + std::to_string(axes[i]) + " is out of range for any rank up to " +
                std::to_string(bn::kMaxRank));
      }
      for (int32_t j = 0; j < i; ++j) {
        if (axes[j] == axes[i]) invalid("axes[" + std::to_string(i) + "]=" + std::to_string(axes[i]) + " repeats axes[" + std::to_string(j) + "]");
      }
    }
    cfg->config.axes.assign(axes, axes + count);
  });
}

bn_status bn_config_set_momentum(bn_config* cfg, double momentum) {
  return guarded("bn_config_set_momentum", [&] {
    require(cfg, "cfg");
    check_momentum(momentum);
    cfg->config.momentum = momentum;
  });
}

bn_status bn_config_set_epsilon(bn_config* cfg, double epsilon) {
  return guarded("bn_config_set_epsilon", [&] {
    require(cfg, "cfg");
    if (!std::isfinite(epsilon) || epsilon < 0) invalid("epsilon=" + number(epsilon) + " but it must be finite and >= 0");
    cfg->config.epsilon = epsilon;
  });
}

bn_status bn_config_set_center(bn_config* cfg, int enabled) {
  return guarded("bn_config_set_center", [&] {
    require(cfg, "cfg");
    cfg->config.center = as_flag(enabled, "enabled");
  });
}

bn_status bn_config_set_scale(bn_config* cfg, int enabled) {
  return guarded("bn_config_set_scale", [&] {
    require(cfg, "cfg");
    cfg->config.scale = as_flag(enabled, "enabled");
  });
}

bn_status bn_config_set_dtype(bn_config* cfg, bn_dtype dtype) {
  return guarded("bn_config_set_dtype", [&] {
    require(cfg, "cfg");
    cfg->config.dtype = as_enum<bn::DType>(dtype, BN_F32, BN_F16, "dtype");
  });
}

bn_status bn_config_set_trainable(bn_config* cfg, int trainable) {
  return guarded("bn_config_set_trainable", [&] {
    require(cfg, "cfg");
    cfg->config.trainable = as_flag(trainable, "trainable");
  });
}

bn_status bn_config_set_fused(bn_config* cfg, bn_fused fused) {
  return guarded("bn_config_set_fused", [&] {
    require(cfg, "cfg");
    cfg->config.fused = as_enum<bn::Fused>(fused, BN_FUSED_AUTO, BN_FUSED_OFF, "fused");
  });
}

bn_status bn_config_set_keras_rules(bn_config* cfg, bn_keras_rules rules) {
  return guarded("bn_config_set_keras_rules", [&] {
    require(cfg, "cfg");
    cfg->config.rules = as_enum<bn::KerasRules>(rules, BN_KERAS_V1, BN_KERAS_V2, "rules");
  });
}

bn_status bn_config_set_renorm(bn_config* cfg, int enabled, double rmax, double rmin, double dmax,
                               double renorm_momentum) {
  return guarded("bn_config_set_renorm", [&] {
    require(cfg, "cfg");
    bn::Renorm r;
    r.enabled = as_flag(enabled, "enabled");
    if (r.enabled) {
      r.rmax = rmax;
      r.rmin = rmin;
      r.dmax = dmax;
      r.momentum = renorm_momentum;
      bn::check_renorm(r);
    }
    cfg->config.renorm = r;
  });
}

bn_status bn_config_set_virtual_batch_size(bn_config* cfg, int64_t size) {
  return guarded("bn_config_set_virtual_batch_size", [&] {
    require(cfg, "cfg");
    if (size < 0) invalid("size=" + std::to_string(size) + " but it must be 0 (off) or positive");
    cfg->config.virtual_batch_size = size;
  });
}

bn_status bn_config_set_adjustment(bn_config* cfg, bn_adjustment_fn fn, void* user_data) {
  return guarded("bn_config_set_adjustment", [&] {
    require(cfg, "cfg");
    if (!fn) {
      cfg->config.adjustment = nullptr;
      return;
    }
    // The callback returns a status and must not unwind; any non-BN_OK fails the forward.
    cfg->config.adjustment = [fn, user_data](const int64_t* shape, int32_t ndim, double* scale, double* bias,
                                             int64_t features) {
      return fn(user_data, shape, ndim, scale, bias, features) == BN_OK;
    };
  });
}

bn_status bn_config_set_moving_variance(bn_config* cfg, bn_moving_variance convention) {
  return guarded("bn_config_set_moving_variance", [&] {
    require(cfg, "cfg");
    cfg->config.moving_variance = as_enum<bn::MovingVariance>(convention, BN_MOVING_VARIANCE_AUTO,
                                                              BN_MOVING_VARIANCE_UNBIASED, "convention");
  });
}

bn_status bn_config_set_cumulative_average(bn_config* cfg, int enabled) {
  return guarded("bn_config_set_cumulative_average", [&] {
    require(cfg, "cfg");
    cfg->config.cumulative_average = as_flag(enabled, "enabled");
  });
}

bn_status bn_config_set_single_value_policy(bn_config* cfg, bn_single_value_policy policy) {
  return guarded("bn_config_set_single_value_policy", [&] {
    require(cfg, "cfg");
    cfg->config.single_value =
        as_enum<bn::SingleValue>(policy, BN_SINGLE_VALUE_COMPUTE, BN_SINGLE_VALUE_REJECT, "policy");
  });
}

bn_status bn_config_set_nonfinite_policy(bn_config* cfg, bn_nonfinite_policy policy) {
  return guarded("bn_config_set_nonfinite_policy", [&] {
    require(cfg, "cfg");
    cfg->config.nonfinite =
        as_enum<bn::NonFinite>(policy, BN_NONFINITE_REFUSE, BN_NONFINITE_SKIP_UPDATE, "policy");
  });
}

bn_status bn_config_set_relu(bn_config* cfg, int enabled) {
  return guarded("bn_config_set_relu", [&] {
    require(cfg, "cfg");
    cfg->config.relu = as_flag(enabled, "enabled");
  });
}

bn_status bn_config_set_allreduce(bn_config* cfg, bn_allreduce_fn fn, void* user_data) {
  return guarded("bn_config_set_allreduce", [&] {
    require(cfg, "cfg");
    if (!fn) {
      cfg->config.allreduce = nullptr;
      return;
    }
    // The callback returns a status and must not unwind; any non-BN_OK fails the call.
    cfg->config.allreduce = [fn, user_data](double* buffer, int64_t count) {
      return fn(user_data, buffer, count) == BN_OK;
    };
  });
}

bn_status bn_config_set_initializer(bn_config* cfg, bn_param which, bn_initializer kind, double a, double b,
                                    uint64_t seed) {
  return guarded("bn_config_set_initializer", [&] {
    require(cfg, "cfg");
    const auto p = as_enum<bn::Param>(which, BN_PARAM_GAMMA, BN_PARAM_MOVING_STDDEV, "which");
    if (which > BN_PARAM_MOVING_VARIANCE) {
      invalid("which=" + std::to_string(which) + " has no initializer of its own (expected BN_PARAM_GAMMA, _BETA, "
              "_MOVING_MEAN or _MOVING_VARIANCE: 0 to 3)");
    }
    const bn::Initializer init{
        as_enum<bn::InitKind>(kind, BN_INITIALIZER_ZEROS, BN_INITIALIZER_TRUNCATED_NORMAL, "kind"), a, b, seed};
    bn::check_initializer(init, p == bn::Param::moving_variance);
    bn::KerasParamOptions& k = cfg->config.keras;
    switch (p) {
      case bn::Param::gamma: k.gamma_init = init; break;
      case bn::Param::beta: k.beta_init = init; break;
      case bn::Param::moving_mean: k.moving_mean_init = init; break;
      default: k.moving_variance_init = init; break;
    }
  });
}

bn_status bn_config_set_regularizer(bn_config* cfg, bn_param which, double l1, double l2) {
  return guarded("bn_config_set_regularizer", [&] {
    require(cfg, "cfg");
    const bn::Param p = trainable_param(which);
    const bn::Regularizer reg{l1, l2};
    bn::check_regularizer(reg);
    (p == bn::Param::gamma ? cfg->config.keras.gamma_regularizer : cfg->config.keras.beta_regularizer) = reg;
  });
}

bn_status bn_config_set_constraint(bn_config* cfg, bn_param which, bn_constraint kind, double min_value,
                                   double max_value, double rate, const int32_t* axes, int32_t axis_count) {
  return guarded("bn_config_set_constraint", [&] {
    require(cfg, "cfg");
    const bn::Param p = trainable_param(which);
    bn::Constraint c;
    c.kind = as_enum<bn::ConstraintKind>(kind, BN_CONSTRAINT_NONE, BN_CONSTRAINT_MIN_MAX_NORM, "kind");
    c.min_value = min_value;
    c.max_value = max_value;
    c.rate = rate;
    if (c.kind != bn::ConstraintKind::none && c.kind != bn::ConstraintKind::non_neg) {
      if (axis_count < 1 || axis_count > bn::kMaxRank) {
        invalid("axis_count=" + std::to_string(axis_count) + " but it must be 1 to " + std::to_string(bn::kMaxRank));
      }
      require(axes, "axes");
      c.axes.assign(axes, axes + axis_count);
    }
    bn::check_constraint(c);
    (p == bn::Param::gamma ? cfg->config.keras.gamma_constraint : cfg->config.keras.beta_constraint) = c;
  });
}

// ---------------------------------------------------------------------------
// Layer
bn_status bn_create(const bn_config* cfg, const int64_t* input_shape, int32_t ndim, bn_layer** out) {
  return guarded("bn_create", [&] {
    require(cfg, "cfg");
    require(out, "out");
    require_shape(input_shape, ndim, "input_shape");
    *out = new bn_layer(cfg->config, input_shape, ndim);
  });
}

void bn_destroy(bn_layer* layer) { delete layer; }

int64_t bn_num_features(const bn_layer* layer) {
  if (!layer) {
    set_error(BN_ERR_INVALID_ARGUMENT, "bn_num_features", "layer is NULL");
    return -1;
  }
  return layer->layer.num_features();
}

bn_status bn_set_training(bn_layer* layer, int training) {
  return guarded("bn_set_training", [&] {
    require(layer, "layer");
    layer->layer.set_training(as_flag(training, "training"));
  });
}

bn_status bn_set_trainable(bn_layer* layer, int trainable) {
  return guarded("bn_set_trainable", [&] {
    require(layer, "layer");
    layer->layer.set_trainable(as_flag(trainable, "trainable"));
  });
}

bn_status bn_set_momentum(bn_layer* layer, double momentum) {
  return guarded("bn_set_momentum", [&] {
    require(layer, "layer");
    check_momentum(momentum);
    layer->layer.set_momentum(momentum);
  });
}

bn_status bn_set_renorm_clipping(bn_layer* layer, double rmax, double rmin, double dmax) {
  return guarded("bn_set_renorm_clipping", [&] {
    require(layer, "layer");
    layer->layer.set_renorm_clipping(rmax, rmin, dmax);
  });
}

bn_status bn_set_renorm_momentum(bn_layer* layer, double renorm_momentum) {
  return guarded("bn_set_renorm_momentum", [&] {
    require(layer, "layer");
    layer->layer.set_renorm_momentum(renorm_momentum);
  });
}

bn_status bn_set_nonfinite_policy(bn_layer* layer, bn_nonfinite_policy policy) {
  return guarded("bn_set_nonfinite_policy", [&] {
    require(layer, "layer");
    layer->layer.set_nonfinite_policy(
        as_enum<bn::NonFinite>(policy, BN_NONFINITE_REFUSE, BN_NONFINITE_SKIP_UPDATE, "policy"));
  });
}

bn_status bn_set_mode(bn_layer* layer, bn_mode flags) {
  return guarded("bn_set_mode", [&] {
    require(layer, "layer");
    layer->layer.set_mode(flags);
  });
}

bn_status bn_get_mode(const bn_layer* layer, bn_mode* flags) {
  return guarded("bn_get_mode", [&] {
    require(layer, "layer");
    require(flags, "flags");
    *flags = layer->layer.mode();
  });
}

bn_status bn_set_num_threads(bn_layer* layer, int32_t max_threads) {
  return guarded("bn_set_num_threads", [&] {
    require(layer, "layer");
    layer->layer.set_num_threads(max_threads);
  });
}

bn_status bn_get_fused(const bn_layer* layer, int* fused_out) {
  return guarded("bn_get_fused", [&] {
    require(layer, "layer");
    require(fused_out, "fused_out");
    *fused_out = layer->layer.fused() ? 1 : 0;
  });
}

bn_status bn_forward(bn_layer* layer, const int64_t* shape, int32_t ndim, const void* x, void* y) {
  return guarded("bn_forward", [&] {
    require(layer, "layer");
    require_shape(shape, ndim, "shape");
    require(x, "x");
    require(y, "y");
    layer->layer.forward(shape, ndim, {x, nullptr, y});
  });
}

bn_status bn_backward(bn_layer* layer, const int64_t* shape, int32_t ndim, const void* x, const void* dy, void* dx,
                      void* dgamma, void* dbeta) {
  return guarded("bn_backward", [&] {
    require(layer, "layer");
    require_shape(shape, ndim, "shape");
    require(x, "x");
    require(dy, "dy");
    layer->layer.backward(shape, ndim, {x, nullptr, dy, dx, nullptr, dgamma, dbeta});
  });
}

bn_status bn_forward_residual(bn_layer* layer, const int64_t* shape, int32_t ndim, const void* x, const void* residual,
                              void* y) {
  return guarded("bn_forward_residual", [&] {
    require(layer, "layer");
    require_shape(shape, ndim, "shape");
    require(x, "x");
    require(residual, "residual");
    require(y, "y");
    layer->layer.forward(shape, ndim, {x, residual, y});
  });
}

bn_status bn_backward_residual(bn_layer* layer, const int64_t* shape, int32_t ndim, const void* x, const void* y,
                               const void* dy, void* dx, void* dresidual, void* dgamma, void* dbeta) {
  return guarded("bn_backward_residual", [&] {
    require(layer, "layer");
    require_shape(shape, ndim, "shape");
    require(x, "x");
    require(y, "y");
    require(dy, "dy");
    if (dx && dx == dresidual) invalid("dx and dresidual are the same buffer");
    layer->layer.backward(shape, ndim, {x, y, dy, dx, dresidual, dgamma, dbeta});
  });
}

bn_status bn_get_param(const bn_layer* layer, bn_param which, void* out, int64_t count) {
  return guarded("bn_get_param", [&] {
    require(layer, "layer");
    const auto p = as_enum<bn::Param>(which, BN_PARAM_GAMMA, BN_PARAM_MOVING_STDDEV, "which");
    require(out, "out");
    layer->layer.get_param(p, out, count);
  });
}

bn_status bn_set_param(bn_layer* layer, bn_param which, const void* values, int64_t count) {
  return guarded("bn_set_param", [&] {
    require(layer, "layer");
    const auto p = as_enum<bn::Param>(which, BN_PARAM_GAMMA, BN_PARAM_MOVING_STDDEV, "which");
    require(values, "values");
    layer->layer.set_param(p, values, count);
  });
}

// ---------------------------------------------------------------------------
// Folding

bn_status bn_fold(const bn_layer* layer, void* scale, void* shift, int64_t count) {
  return guarded("bn_fold", [&] {
    require(layer, "layer");
    require(scale, "scale");
    require(shift, "shift");
    require_count(layer, count);
    std::vector<double> k, t;
    layer->layer.fold(k, t);
    if (layer->layer.dtype() == bn::DType::f64) {
      std::copy(k.begin(), k.end(), static_cast<double*>(scale));
      std::copy(t.begin(), t.end(), static_cast<double*>(shift));
    } else {
      for (size_t f = 0; f < k.size(); ++f) {
        static_cast<float*>(scale)[f] = static_cast<float>(k[f]);
        static_cast<float*>(shift)[f] = static_cast<float>(t[f]);
      }
    }
  });
}

bn_status bn_fold_into(const bn_layer* layer, void* weights, int64_t weights_per_feature, const void* bias,
                       void* bias_out, int64_t count) {
  return guarded("bn_fold_into", [&] {
    require(layer, "layer");
    require(weights, "weights");
    require(bias_out, "bias_out");
    require_count(layer, count);
    if (weights_per_feature < 1) {
      invalid("weights_per_feature=" + std::to_string(weights_per_feature) + " but it must be at least 1");
    }
    std::vector<double> k, t;
    layer->layer.fold(k, t);
    if (layer->layer.dtype() == bn::DType::f64) {
      fold_into(k, t, static_cast<double*>(weights), weights_per_feature, static_cast<const double*>(bias),
                static_cast<double*>(bias_out));
    } else {
      fold_into(k, t, static_cast<float*>(weights), weights_per_feature, static_cast<const float*>(bias),
                static_cast<float*>(bias_out));
    }
  });
}

// ---------------------------------------------------------------------------
// Regularizers and constraints

bn_status bn_regularization_loss(const bn_layer* layer, double* loss_out) {
  return guarded("bn_regularization_loss", [&] {
    require(layer, "layer");
    require(loss_out, "loss_out");
    *loss_out = layer->layer.regularization_loss();
  });
}

bn_status bn_apply_constraints(bn_layer* layer) {
  return guarded("bn_apply_constraints", [&] {
    require(layer, "layer");
    layer->layer.apply_constraints();
  });
}

// ---------------------------------------------------------------------------
// State files

bn_status bn_save(const bn_layer* layer, void* buffer, int64_t capacity, int64_t* size_out) {
  return guarded("bn_save", [&] {
    require(layer, "layer");
    require(size_out, "size_out");
    if (capacity < 0) invalid("capacity=" + std::to_string(capacity) + " but it must be >= 0");
    if (!buffer && capacity != 0) {
      invalid("buffer is NULL but capacity=" + std::to_string(capacity) + " (NULL and 0 query the size)");
    }
    const std::vector<uint8_t> blob = bn::encode_state(layer->layer.state(), BN_VERSION_NUMBER);
    const auto size = static_cast<int64_t>(blob.size());
    if (buffer) {
      if (capacity < size) {
        invalid("capacity=" + std::to_string(capacity) + " but the state needs " + std::to_string(size) +
                " bytes (buffer NULL and capacity 0 query the size)");
      }
      std::memcpy(buffer, blob.data(), blob.size());
    }
    *size_out = size;
  });
}

bn_status bn_load(bn_layer* layer, const void* data, int64_t size) {
  return guarded("bn_load", [&] {
    require(layer, "layer");
    require_blob(data, size);
    layer->layer.load(bn::decode_state(bytes_of(data), static_cast<size_t>(size)));
  });
}

bn_status bn_create_from_state(const void* data, int64_t size, bn_layer** out) {
  return guarded("bn_create_from_state", [&] {
    require_blob(data, size);
    require(out, "out");
    const bn::LayerState state = bn::decode_state(bytes_of(data), static_cast<size_t>(size));
    *out = new bn_layer(state, bn::Adjustment{}, bn::Allreduce{});
  });
}

bn_status bn_save_file(const bn_layer* layer, const char* path) {
  return guarded("bn_save_file", [&] {
    require(layer, "layer");
    require(path, "path");
    const std::vector<uint8_t> blob = bn::encode_state(layer->layer.state(), BN_VERSION_NUMBER);
    bn::io::write_file_atomic(path, blob.data(), blob.size());
  });
}

bn_status bn_load_file(bn_layer* layer, const char* path) {
  return guarded("bn_load_file", [&] {
    require(layer, "layer");
    const std::vector<uint8_t> bytes = read_state_file(path);
    layer->layer.load(decode_file(path, bytes));
  });
}

bn_status bn_create_from_file(const char* path, bn_layer** out) {
  return guarded("bn_create_from_file", [&] {
    require(path, "path");
    require(out, "out");
    const std::vector<uint8_t> bytes = read_state_file(path);
    const bn::LayerState state = decode_file(path, bytes);
    *out = new bn_layer(state, bn::Adjustment{}, bn::Allreduce{});
  });
}

bn_status bn_get_dtype(const bn_layer* layer, bn_dtype* dtype_out) {
  return guarded("bn_get_dtype", [&] {
    require(layer, "layer");
    require(dtype_out, "dtype_out");
    *dtype_out = static_cast<bn_dtype>(layer->layer.dtype());
  });
}

bn_status bn_get_step_count(const bn_layer* layer, int64_t* count_out) {
  return guarded("bn_get_step_count", [&] {
    require(layer, "layer");
    require(count_out, "count_out");
    *count_out = layer->layer.step_count();
  });
}

bn_status bn_set_step_count(bn_layer* layer, int64_t count) {
  return guarded("bn_set_step_count", [&] {
    require(layer, "layer");
    layer->layer.set_step_count(count);
  });
}

}  // extern "C"
