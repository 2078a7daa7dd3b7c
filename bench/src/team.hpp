// A fixed team of T threads for the baselines: run(f) calls f(t, T) once for each
// t in [0, T) on a oneTBB arena of T threads (T = 1: on the caller, no thread).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

namespace bn::bench {

class Team {
 public:
  explicit Team(int threads) : threads_(threads) {
    if (threads_ > 1) arena_ = std::make_unique<tbb::task_arena>(threads_);
  }
  int size() const { return threads_; }

  template <class F>
  void run(const F& f) {
    if (threads_ == 1) {
      f(0, 1);
      return;
    }
    arena_->execute([&] {
      tbb::parallel_for(
          tbb::blocked_range<int>(0, threads_, 1),
          [&](const tbb::blocked_range<int>& r) {
            for (int t = r.begin(); t != r.end(); ++t) f(t, threads_);
          },
          tbb::static_partitioner());
    });
  }

 private:
  int threads_;
  std::unique_ptr<tbb::task_arena> arena_;
};

// [begin, end) of part t when `count` items are split into `parts` contiguous parts.
inline std::pair<int64_t, int64_t> split_range(int64_t count, int t, int parts) {
  return {count * t / parts, count * (t + 1) / parts};
}

}  // namespace bn::bench
