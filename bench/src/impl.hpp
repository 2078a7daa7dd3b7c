// What every timed implementation provides. An implementation prepares one runner per
// (case, mode, threads) -- layers, primitives and scratch are made there, outside the
// timed loop -- and the runner's run() is one call, writing into the shared Tensors:
// y for the forwards; dx, dgamma, dbeta for the backward.
#pragma once

#include <memory>
#include <string>

#include "tensors.hpp"

namespace bn::bench {

class Runner {
 public:
  virtual ~Runner() = default;
  virtual void run() = 0;
};

class Impl {
 public:
  virtual ~Impl() = default;
  virtual std::string name() const = 0;  // column name
  virtual bool available() const = 0;
  // Whether it takes this case's element type (the baselines are float32 only).
  virtual bool supports(const Case& k) const { return k.dtype == "f32"; }
  // One line for the report: version and threading, or why it is absent and how to install it.
  virtual std::string describe() const = 0;
  // Throws std::runtime_error when the implementation fails on this case.
  virtual std::unique_ptr<Runner> prepare(Tensors& t, Mode mode, int threads) = 0;
};

std::unique_ptr<Impl> make_libbatchnorm();
std::unique_ptr<Impl> make_onednn();
std::unique_ptr<Impl> make_loop();
std::unique_ptr<Impl> make_openblas();

}  // namespace bn::bench
