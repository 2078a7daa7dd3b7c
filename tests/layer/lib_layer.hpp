// A thin test-side handle over the C API: builds a bn_config from a RefConfig and moves
// tensors between std::vector<double> and the layer's dtype, so that tests can feed the
// same values to the library and to the reference model.
#pragma once

#include <batchnorm/batchnorm.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "reference.hpp"

namespace bn_test {

// The test's adjustment callback (Keras `adjustment`, B.4): writes the given per-feature
// scale and bias (or, when `result` is not BN_OK, scribbles on them and fails) and logs
// every call.
struct AdjustmentSource {
  std::vector<double> scale, bias;  // per feature; empty = leave the 1 and 0 the layer passes
  bn_status result = BN_OK;         // what the callback returns
  int calls = 0;
  bool arrived_identity = true;     // every call found scale 1 and bias 0 on entry
  std::vector<int64_t> last_shape;
  int64_t last_features = -1;
};
// The bn_adjustment_fn; user_data is an AdjustmentSource*.
bn_status adjustment_callback(void* user_data, const int64_t* shape, int32_t ndim, double* scale, double* bias,
                              int64_t num_features);

// Applies every setter of `cfg`; returns the first failing status (and destroys the config).
// With cfg.adjustment, the callback above is installed with `adjustment` as its user data.
bn_status make_config(const RefConfig& cfg, bn_config** out, AdjustmentSource* adjustment = nullptr);

class LibLayer {
 public:
  LibLayer() = default;
  ~LibLayer() { bn_destroy(layer_); }
  LibLayer(const LibLayer&) = delete;
  LibLayer& operator=(const LibLayer&) = delete;

  // Status of the config setters or of bn_create; valid() is false on failure. `extra`, when
  // set, applies further settings (e.g. an allreduce callback) before bn_create.
  bn_status create(const RefConfig& cfg, const std::vector<int64_t>& shape,
                   const std::function<bn_status(bn_config*)>& extra = {});
  bool valid() const { return layer_ != nullptr; }
  bn_layer* get() const { return layer_; }
  int64_t features() const { return bn_num_features(layer_); }
  int fused() const;

  bn_status forward(const std::vector<int64_t>& shape, const std::vector<double>& x, std::vector<double>& y);
  bn_status backward(const std::vector<int64_t>& shape, const std::vector<double>& x, const std::vector<double>& dy,
                     std::vector<double>& dx, std::vector<double>& dgamma, std::vector<double>& dbeta);
  bn_status get_param(bn_param which, std::vector<double>& out) const;
  std::vector<double> param(bn_param which) const;  // empty on failure
  bn_status set_param(bn_param which, const std::vector<double>& values);
  // The adjustment callback's source (used when the config has adjustment).
  AdjustmentSource& adjustment() { return adjustment_; }

 private:
  bn_layer* layer_ = nullptr;
  AdjustmentSource adjustment_;
  RefDtype dtype_ = RefDtype::f32;
};

// A message for INFO: status name and bn_last_error().
std::string status_text(bn_status status);

}  // namespace bn_test
