// A wrapping callback over bn_mpi_allreduce: counts the collectives and their doubles, and
// fails on demand (the benchmark has its own copy of the counting part).
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "batchnorm/batchnorm_mpi.h"

namespace bn_mpi_test {

struct Counter {
  void* comm = nullptr;           // bn_mpi_user_data of the communicator
  std::vector<int64_t> counts;    // count of every call so far
  int64_t fail_at = 0;            // 1-based call number that fails on this rank; 0 = never
  bool reduce_then_fail = false;  // the failing call still takes part in the collective (and
                                  // then overwrites the buffer with NaN), so the other ranks go on
};

inline bn_status counting_allreduce(void* user_data, double* buffer, int64_t count) {
  Counter* c = static_cast<Counter*>(user_data);
  c->counts.push_back(count);
  if (static_cast<int64_t>(c->counts.size()) == c->fail_at) {
    if (c->reduce_then_fail) {
      bn_mpi_allreduce(c->comm, buffer, count);
      for (int64_t i = 0; i < count; ++i) buffer[i] = std::numeric_limits<double>::quiet_NaN();
    }
    return BN_ERR_CALLBACK;
  }
  return bn_mpi_allreduce(c->comm, buffer, count);
}

}  // namespace bn_mpi_test
