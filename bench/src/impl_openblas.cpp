// Baseline composed from OpenBLAS calls only (plus per-channel scalar arithmetic):
//  channels first, per row of S values of one channel:
//    sum = sdot(x, ones), sum of squares = sdot(x, x)    -> var = E[x^2] - mean^2
//    y = scale*x + shift:  scopy(ones -> y); saxpby(scale, x, shift, y)
//  channels last, on a block of rows (a rows x C matrix):
//    column sums = sgemv^T(x, ones); sum of squares += x_r .* x_r per row via ssbmv with
//    bandwidth 0 (a diagonal matrix-vector product is the element-wise product)
//    y_r = scale .* x_r + shift:  scopy(shift -> y_r); ssbmv(diag(scale), x_r, beta=1)
// The variance is the one-pass formula (BLAS has no centred sum of squares); fine for a
// baseline on data with small means. OpenBLAS itself runs single-threaded
// (openblas_set_num_threads(1)); T threads split channels or row blocks as in the loop.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "impl.hpp"
#include "team.hpp"

#ifdef BN_BENCH_HAVE_OPENBLAS
#include <cblas.h>
#endif

namespace bn::bench {
namespace {

#ifdef BN_BENCH_HAVE_OPENBLAS

// y = a .* x + y  for vectors of length n (diagonal band matrix, K = 0, lda = 1).
void diag_axpy(int n, const float* a, const float* x, float* y) {
  cblas_ssbmv(CblasRowMajor, CblasUpper, n, 0, 1.0f, a, 1, x, 1, 1.0f, y, 1);
}

class BlasRunner : public Runner {
 public:
  BlasRunner(Tensors& t, Mode mode, int threads)
      : t_(t), k_(t.shape), mode_(mode), team_(threads),
        ones_(std::max(k_.n * k_.s, k_.c), 1.0f), mean_(k_.c), inv_std_(k_.c),
        a_(k_.c), b_(k_.c), c_(k_.c), part1_(threads * k_.c), part2_(threads * k_.c) {
    openblas_set_num_threads(1);
    if (mode_ == Mode::kBackward) forward(true);
  }

  void run() override {
    if (mode_ == Mode::kBackward) backward();
    else forward(mode_ == Mode::kTraining);
  }

 private:
  int64_t offset(int64_t n, int64_t c) const { return (n * k_.c + c) * k_.s; }
  int s() const { return static_cast<int>(k_.s); }
  int c() const { return static_cast<int>(k_.c); }
  double m() const { return static_cast<double>(k_.n * k_.s); }

  // mean/var -> folded scale a_ and shift b_.
  void fold(int64_t ch, double mean, double var) {
    mean_[ch] = static_cast<float>(mean);
    inv_std_[ch] = static_cast<float>(1.0 / std::sqrt(var + kEpsilon));
    a_[ch] = t_.gamma[ch] * inv_std_[ch];
    b_[ch] = static_cast<float>(t_.beta[ch] - mean * a_[ch]);
  }
  void fold_moving(int64_t ch) { fold(ch, t_.moving_mean[ch], t_.moving_var[ch]); }

  // Adds the per-thread partial sums (thread order) into a double per channel.
  double combine(const std::vector<float>& part, int64_t ch) const {
    double v = 0;
    for (int t = 0; t < team_.size(); ++t) v += part[t * k_.c + ch];
    return v;
  }

  void forward(bool batch) {
    const float* x = t_.x.data();
    float* y = t_.y.data();
    if (!k_.channels_last) {
      team_.run([&](int t, int nt) {
        auto [c0, c1] = split_range(k_.c, t, nt);
        for (int64_t ch = c0; ch < c1; ++ch) {
          if (batch) {
            double sum = 0, sq = 0;
            for (int64_t n = 0; n < k_.n; ++n) {
              sum += cblas_sdot(s(), x + offset(n, ch), 1, ones_.data(), 1);
              sq += cblas_sdot(s(), x + offset(n, ch), 1, x + offset(n, ch), 1);
            }
            const double mean = sum / m();
            fold(ch, mean, std::max(0.0, sq / m() - mean * mean));
          } else {
            fold_moving(ch);
          }
          for (int64_t n = 0; n < k_.n; ++n) {
            cblas_scopy(s(), ones_.data(), 1, y + offset(n, ch), 1);
            cblas_saxpby(s(), a_[ch], x + offset(n, ch), 1, b_[ch], y + offset(n, ch), 1);
          }
        }
      });
      return;
    }
    const int64_t rows = k_.n * k_.s;
    if (batch) {
      team_.run([&](int t, int nt) {
        auto [r0, r1] = split_range(rows, t, nt);
        float* sum = part1_.data() + t * k_.c;
        float* sq = part2_.data() + t * k_.c;
        std::fill(sq, sq + k_.c, 0.0f);
        cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(r1 - r0), c(), 1.0f,
                    x + r0 * k_.c, c(), ones_.data(), 1, 0.0f, sum, 1);
        for (int64_t r = r0; r < r1; ++r) diag_axpy(c(), x + r * k_.c, x + r * k_.c, sq);
      });
      for (int64_t ch = 0; ch < k_.c; ++ch) {
        const double mean = combine(part1_, ch) / m();
        fold(ch, mean, std::max(0.0, combine(part2_, ch) / m() - mean * mean));
      }
    } else {
      for (int64_t ch = 0; ch < k_.c; ++ch) fold_moving(ch);
    }
    team_.run([&](int t, int nt) {
      auto [r0, r1] = split_range(rows, t, nt);
      for (int64_t r = r0; r < r1; ++r) {
        cblas_scopy(c(), b_.data(), 1, y + r * k_.c, 1);
        diag_axpy(c(), a_.data(), x + r * k_.c, y + r * k_.c);
      }
    });
  }

  // With sdy = sum(dy), sdx = sum(dy*x) per channel: sum(dy*xhat) = inv_std*(sdx - mean*sdy),
  // and dx = g*inv_std*(dy - sdy/m - xhat*sum(dy*xhat)/m) = a*dy + b*x + c with
  //   a = g*inv_std, b = -a*inv_std*sum(dy*xhat)/m, c = -a*sdy/m - b*mean.
  void fold_backward(int64_t ch, double sdy, double sdx) {
    const double g = t_.gamma[ch], inv = inv_std_[ch], mean = mean_[ch];
    const double sum_dy_xhat = inv * (sdx - mean * sdy);
    t_.dbeta[ch] = static_cast<float>(sdy);
    t_.dgamma[ch] = static_cast<float>(sum_dy_xhat);
    const double a = g * inv, b = -a * inv * sum_dy_xhat / m();
    a_[ch] = static_cast<float>(a);
    b_[ch] = static_cast<float>(b);
    c_[ch] = static_cast<float>(-a * sdy / m() - b * mean);
  }

  void backward() {
    const float* x = t_.x.data();
    const float* dy = t_.dy.data();
    float* dx = t_.dx.data();
    if (!k_.channels_last) {
      team_.run([&](int t, int nt) {
        auto [c0, c1] = split_range(k_.c, t, nt);
        for (int64_t ch = c0; ch < c1; ++ch) {
          double sdy = 0, sdx = 0;
          for (int64_t n = 0; n < k_.n; ++n) {
            sdy += cblas_sdot(s(), dy + offset(n, ch), 1, ones_.data(), 1);
            sdx += cblas_sdot(s(), dy + offset(n, ch), 1, x + offset(n, ch), 1);
          }
          fold_backward(ch, sdy, sdx);
          for (int64_t n = 0; n < k_.n; ++n) {
            float* out = dx + offset(n, ch);
            cblas_scopy(s(), ones_.data(), 1, out, 1);
            cblas_saxpby(s(), a_[ch], dy + offset(n, ch), 1, c_[ch], out, 1);
            cblas_saxpy(s(), b_[ch], x + offset(n, ch), 1, out, 1);
          }
        }
      });
      return;
    }
    const int64_t rows = k_.n * k_.s;
    team_.run([&](int t, int nt) {
      auto [r0, r1] = split_range(rows, t, nt);
      float* sdy = part1_.data() + t * k_.c;
      float* sdx = part2_.data() + t * k_.c;
      std::fill(sdx, sdx + k_.c, 0.0f);
      cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(r1 - r0), c(), 1.0f,
                  dy + r0 * k_.c, c(), ones_.data(), 1, 0.0f, sdy, 1);
      for (int64_t r = r0; r < r1; ++r) diag_axpy(c(), dy + r * k_.c, x + r * k_.c, sdx);
    });
    for (int64_t ch = 0; ch < k_.c; ++ch)
      fold_backward(ch, combine(part1_, ch), combine(part2_, ch));
    team_.run([&](int t, int nt) {
      auto [r0, r1] = split_range(rows, t, nt);
      for (int64_t r = r0; r < r1; ++r) {
        float* out = dx + r * k_.c;
        cblas_scopy(c(), c_.data(), 1, out, 1);
        diag_axpy(c(), a_.data(), dy + r * k_.c, out);
        diag_axpy(c(), b_.data(), x + r * k_.c, out);
      }
    });
  }

  Tensors& t_;
  const Case& k_;
  Mode mode_;
  Team team_;
  std::vector<float> ones_, mean_, inv_std_, a_, b_, c_, part1_, part2_;
};

class Openblas : public Impl {
 public:
  std::string name() const override { return "openblas"; }
  bool available() const override { return true; }
  std::string describe() const override {
    return std::string("openblas: baseline composed of sdot/saxpby/sgemv/ssbmv calls (") +
           openblas_get_config() + "), single-threaded BLAS, T threads on a oneTBB arena";
  }
  std::unique_ptr<Runner> prepare(Tensors& t, Mode mode, int threads) override {
    return std::make_unique<BlasRunner>(t, mode, threads);
  }
};

#else  // !BN_BENCH_HAVE_OPENBLAS

class Openblas : public Impl {
 public:
  std::string name() const override { return "openblas"; }
  bool available() const override { return false; }
  std::string describe() const override {
    return "openblas: not installed (apt-get install libopenblas-dev, then reconfigure)";
  }
  std::unique_ptr<Runner> prepare(Tensors&, Mode, int) override {
    throw std::runtime_error("OpenBLAS: not installed");
  }
};

#endif

}  // namespace

std::unique_ptr<Impl> make_openblas() { return std::make_unique<Openblas>(); }

}  // namespace bn::bench
