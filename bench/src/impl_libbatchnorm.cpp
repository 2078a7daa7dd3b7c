// libbatchnorm through its public C API only: one layer per (case, mode, threads),
// bn_set_num_threads(layer, T), axis 1 (channels first) or -1 (channels last), fused off;
// BN_BF16 / BN_F16 layers for the 16-bit cases.
#include <batchnorm/batchnorm.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "impl.hpp"

namespace bn::bench {
namespace {

void ok(bn_status status, const char* what) {
  if (status != BN_OK)
    throw std::runtime_error(std::string(what) + ": " + bn_status_string(status) + ": " +
                             bn_last_error());
}

class LayerRunner : public Runner {
 public:
  LayerRunner(Tensors& t, Mode mode, int threads) : t_(t), mode_(mode) {
    shape_.assign(t.shape.dims.begin(), t.shape.dims.end());
    bn_config* cfg = nullptr;
    ok(bn_config_create(&cfg), "bn_config_create");
    const int32_t axis = t.shape.channel_axis();
    bn_status st = bn_config_set_axes(cfg, &axis, 1);
    if (st == BN_OK) st = bn_config_set_epsilon(cfg, kEpsilon);
    if (st == BN_OK) st = bn_config_set_fused(cfg, BN_FUSED_OFF);
    if (st == BN_OK && t.shape.dtype != "f32")
      st = bn_config_set_dtype(cfg, t.shape.dtype == "bf16" ? BN_BF16 : BN_F16);
    bn_layer* layer = nullptr;
    if (st == BN_OK) st = bn_create(cfg, shape_.data(), ndim(), &layer);
    bn_config_destroy(cfg);
    ok(st, "bn_create");
    layer_.reset(layer);
    ok(bn_set_num_threads(layer_.get(), threads), "bn_set_num_threads");
    const int64_t c = t.shape.c;
    ok(bn_set_param(layer_.get(), BN_PARAM_GAMMA, t.gamma.data(), c), "bn_set_param(gamma)");
    ok(bn_set_param(layer_.get(), BN_PARAM_BETA, t.beta.data(), c), "bn_set_param(beta)");
    ok(bn_set_param(layer_.get(), BN_PARAM_MOVING_MEAN, t.moving_mean.data(), c), "bn_set_param");
    ok(bn_set_param(layer_.get(), BN_PARAM_MOVING_VARIANCE, t.moving_var.data(), c), "bn_set_param");
    ok(bn_set_training(layer_.get(), mode == Mode::kInference ? 0 : 1), "bn_set_training");
    // The backward differentiates the most recent training forward: run it once here.
    if (mode == Mode::kBackward)
      ok(bn_forward(layer_.get(), shape_.data(), ndim(), t.x_data(), t.y_data()), "bn_forward");
  }
  void run() override {
    if (mode_ == Mode::kBackward)
      ok(bn_backward(layer_.get(), shape_.data(), ndim(), t_.x_data(), t_.dy_data(), t_.dx_data(),
                     t_.dgamma.data(), t_.dbeta.data()),
         "bn_backward");
    else
      ok(bn_forward(layer_.get(), shape_.data(), ndim(), t_.x_data(), t_.y_data()), "bn_forward");
  }

 private:
  int32_t ndim() const { return static_cast<int32_t>(shape_.size()); }
  Tensors& t_;
  Mode mode_;
  std::vector<int64_t> shape_;
  struct Destroy {
    void operator()(bn_layer* layer) const { bn_destroy(layer); }
  };
  std::unique_ptr<bn_layer, Destroy> layer_;
};

class Libbatchnorm : public Impl {
 public:
  std::string name() const override { return "libbatchnorm"; }
  bool available() const override { return true; }
  bool supports(const Case&) const override { return true; }
  std::string describe() const override {
    return std::string("libbatchnorm ") + bn_version_string() +
           ": C API, bn_set_num_threads(layer, T) (oneTBB arena), fused off; kernels: " + kernels();
  }
  // Which kernel table the library dispatches to: the widest the CPU has, unless BN_ISA
  // names a narrower one (the library's rule; a CPU without the named ISA keeps its widest).
  static std::string kernels() {
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const std::string widest = avx2 && avx512 ? "AVX-512" : avx2 ? "AVX2" : "scalar reference";
    const char* env = std::getenv("BN_ISA");
    if (env == nullptr) return "the CPU's widest, " + widest;
    return std::string("BN_ISA=") + env + " (the CPU's widest: " + widest + ")";
  }
  std::unique_ptr<Runner> prepare(Tensors& t, Mode mode, int threads) override {
    return std::make_unique<LayerRunner>(t, mode, threads);
  }
};

}  // namespace

std::unique_ptr<Impl> make_libbatchnorm() { return std::make_unique<Libbatchnorm>(); }

}  // namespace bn::bench
