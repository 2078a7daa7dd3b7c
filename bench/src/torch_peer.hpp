// The PyTorch peer: bench/torch_peer.py run by /usr/bin/python3 as a subprocess, once per
// thread count plain and once with glibc's heap reuse, keeping the faster time per row. Run
// once per round of the benchmark; a row's time is the median over the rounds.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "options.hpp"

namespace bn::bench {

class TorchPeer {
 public:
  // glibc keeps freed memory (no mmap for big blocks, no trimming): PyTorch's per-call
  // output allocations then reuse the same pages instead of faulting in fresh ones.
  static constexpr const char* kHeapReuse =
      "GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736";

  explicit TorchPeer(const Options& options) : options_(options) {}

  // Runs the script for every thread count, both heap settings (one round: call again for
  // the next). Never fails: a missing interpreter, torch or script makes available() false
  // and describe() says why.
  void run_all(const std::vector<int>& threads);
  bool available() const { return available_; }
  std::string describe() const { return description_; }

  struct Times {
    std::optional<double> plain, heap_reuse;  // medians over the rounds
    std::optional<double> best() const;
  };
  Times lookup(const std::string& name, const std::string& layout, const std::string& mode,
               int threads) const;

 private:
  bool run_one(int threads, bool heap_reuse);
  using Key = std::tuple<std::string, std::string, std::string, int>;
  const Options& options_;
  bool available_ = false;
  std::string description_ = "PyTorch: not run (--no-torch)";
  std::string version_;
  struct Samples {
    std::vector<double> plain, heap_reuse;  // one per round
  };
  std::map<Key, Samples> times_;
};

}  // namespace bn::bench
