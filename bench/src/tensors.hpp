// One case's data, shared by every implementation, and the three timed modes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "cases.hpp"

namespace bn::bench {

enum class Mode { kInference, kTraining, kBackward };
constexpr Mode kModes[] = {Mode::kInference, Mode::kTraining, Mode::kBackward};
const char* mode_name(Mode mode);  // "fwd-infer", "fwd-train", "backward"

// Keras' default epsilon, used by every implementation.
constexpr float kEpsilon = 1e-3f;

// 64-byte aligned float array (no initialization; the pages are touched by fill()).
class FloatBuffer {
 public:
  FloatBuffer() = default;
  explicit FloatBuffer(size_t count);
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  size_t size() const { return size_; }
  float& operator[](size_t i) { return data_[i]; }
  float operator[](size_t i) const { return data_[i]; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], Free> data_;
  size_t size_ = 0;
};

// x and dy are inputs; y, dx, dgamma, dbeta are written by whichever implementation runs.
// gamma, beta and the moving statistics are inputs too (inference uses the latter).
struct Tensors {
  explicit Tensors(const Case& k);
  const Case& shape;
  FloatBuffer x, y, dy, dx;
  std::vector<float> gamma, beta, moving_mean, moving_var, dgamma, dbeta;

  // Channel of element i in memory order.
  int64_t channel_of(int64_t i) const {
    return shape.channels_last ? i % shape.c : (i / shape.s) % shape.c;
  }
  // Poisons the outputs so that a check never passes on a previous implementation's result.
  void poison_outputs();
};

}  // namespace bn::bench
