// Baseline: the plain loops anyone would write first. Two passes for the statistics
// (mean, then the centred sum of squares) accumulated in double, then y = x*scale + shift
// with the folded per-channel scale = gamma/sqrt(var+eps), shift = beta - mean*scale.
// Threads: channels first splits the channels among the team; channels last splits the
// rows (n, spatial) and adds the per-thread partial sums in thread order.
#include <cmath>
#include <vector>

#include "impl.hpp"
#include "team.hpp"

namespace bn::bench {
namespace {

class LoopRunner : public Runner {
 public:
  LoopRunner(Tensors& t, Mode mode, int threads)
      : t_(t), k_(t.shape), mode_(mode), team_(threads), mean_(k_.c), inv_std_(k_.c),
        scale_(k_.c), shift_(k_.c), part_(threads * k_.c) {
    if (mode_ == Mode::kBackward) forward(true);  // the batch statistics the backward needs
  }

  void run() override {
    if (mode_ == Mode::kBackward) backward();
    else forward(mode_ == Mode::kTraining);
  }

 private:
  // Channel c's row of image n (channels first).
  const float* row(const float* p, int64_t n, int64_t c) const { return p + (n * k_.c + c) * k_.s; }

  void fold(int64_t c, double mean, double var, bool batch) {
    if (!batch) {
      mean = t_.moving_mean[c];
      var = t_.moving_var[c];
    }
    mean_[c] = mean;
    inv_std_[c] = 1.0 / std::sqrt(var + kEpsilon);
    scale_[c] = t_.gamma[c] * inv_std_[c];
    shift_[c] = t_.beta[c] - mean * scale_[c];
  }

  void forward(bool batch) {
    if (k_.channels_last) forward_last(batch);
    else forward_first(batch);
  }

  void forward_first(bool batch) {
    const double m = static_cast<double>(k_.n * k_.s);
    team_.run([&](int t, int nt) {
      auto [c0, c1] = split_range(k_.c, t, nt);
      for (int64_t c = c0; c < c1; ++c) {
        double sum = 0, sq = 0;
        if (batch) {
          for (int64_t n = 0; n < k_.n; ++n) {
            const float* x = row(t_.x.data(), n, c);
            for (int64_t s = 0; s < k_.s; ++s) sum += x[s];
          }
          const double mean = sum / m;
          for (int64_t n = 0; n < k_.n; ++n) {
            const float* x = row(t_.x.data(), n, c);
            for (int64_t s = 0; s < k_.s; ++s) sq += (x[s] - mean) * (x[s] - mean);
          }
        }
        fold(c, sum / m, sq / m, batch);
        const float a = static_cast<float>(scale_[c]), b = static_cast<float>(shift_[c]);
        for (int64_t n = 0; n < k_.n; ++n) {
          const float* x = row(t_.x.data(), n, c);
          float* y = t_.y.data() + (x - t_.x.data());
          for (int64_t s = 0; s < k_.s; ++s) y[s] = x[s] * a + b;
        }
      }
    });
  }

  // out[j] = sum over rows of f(index, j): per-thread partials in part_, added in thread order.
  template <class F>
  void channel_sums(std::vector<double>& out, const F& f) {
    const int64_t rows = k_.n * k_.s, c = k_.c;
    team_.run([&](int t, int nt) {
      double* acc = part_.data() + t * c;
      for (int64_t j = 0; j < c; ++j) acc[j] = 0;
      auto [r0, r1] = split_range(rows, t, nt);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < c; ++j) acc[j] += f(r * c + j, j);
    });
    for (int64_t j = 0; j < c; ++j) {
      out[j] = 0;
      for (int t = 0; t < team_.size(); ++t) out[j] += part_[t * c + j];
    }
  }

  void forward_last(bool batch) {
    const double m = static_cast<double>(k_.n * k_.s);
    const float* x = t_.x.data();
    if (batch) {
      channel_sums(mean_, [&](int64_t i, int64_t) { return static_cast<double>(x[i]); });
      for (auto& v : mean_) v /= m;
      channel_sums(inv_std_, [&](int64_t i, int64_t j) {
        const double d = x[i] - mean_[j];
        return d * d;
      });
    }
    for (int64_t j = 0; j < k_.c; ++j) fold(j, mean_[j], inv_std_[j] / m, batch);
    std::vector<float>& a = folded_a_;
    std::vector<float>& b = folded_b_;
    a.assign(scale_.begin(), scale_.end());
    b.assign(shift_.begin(), shift_.end());
    team_.run([&](int t, int nt) {
      auto [r0, r1] = split_range(k_.n * k_.s, t, nt);
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = x + r * k_.c;
        float* yr = t_.y.data() + r * k_.c;
        for (int64_t j = 0; j < k_.c; ++j) yr[j] = xr[j] * a[j] + b[j];
      }
    });
  }

  // dx = gamma*inv_std * (dy - mean(dy) - xhat * mean(dy*xhat)),  xhat = (x - mean)*inv_std;
  // dgamma = sum(dy*xhat), dbeta = sum(dy).
  void backward() {
    const double m = static_cast<double>(k_.n * k_.s);
    const float* x = t_.x.data();
    const float* dy = t_.dy.data();
    auto write = [&](int64_t c, double sum_dy, double sum_dy_xhat) {
      t_.dbeta[c] = static_cast<float>(sum_dy);
      t_.dgamma[c] = static_cast<float>(sum_dy_xhat);
    };
    if (!k_.channels_last) {
      team_.run([&](int t, int nt) {
        auto [c0, c1] = split_range(k_.c, t, nt);
        for (int64_t c = c0; c < c1; ++c) {
          double sum_dy = 0, sum_dy_xhat = 0;
          for (int64_t n = 0; n < k_.n; ++n) {
            const float* xr = row(x, n, c);
            const float* gr = row(dy, n, c);
            for (int64_t s = 0; s < k_.s; ++s) {
              sum_dy += gr[s];
              sum_dy_xhat += gr[s] * (xr[s] - mean_[c]) * inv_std_[c];
            }
          }
          write(c, sum_dy, sum_dy_xhat);
          const double g = t_.gamma[c] * inv_std_[c];
          for (int64_t n = 0; n < k_.n; ++n) {
            const float* xr = row(x, n, c);
            const float* gr = row(dy, n, c);
            float* dxr = t_.dx.data() + (xr - x);
            for (int64_t s = 0; s < k_.s; ++s) {
              const double xhat = (xr[s] - mean_[c]) * inv_std_[c];
              dxr[s] = static_cast<float>(g * (gr[s] - sum_dy / m - xhat * sum_dy_xhat / m));
            }
          }
        }
      });
      return;
    }
    std::vector<double>& sum_dy = sum_dy_;
    std::vector<double>& sum_dy_xhat = sum_dy_xhat_;
    channel_sums(sum_dy, [&](int64_t i, int64_t) { return static_cast<double>(dy[i]); });
    channel_sums(sum_dy_xhat, [&](int64_t i, int64_t j) {
      return dy[i] * (x[i] - mean_[j]) * inv_std_[j];
    });
    for (int64_t c = 0; c < k_.c; ++c) write(c, sum_dy[c], sum_dy_xhat[c]);
    team_.run([&](int t, int nt) {
      auto [r0, r1] = split_range(k_.n * k_.s, t, nt);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < k_.c; ++j) {
          const int64_t i = r * k_.c + j;
          const double xhat = (x[i] - mean_[j]) * inv_std_[j];
          t_.dx[i] = static_cast<float>(t_.gamma[j] * inv_std_[j] *
                                        (dy[i] - sum_dy[j] / m - xhat * sum_dy_xhat[j] / m));
        }
    });
  }

  Tensors& t_;
  const Case& k_;
  Mode mode_;
  Team team_;
  std::vector<double> mean_, inv_std_, scale_, shift_, part_;
  std::vector<double> sum_dy_ = std::vector<double>(k_.c), sum_dy_xhat_ = std::vector<double>(k_.c);
  std::vector<float> folded_a_ = std::vector<float>(k_.c), folded_b_ = std::vector<float>(k_.c);
};

class Loop : public Impl {
 public:
  std::string name() const override { return "loop"; }
  bool available() const override { return true; }
  std::string describe() const override {
    return "loop: plain two-pass C++ loops (baseline), T threads on a oneTBB arena";
  }
  std::unique_ptr<Runner> prepare(Tensors& t, Mode mode, int threads) override {
    return std::make_unique<LoopRunner>(t, mode, threads);
  }
};

}  // namespace

std::unique_ptr<Impl> make_loop() { return std::make_unique<Loop>(); }

}  // namespace bn::bench
