// One case's data, shared by every implementation, and the three timed modes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "cases.hpp"

namespace bn::bench {

enum class Mode { kInference, kTraining, kBackward };
constexpr Mode kModes[] = {Mode::kInference, Mode::kTraining, Mode::kBackward};
const char* mode_name(Mode mode);  // "fwd-infer", "fwd-train", "backward"

// Keras' default epsilon, used by every implementation.
constexpr float kEpsilon = 1e-3f;

// Array without initialization (the pages are touched by the constructor of Tensors): 64-byte
// aligned by default, or `page_offset` bytes past a page boundary (see Placement).
template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t count, long page_offset = -1) : size_(count) {
    const size_t bytes = ((count * sizeof(T) + 63) / 64) * 64;
    if (page_offset < 0) {
      base_.reset(std::aligned_alloc(64, bytes == 0 ? 64 : bytes));
      data_ = static_cast<T*>(base_.get());
    } else {
      base_.reset(std::aligned_alloc(4096, bytes + 4096));
      data_ = reinterpret_cast<T*>(static_cast<char*>(base_.get()) + page_offset % 4096);
    }
    if (!base_) throw std::bad_alloc();
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }
  T operator[](size_t i) const { return data_[i]; }

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> base_;
  T* data_ = nullptr;
  size_t size_ = 0;
};
using FloatBuffer = AlignedBuffer<float>;
using HalfBuffer = AlignedBuffer<uint16_t>;  // bfloat16 or IEEE half bits

// x and dy are inputs; y, dx, dgamma, dbeta are written by whichever implementation runs.
// gamma, beta and the moving statistics are inputs too (inference uses the latter).
// 16-bit cases: the implementations read x16, dy16 and write y16, dx16; x and dy hold the
// same (rounded) values as floats for the check, and widen_outputs() copies y16, dx16 into
// y, dx.
// Where the tensors lie (--placement): the inputs x, dy `in` bytes and the outputs y, dx `out`
// bytes past a page boundary; by default (negative) each buffer is 64-byte aligned wherever the
// allocator puts it.
struct Placement {
  const char* name = "aligned";
  long in = -1, out = -1;
};

struct Tensors {
  explicit Tensors(const Case& k, const Placement& where = {});
  const Case& shape;
  FloatBuffer x, y, dy, dx;
  HalfBuffer x16, y16, dy16, dx16;  // empty for f32 cases
  bool half() const { return shape.dtype != "f32"; }
  // The tensors an implementation reads and writes, of the case's element type.
  const void* x_data() const { return half() ? static_cast<const void*>(x16.data()) : x.data(); }
  const void* dy_data() const { return half() ? static_cast<const void*>(dy16.data()) : dy.data(); }
  void* y_data() { return half() ? static_cast<void*>(y16.data()) : y.data(); }
  void* dx_data() { return half() ? static_cast<void*>(dx16.data()) : dx.data(); }
  void widen_outputs();
  std::vector<float> gamma, beta, moving_mean, moving_var, dgamma, dbeta;

  // Channel of element i in memory order.
  int64_t channel_of(int64_t i) const {
    return shape.channels_last ? i % shape.c : (i / shape.s) % shape.c;
  }
  // Poisons the outputs so that a check never passes on a previous implementation's result.
  void poison_outputs();
};

}  // namespace bn::bench
