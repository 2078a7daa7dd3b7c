#include "tensors.hpp"

#include <cmath>
#include <limits>
#include <new>

namespace bn::bench {
namespace {

// Small deterministic generator (64-bit LCG, top bits) -> uniform [0, 1).
struct Lcg {
  uint64_t state;
  float next() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<float>(state >> 40) * (1.0f / 16777216.0f);
  }
};

}  // namespace

const char* mode_name(Mode mode) {
  switch (mode) {
    case Mode::kInference: return "fwd-infer";
    case Mode::kTraining: return "fwd-train";
    case Mode::kBackward: return "backward";
  }
  return "?";
}

FloatBuffer::FloatBuffer(size_t count) : size_(count) {
  const size_t bytes = ((count * sizeof(float) + 63) / 64) * 64;
  data_.reset(static_cast<float*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes)));
  if (!data_) throw std::bad_alloc();
}

Tensors::Tensors(const Case& k)
    : shape(k),
      x(static_cast<size_t>(k.elements())),
      y(static_cast<size_t>(k.elements())),
      dy(static_cast<size_t>(k.elements())),
      dx(static_cast<size_t>(k.elements())),
      gamma(k.c), beta(k.c), moving_mean(k.c), moving_var(k.c), dgamma(k.c), dbeta(k.c) {
  Lcg g{0x5eed};
  for (int64_t f = 0; f < k.c; ++f) {
    gamma[f] = 0.5f + g.next();
    beta[f] = g.next() - 0.5f;
    moving_mean[f] = 0.2f * g.next() - 0.1f;
    moving_var[f] = 0.5f + g.next();
  }
  // x: uniform noise around a per-channel offset, so means differ from channel to channel.
  const int64_t m = k.elements();
  for (int64_t i = 0; i < m; ++i) {
    x[i] = 2.0f * g.next() - 1.0f + 0.1f * static_cast<float>(channel_of(i) % 7);
    dy[i] = 2.0f * g.next() - 1.0f;
  }
  poison_outputs();
}

void Tensors::poison_outputs() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (size_t i = 0; i < y.size(); ++i) y[i] = nan;
  for (size_t i = 0; i < dx.size(); ++i) dx[i] = nan;
  for (auto& v : dgamma) v = nan;
  for (auto& v : dbeta) v = nan;
}

}  // namespace bn::bench
