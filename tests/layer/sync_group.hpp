// An in-process stand-in for a cross-replica allreduce: R replicas are R threads of one
// process, each with its own layer whose bn_allreduce_fn is Group::callback with a Member as
// user data. A collective waits until every replica has arrived, then the last one sums the
// buffers element by element in rank order (deterministic) and hands the sums to every
// replica. Counts that differ between replicas, or an injected failure, fail the collective
// on every replica (after scribbling NaN over the buffers, which the layer must not use).
#pragma once

#include <batchnorm/batchnorm.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

namespace bn_test {

class Group {
 public:
  struct Member {
    Group* group = nullptr;
    int rank = 0;
    std::vector<int64_t> counts;  // the count of every collective this replica took part in
  };

  explicit Group(int replicas) : size_(replicas), buffers_(replicas), counts_(replicas), members_(replicas) {
    for (int r = 0; r < replicas; ++r) {
      members_[r].group = this;
      members_[r].rank = r;
    }
  }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int size() const { return size_; }
  Member* member(int rank) { return &members_[static_cast<size_t>(rank)]; }
  // The bn_allreduce_fn: user_data is a Member*.
  static bn_status callback(void* user_data, double* buffer, int64_t count) {
    auto* m = static_cast<Member*>(user_data);
    m->counts.push_back(count);
    return m->group->reduce(m->rank, buffer, count);
  }
  // Collective number `index` (0-based, counted over the group's life) and the following ones
  // fail on every replica; -1 = none.
  void fail_from(int64_t index) { fail_from_ = index; }
  int64_t collectives() const { return generation_; }
  bool mismatched() const { return mismatched_; }
  // Collectives each replica took part in since the last call.
  std::vector<size_t> take_counts() {
    std::vector<size_t> out;
    for (Member& m : members_) {
      out.push_back(m.counts.size() - seen_[static_cast<size_t>(m.rank)]);
      seen_[static_cast<size_t>(m.rank)] = m.counts.size();
    }
    return out;
  }

 private:
  bn_status reduce(int rank, double* buffer, int64_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    buffers_[static_cast<size_t>(rank)] = buffer;
    counts_[static_cast<size_t>(rank)] = count;
    if (++arrived_ < size_) {
      const int64_t generation = generation_;
      cv_.wait(lock, [&] { return generation_ != generation; });
      return status_;
    }
    status_ = BN_OK;
    for (int64_t c : counts_) {
      if (c != count) {
        mismatched_ = true;
        status_ = BN_ERR_CALLBACK;
      }
    }
    if (fail_from_ >= 0 && generation_ >= fail_from_) status_ = BN_ERR_CALLBACK;
    if (status_ == BN_OK) {
      sums_.assign(static_cast<size_t>(count), 0.0);
      for (int64_t i = 0; i < count; ++i) {
        double s = 0.0;
        for (double* b : buffers_) s += b[i];
        sums_[static_cast<size_t>(i)] = s;
      }
      for (double* b : buffers_) std::copy(sums_.begin(), sums_.end(), b);
    } else {
      for (size_t r = 0; r < buffers_.size(); ++r) {
        for (int64_t i = 0; i < counts_[r]; ++i) buffers_[r][i] = std::numeric_limits<double>::quiet_NaN();
      }
    }
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return status_;
  }

  const int size_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t generation_ = 0;
  bn_status status_ = BN_OK;
  bool mismatched_ = false;
  int64_t fail_from_ = -1;
  std::vector<double*> buffers_;
  std::vector<int64_t> counts_;
  std::vector<double> sums_;
  std::vector<Member> members_;
  std::vector<size_t> seen_ = std::vector<size_t>(static_cast<size_t>(size_), 0);
};

// Runs fn(rank) on one thread per replica and waits for all of them.
inline void on_replicas(int replicas, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < replicas; ++r) threads.emplace_back(fn, r);
  for (std::thread& t : threads) t.join();
}

}  // namespace bn_test
