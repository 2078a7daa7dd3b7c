// The library layer and the reference model side by side: every change is applied to both,
// and step() runs one forward and backward on both and compares everything observable
// (y, every parameter and statistic, dx, dgamma, dbeta). Used by the renorm, adjustment,
// mode-flag and ghost-batch tests.
//
// Tolerances are relative to the magnitude of the terms behind each value (as in
// test_sweep.cpp): 1e-10 for f64 and 1e-6 for f32 (about 8 float ulps). The statistics that
// are stored after every step (moving, renorm) carry the rounding of earlier steps along,
// so their scale is the largest magnitude seen so far; values computed from the moving
// statistics inherit it through the conditioning factors in widen_*().
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "compare.hpp"
#include "lib_layer.hpp"
#include "reference.hpp"

namespace bn_test {

// The C name of a parameter, for messages ("?" for an unknown value).
const char* param_name(bn_param p);

double tolerance(RefDtype dtype);

class Twin {
 public:
  Twin(const RefConfig& cfg, const std::vector<int64_t>& build_shape);

  // BN_OK when both were created; otherwise the library's status (the reference's refusal,
  // if any, in refusal()).
  bn_status created() const { return created_; }
  bool ok() const { return created_ == BN_OK && ref_ != nullptr; }
  const std::string& refusal() const { return refusal_; }
  LibLayer& lib() { return lib_; }
  RefLayer& ref() { return *ref_; }
  size_t features() const { return static_cast<size_t>(ref_->num_features()); }
  const RefConfig& config() const { return cfg_; }

  // Changes applied to both (REQUIREd to succeed on the library).
  void set_training(bool training);
  void set_trainable(bool trainable);
  void set_mode(int flags);
  void set_momentum(double momentum);
  void set_renorm_clipping(double rmax, double rmin, double dmax);
  void set_renorm_momentum(double momentum);
  void set_param(bn_param which, const std::vector<double>& values);  // values rounded to the dtype
  void set_adjustment(const std::vector<double>& scale, const std::vector<double>& bias);

  // One forward (and backward) on both. A call the reference refuses must fail with
  // BN_ERR_SHAPE and change nothing. Returns false at the first mismatch (after CHECKing it).
  bool step(const std::vector<int64_t>& shape, const std::vector<double>& x, const std::vector<double>& dy,
            bool backward = true);

  // Compares every parameter and statistic with the reference (CHECKs); false on a mismatch.
  bool compare_state();

 private:
  bool expect(const Comparison& c);
  void widen_moving(const std::vector<int64_t>& shape, const std::vector<double>& x, const std::vector<double>& mv,
                    const std::vector<double>& mag_mm, const std::vector<double>& mag_mv, RefForward* fw,
                    RefGrads* g, const std::vector<double>& dy) const;

  RefConfig cfg_;
  std::vector<bool> kept_;
  LibLayer lib_;
  std::unique_ptr<RefLayer> ref_;
  bn_status created_ = BN_OK;
  std::string refusal_;
  bool updated_ = false;  // some forward has updated the moving statistics
  // Per feature: the largest magnitude seen so far behind each stored statistic.
  std::vector<double> mag_mm_, mag_mv_, mag_ms_, mag_rm_, mag_rs_;
};

}  // namespace bn_test
