// Runs a loop over fixed blocks on oneTBB. This directory is the only place that
// includes TBB. The block decomposition is chosen by the caller from the shape
// alone; the executor only decides which thread runs which block, so results never
// depend on the thread count.
#pragma once

#include <cstdint>
#include <memory>

namespace bn::parallel {

class Executor {
 public:
  Executor();
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // 0: the caller's arena; 1: the calling thread only; n > 1: an arena of n threads.
  void set_max_threads(int32_t max_threads);
  int32_t max_threads() const { return max_threads_; }
  // Threads a loop can run on: 1, the arena's size, or the caller's arena's concurrency.
  int32_t concurrency() const;

  // Calls fn(block) for every block in [0, count). fn must not throw.
  template <class Fn>
  void for_blocks(int64_t count, const Fn& fn) const {
    run(count, &invoke<Fn>, &fn);
  }

 private:
  using Body = void (*)(const void* ctx, int64_t begin, int64_t end);
  template <class Fn>
  static void invoke(const void* ctx, int64_t begin, int64_t end) {
    const Fn& fn = *static_cast<const Fn*>(ctx);
    for (int64_t b = begin; b < end; ++b) fn(b);
  }
  void run(int64_t count, Body body, const void* ctx) const;

  struct Arena;
  std::unique_ptr<Arena> arena_;
  int32_t max_threads_ = 0;
};

}  // namespace bn::parallel
