// One synchronized-batch-norm scenario, checked on every rank against one process on the
// concatenated batch. Each rank generates the whole global batch from the same seed, runs the
// single-process reference on it itself, and runs its shard (rows [offset, offset + n) of
// dimension 0) through a layer whose config has the cross-replica callback.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "batchnorm/batchnorm.h"

namespace bn_mpi_test {

struct SyncCase {
  std::string name;
  bn_dtype dtype = BN_F64;      // BN_F64, BN_F32, BN_BF16 or BN_F16
  std::vector<int64_t> sample;  // the shape without the batch dimension
  std::vector<int32_t> axes;    // axes of the full shape
  std::vector<int64_t> shards;  // local batch size of each rank of the communicator
  int steps = 2;                // training steps (forward, backward, SGD on gamma and beta)
  bool renorm = false;
  bn_fused fused = BN_FUSED_AUTO;
  int64_t ghost = 0;  // each replica's virtual batch size (0 = off)
  bool regularized = false;
  bool relu = false;
  bool residual = false;  // bn_forward_residual / bn_backward_residual (dresidual compared too)
  bn_moving_variance moving_variance = BN_MOVING_VARIANCE_AUTO;
  double offset = 3.0;  // data: feature offsets in [-offset, offset], spreads in [spread_lo, spread_hi]
  double spread_lo = 0.5, spread_hi = 2.0;
  uint64_t seed = 1;
};

// Shards for `ranks` replicas: equal (`per` rows each), uneven (2, 7, 5, 3, 6, ...) or with rank 1
// empty (the others 3 + rank rows).
std::vector<int64_t> even_shards(int ranks, int64_t per);
std::vector<int64_t> uneven_shards(int ranks);
std::vector<int64_t> empty_shards(int ranks);

// The attached callback: bn_config_set_mpi(comm) when fn is NULL, else fn/user_data.
struct Sync {
  MPI_Comm comm = MPI_COMM_WORLD;
  bn_allreduce_fn fn = nullptr;
  void* user_data = nullptr;
};

// Runs the case on the ranks of sync.comm (the shards are indexed by the rank in it); records
// failures with the harness. Collective over sync.comm.
void run_sync_case(const SyncCase& c, const Sync& sync = Sync());

// Layer helpers shared by the other tests.
bn_config* make_config(const SyncCase& c, int64_t virtual_batch);
std::vector<double> get_param(const bn_layer* layer, bn_param which, bn_dtype dtype);
std::vector<unsigned char> to_bytes(const std::vector<double>& v, bn_dtype dtype);
std::vector<double> from_bytes(const std::vector<unsigned char>& b, bn_dtype dtype);
// Seeded global tensors of the case: x (per-feature offsets and spreads) and dy.
std::vector<double> case_x(const SyncCase& c, const std::vector<int64_t>& shape, int step);
std::vector<double> case_dy(const SyncCase& c, const std::vector<int64_t>& shape, int step);
std::vector<double> case_residual(const SyncCase& c, const std::vector<int64_t>& shape, int step);
// The parameters whose bits every rank must share after a step.
std::vector<bn_param> shared_params(const SyncCase& c);
// True (on every rank) when the bytes are the same on every rank of comm.
bool same_on_all_ranks(const std::vector<unsigned char>& bytes, MPI_Comm comm);

}  // namespace bn_mpi_test
