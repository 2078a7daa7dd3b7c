#include "parallel/executor.hpp"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

namespace bn::parallel {

struct Executor::Arena {
  explicit Arena(int threads) : arena(threads) {}
  mutable tbb::task_arena arena;
};

Executor::Executor() = default;
Executor::~Executor() = default;

void Executor::set_max_threads(int32_t max_threads) {
  std::unique_ptr<Arena> arena;
  if (max_threads > 1) arena = std::make_unique<Arena>(max_threads);  // may throw; nothing changed yet
  arena_ = std::move(arena);
  max_threads_ = max_threads;
}

// ThreadSanitizer builds (cmake/sanitize.cmake) run every loop on the calling thread: TSan
// cannot see the synchronization inside an uninstrumented libtbb. Results are the same by
// construction (the blocks do not depend on the thread count).
#ifdef BN_SERIAL_EXECUTOR
constexpr bool kSerial = true;
#else
constexpr bool kSerial = false;
#endif

int32_t Executor::concurrency() const {
  if (kSerial || max_threads_ == 1) return 1;
  if (max_threads_ > 1) return max_threads_;
  return tbb::this_task_arena::max_concurrency();
}

void Executor::run(int64_t count, Body body, const void* ctx) const {
  if (count <= 0) return;
  if (kSerial || count == 1 || max_threads_ == 1) {
    body(ctx, 0, count);
    return;
  }
  auto loop = [&] {
    tbb::parallel_for(
        tbb::blocked_range<int64_t>(0, count, 1),
        [&](const tbb::blocked_range<int64_t>& r) { body(ctx, r.begin(), r.end()); },
        tbb::simple_partitioner());
  };
  if (arena_) {
    arena_->arena.execute(loop);
  } else {
    loop();
  }
}

}  // namespace bn::parallel
