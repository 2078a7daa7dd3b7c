#include "lib_layer.hpp"

namespace bn_test {
namespace {

// Buffers of the layer's dtype. At least one element so that an empty tensor still
// passes a non-NULL pointer (the C API requires x and y even when they are empty).
template <class T>
std::vector<T> to_buffer(const std::vector<double>& v) {
  std::vector<T> out(v.size() + 1, T(0));
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<T>(v[i]);
  return out;
}

template <class T>
void from_buffer(const std::vector<T>& buf, size_t n, std::vector<double>& out) {
  out.assign(n, 0.0);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<double>(buf[i]);
}

}  // namespace

std::string status_text(bn_status status) {
  return std::string(bn_status_string(status)) + ": " + bn_last_error();
}

bn_status adjustment_callback(void* user_data, const int64_t* shape, int32_t ndim, double* scale, double* bias,
                              int64_t num_features) {
  auto* src = static_cast<AdjustmentSource*>(user_data);
  ++src->calls;
  src->last_shape.assign(shape, shape + ndim);
  src->last_features = num_features;
  for (int64_t f = 0; f < num_features; ++f) {
    if (scale[f] != 1.0 || bias[f] != 0.0) src->arrived_identity = false;
  }
  if (src->result != BN_OK) {
    for (int64_t f = 0; f < num_features; ++f) {  // garbage the layer must not use
      scale[f] = 1e30;
      bias[f] = -1e30;
    }
    return src->result;
  }
  for (int64_t f = 0; f < num_features; ++f) {
    const auto i = static_cast<size_t>(f);
    if (i < src->scale.size()) scale[f] = src->scale[i];
    if (i < src->bias.size()) bias[f] = src->bias[i];
  }
  return BN_OK;
}

bn_status make_config(const RefConfig& c, bn_config** out, AdjustmentSource* adjustment) {
  bn_config* cfg = nullptr;
  bn_status st = bn_config_create(&cfg);
  if (st != BN_OK) return st;
  std::vector<int32_t> axes(c.axes.begin(), c.axes.end());
  const bn_fused fused = c.fused == RefFused::automatic ? BN_FUSED_AUTO
                         : c.fused == RefFused::on      ? BN_FUSED_ON
                                                        : BN_FUSED_OFF;
  const bn_moving_variance mv = c.moving_variance == RefMovingVariance::automatic ? BN_MOVING_VARIANCE_AUTO
                                : c.moving_variance == RefMovingVariance::biased  ? BN_MOVING_VARIANCE_BIASED
                                                                                  : BN_MOVING_VARIANCE_UNBIASED;
  const bn_status steps[] = {
      bn_config_set_axes(cfg, axes.data(), static_cast<int32_t>(axes.size())),
      bn_config_set_momentum(cfg, c.momentum),
      bn_config_set_epsilon(cfg, c.epsilon),
      bn_config_set_center(cfg, c.center ? 1 : 0),
      bn_config_set_scale(cfg, c.scale ? 1 : 0),
      bn_config_set_dtype(cfg, c.dtype == RefDtype::f32 ? BN_F32 : BN_F64),
      bn_config_set_trainable(cfg, c.trainable ? 1 : 0),
      bn_config_set_fused(cfg, fused),
      bn_config_set_keras_rules(cfg, c.rules == RefRules::v1 ? BN_KERAS_V1 : BN_KERAS_V2),
      bn_config_set_moving_variance(cfg, mv),
      bn_config_set_cumulative_average(cfg, c.cumulative_average ? 1 : 0),
      bn_config_set_single_value_policy(cfg, c.reject_single_value ? BN_SINGLE_VALUE_REJECT
                                                                   : BN_SINGLE_VALUE_COMPUTE),
      c.renorm.enabled ? bn_config_set_renorm(cfg, 1, c.renorm.rmax, c.renorm.rmin, c.renorm.dmax, c.renorm.momentum)
                       : BN_OK,
      c.virtual_batch_size != 0 ? bn_config_set_virtual_batch_size(cfg, c.virtual_batch_size) : BN_OK,
      c.adjustment ? bn_config_set_adjustment(cfg, adjustment_callback, adjustment) : BN_OK,
  };
  for (bn_status s : steps) {
    if (s != BN_OK) {
      bn_config_destroy(cfg);
      return s;
    }
  }
  *out = cfg;
  return BN_OK;
}

bn_status LibLayer::create(const RefConfig& cfg, const std::vector<int64_t>& shape,
                           const std::function<bn_status(bn_config*)>& extra) {
  bn_destroy(layer_);
  layer_ = nullptr;
  dtype_ = cfg.dtype;
  bn_config* c = nullptr;
  bn_status st = make_config(cfg, &c, &adjustment_);
  if (st != BN_OK) return st;
  if (extra) st = extra(c);
  if (st == BN_OK) st = bn_create(c, shape.data(), static_cast<int32_t>(shape.size()), &layer_);
  bn_config_destroy(c);
  if (st != BN_OK) layer_ = nullptr;
  return st;
}

int LibLayer::fused() const {
  int f = -1;
  if (bn_get_fused(layer_, &f) != BN_OK) return -1;
  return f;
}

bn_status LibLayer::forward(const std::vector<int64_t>& shape, const std::vector<double>& x,
                            std::vector<double>& y) {
  const auto ndim = static_cast<int32_t>(shape.size());
  if (dtype_ == RefDtype::f32) {
    const auto xb = to_buffer<float>(x);
    std::vector<float> yb(x.size() + 1, 0.0f);
    const bn_status st = bn_forward(layer_, shape.data(), ndim, xb.data(), yb.data());
    from_buffer(yb, x.size(), y);
    return st;
  }
  const auto xb = to_buffer<double>(x);
  std::vector<double> yb(x.size() + 1, 0.0);
  const bn_status st = bn_forward(layer_, shape.data(), ndim, xb.data(), yb.data());
  from_buffer(yb, x.size(), y);
  return st;
}

bn_status LibLayer::backward(const std::vector<int64_t>& shape, const std::vector<double>& x,
                             const std::vector<double>& dy, std::vector<double>& dx, std::vector<double>& dgamma,
                             std::vector<double>& dbeta) {
  const auto ndim = static_cast<int32_t>(shape.size());
  const auto c = static_cast<size_t>(features());
  if (dtype_ == RefDtype::f32) {
    const auto xb = to_buffer<float>(x), dyb = to_buffer<float>(dy);
    std::vector<float> dxb(x.size() + 1), dgb(c), dbb(c);
    const bn_status st = bn_backward(layer_, shape.data(), ndim, xb.data(), dyb.data(), dxb.data(), dgb.data(),
                                     dbb.data());
    from_buffer(dxb, x.size(), dx);
    from_buffer(dgb, c, dgamma);
    from_buffer(dbb, c, dbeta);
    return st;
  }
  const auto xb = to_buffer<double>(x), dyb = to_buffer<double>(dy);
  std::vector<double> dxb(x.size() + 1), dgb(c), dbb(c);
  const bn_status st =
      bn_backward(layer_, shape.data(), ndim, xb.data(), dyb.data(), dxb.data(), dgb.data(), dbb.data());
  from_buffer(dxb, x.size(), dx);
  from_buffer(dgb, c, dgamma);
  from_buffer(dbb, c, dbeta);
  return st;
}

bn_status LibLayer::get_param(bn_param which, std::vector<double>& out) const {
  const auto c = static_cast<size_t>(features());
  if (dtype_ == RefDtype::f32) {
    std::vector<float> b(c);
    const bn_status st = bn_get_param(layer_, which, b.data(), static_cast<int64_t>(c));
    from_buffer(b, c, out);
    return st;
  }
  std::vector<double> b(c);
  const bn_status st = bn_get_param(layer_, which, b.data(), static_cast<int64_t>(c));
  from_buffer(b, c, out);
  return st;
}

std::vector<double> LibLayer::param(bn_param which) const {
  std::vector<double> out;
  if (get_param(which, out) != BN_OK) out.clear();
  return out;
}

bn_status LibLayer::set_param(bn_param which, const std::vector<double>& values) {
  if (dtype_ == RefDtype::f32) {
    const auto b = to_buffer<float>(values);
    return bn_set_param(layer_, which, b.data(), static_cast<int64_t>(values.size()));
  }
  const auto b = to_buffer<double>(values);
  return bn_set_param(layer_, which, b.data(), static_cast<int64_t>(values.size()));
}

}  // namespace bn_test
