// oneDNN peer: batch_normalization_forward/backward primitives (C++ API, dnnl.hpp), f32 (bf16
// and f16 data with f32 scale and shift for the 16-bit cases, where the CPU kernel has them),
// use_scale | use_shift (+ use_global_stats for inference), created once per
// (case, mode, threads) and executed in the timed loop.
//
// Threads: Debian's libdnnl is built with the OpenMP CPU runtime (DNNL_CPU_RUNTIME OMP,
// libgomp), so the thread count is omp_set_num_threads(T), set before the primitive is
// created (oneDNN sizes its per-thread scratch at creation) and kept while it executes.
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "impl.hpp"

#ifdef BN_BENCH_HAVE_ONEDNN
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace bn::bench {
namespace {

#ifdef BN_BENCH_HAVE_ONEDNN

using dnnl::memory;
using Flags = dnnl::normalization_flags;
using Prop = dnnl::prop_kind;

// The data descriptor. oneDNN 2.6 serves 3-D ncw/nwc only with its reference kernel
// (bnorm_ref) and 2-D nc with a plain C++ one, so those cases are described as the same
// memory in 4-D -- NCL as (N, C, 1, L) nchw, NLC as (N, C, 1, L) nhwc, NC as (N, C, 1, 1)
// nhwc -- which selects its fastest kernel; the peer should be at its best.
memory::desc data_desc(const Case& k) {
  std::vector<int64_t> dims = k.logical_dims();
  if (dims.size() == 2) dims = {dims[0], dims[1], 1, 1};
  if (dims.size() == 3) dims = {dims[0], dims[1], 1, dims[2]};
  memory::format_tag tag;
  switch (dims.size()) {
    case 4: tag = k.channels_last ? memory::format_tag::nhwc : memory::format_tag::nchw; break;
    case 5: tag = k.channels_last ? memory::format_tag::ndhwc : memory::format_tag::ncdhw; break;
    default: throw std::runtime_error("oneDNN: unsupported rank");
  }
  const memory::data_type type = k.dtype == "bf16"  ? memory::data_type::bf16
                                 : k.dtype == "f16" ? memory::data_type::f16
                                                    : memory::data_type::f32;
  return memory::desc(memory::dims(dims.begin(), dims.end()), type, tag);
}

// Scratch is booked at creation (user scratchpad mode) so that execution allocates nothing.
dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// oneDNN 2.x builds primitive descriptors from an operation descriptor; 3.x directly.
#if DNNL_VERSION_MAJOR >= 3
dnnl::batch_normalization_forward::primitive_desc forward_pd(const dnnl::engine& eng, Prop prop,
                                                             const memory::desc& md, Flags f) {
  return {eng, prop, md, md, kEpsilon, f, user_scratchpad()};
}
dnnl::batch_normalization_backward::primitive_desc backward_pd(
    const dnnl::engine& eng, const memory::desc& md, Flags f,
    const dnnl::batch_normalization_forward::primitive_desc& hint) {
  return {eng, Prop::backward, md, md, md, kEpsilon, f, hint, user_scratchpad()};
}
#else
dnnl::batch_normalization_forward::primitive_desc forward_pd(const dnnl::engine& eng, Prop prop,
                                                             const memory::desc& md, Flags f) {
  return {{prop, md, kEpsilon, f}, user_scratchpad(), eng};
}
dnnl::batch_normalization_backward::primitive_desc backward_pd(
    const dnnl::engine& eng, const memory::desc& md, Flags f,
    const dnnl::batch_normalization_forward::primitive_desc& hint) {
  return {{Prop::backward, md, md, kEpsilon, f}, user_scratchpad(), eng, hint};
}
#endif

class PrimitiveRunner : public Runner {
 public:
  PrimitiveRunner(Tensors& t, Mode mode, int threads)
      : eng_(dnnl::engine::kind::cpu, 0), stream_(eng_) {
    omp_set_num_threads(threads);
    const Case& k = t.shape;
    const memory::desc md = data_desc(k);
    const memory::desc cd({k.c}, memory::data_type::f32, memory::format_tag::x);
    auto mem = [&](const memory::desc& d, const void* p) {
      return memory(d, eng_, const_cast<void*>(p));
    };
    const Flags scale_shift = Flags::use_scale | Flags::use_shift;
    args_[DNNL_ARG_SRC] = mem(md, t.x_data());
    args_[DNNL_ARG_SCALE] = mem(cd, t.gamma.data());
    args_[DNNL_ARG_SHIFT] = mem(cd, t.beta.data());
    if (mode == Mode::kInference) {
      auto pd = forward_pd(eng_, Prop::forward_inference, md,
                           scale_shift | Flags::use_global_stats);
      prim_ = dnnl::batch_normalization_forward(pd);
      book_scratchpad(pd.scratchpad_desc());
      args_[DNNL_ARG_MEAN] = mem(cd, t.moving_mean.data());
      args_[DNNL_ARG_VARIANCE] = mem(cd, t.moving_var.data());
      args_[DNNL_ARG_DST] = mem(md, t.y_data());
      return;
    }
    // Training forward: batch mean and variance are outputs (kept for the backward).
    mean_.assign(k.c, 0.0f);
    var_.assign(k.c, 0.0f);
    auto fwd = forward_pd(eng_, Prop::forward_training, md, scale_shift);
    prim_ = dnnl::batch_normalization_forward(fwd);
    book_scratchpad(fwd.scratchpad_desc());
    args_[DNNL_ARG_MEAN] = mem(cd, mean_.data());
    args_[DNNL_ARG_VARIANCE] = mem(cd, var_.data());
    args_[DNNL_ARG_DST] = mem(md, t.y_data());
    if (mode == Mode::kTraining) return;
    run();  // one training forward gives the statistics the backward reads
    auto bwd = backward_pd(eng_, md, scale_shift, fwd);
    prim_ = dnnl::batch_normalization_backward(bwd);
    book_scratchpad(bwd.scratchpad_desc());
    args_.erase(DNNL_ARG_DST);  // the backward also requires SHIFT (oneDNN 2.6), kept
    args_[DNNL_ARG_DIFF_DST] = mem(md, t.dy_data());
    args_[DNNL_ARG_DIFF_SRC] = mem(md, t.dx_data());
    args_[DNNL_ARG_DIFF_SCALE] = mem(cd, t.dgamma.data());
    args_[DNNL_ARG_DIFF_SHIFT] = mem(cd, t.dbeta.data());
  }

  void run() override {
    prim_.execute(stream_, args_);
    stream_.wait();
  }

 private:
  void book_scratchpad(const memory::desc& d) {
    scratchpad_ = memory(d, eng_);  // allocated by oneDNN, once
    args_[DNNL_ARG_SCRATCHPAD] = scratchpad_;
  }

  dnnl::engine eng_;
  dnnl::stream stream_;
  dnnl::primitive prim_;
  std::unordered_map<int, memory> args_;
  memory scratchpad_;
  std::vector<float> mean_, var_;
};

class Onednn : public Impl {
 public:
  std::string name() const override { return "oneDNN"; }
  bool available() const override { return true; }
  bool supports(const Case&) const override { return true; }  // bf16/f16: oneDNN says if not
  std::string describe() const override {
    const dnnl_version_t* v = dnnl_version();
    return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
           std::to_string(v->patch) + ": batch_normalization primitives, CPU runtime " +
           BN_BENCH_ONEDNN_RUNTIME + ", threads via omp_set_num_threads(T)";
  }
  std::unique_ptr<Runner> prepare(Tensors& t, Mode mode, int threads) override {
    try {
      return std::make_unique<PrimitiveRunner>(t, mode, threads);
    } catch (const dnnl::error& e) {
      throw std::runtime_error(std::string("oneDNN: ") + e.what());
    }
  }
};

#else  // !BN_BENCH_HAVE_ONEDNN

class Onednn : public Impl {
 public:
  std::string name() const override { return "oneDNN"; }
  bool available() const override { return false; }
  std::string describe() const override {
    return "oneDNN: not installed (apt-get install libdnnl-dev, then reconfigure)";
  }
  std::unique_ptr<Runner> prepare(Tensors&, Mode, int) override {
    throw std::runtime_error("oneDNN: not installed");
  }
};

#endif

}  // namespace

std::unique_ptr<Impl> make_onednn() { return std::make_unique<Onednn>(); }

}  // namespace bn::bench
