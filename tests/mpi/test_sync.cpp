// Synchronized batch norm against one process on the concatenated batch: outputs, dx, dgamma
// and dbeta (summed over ranks), batch and moving statistics, for every layout, uneven and
// empty shards, renorm, fused ON, ghost batches, and several training steps with the shared
// parameters and statistics bitwise equal on every rank.
#include "harness.hpp"
#include "sync_case.hpp"

namespace {

using bn_mpi_test::SyncCase;

// The layouts: NCHW (axis 1), NHWC (axis -1), dense (N, C), and two kept axes.
std::vector<SyncCase> layouts(bn_dtype dtype, const std::vector<int64_t>& shards, const std::string& tag) {
  std::vector<SyncCase> cases(4);
  cases[0].name = "NCHW " + tag;
  cases[0].sample = {3, 4, 5};
  cases[0].axes = {1};
  cases[1].name = "NHWC " + tag;
  cases[1].sample = {4, 5, 3};
  cases[1].axes = {-1};
  cases[2].name = "dense " + tag;
  cases[2].sample = {7};
  cases[2].axes = {-1};
  cases[3].name = "axes (1, 3) " + tag;
  cases[3].sample = {3, 4, 2};
  cases[3].axes = {1, 3};
  uint64_t seed = dtype == BN_F64 ? 10 : 20;
  for (SyncCase& c : cases) {
    c.dtype = dtype;
    c.shards = shards;
    c.seed = seed++;
  }
  return cases;
}

}  // namespace

BN_MPI_TEST("layouts, f64, uneven shards") {
  for (const SyncCase& c : layouts(BN_F64, bn_mpi_test::uneven_shards(bn_mpi_test::size()), "f64 uneven"))
    bn_mpi_test::run_sync_case(c);
}

BN_MPI_TEST("layouts, f32, uneven shards") {
  for (const SyncCase& c : layouts(BN_F32, bn_mpi_test::uneven_shards(bn_mpi_test::size()), "f32 uneven"))
    bn_mpi_test::run_sync_case(c);
}

BN_MPI_TEST("layouts, f64 and f32, an empty shard") {
  for (bn_dtype dtype : {BN_F64, BN_F32})
    for (const SyncCase& c : layouts(dtype, bn_mpi_test::empty_shards(bn_mpi_test::size()), "empty shard"))
      bn_mpi_test::run_sync_case(c);
}

BN_MPI_TEST("renorm, clipped, three steps") {
  for (bn_dtype dtype : {BN_F64, BN_F32}) {
    SyncCase c;
    c.name = "renorm";
    c.dtype = dtype;
    c.sample = {4, 3};
    c.axes = {-1};
    c.shards = bn_mpi_test::uneven_shards(bn_mpi_test::size());
    c.renorm = true;
    c.steps = 3;
    c.seed = 31;
    bn_mpi_test::run_sync_case(c);
    c.name = "renorm, empty shard";
    c.shards = bn_mpi_test::empty_shards(bn_mpi_test::size());
    bn_mpi_test::run_sync_case(c);
  }
}

BN_MPI_TEST("fused ON (Bessel's correction with the global count)") {
  for (int layout = 0; layout < 2; ++layout) {
    SyncCase c;
    c.name = layout == 0 ? "fused NHWC" : "fused NCHW";
    c.dtype = BN_F32;
    c.sample = layout == 0 ? std::vector<int64_t>{3, 2, 4} : std::vector<int64_t>{4, 3, 2};
    c.axes = {layout == 0 ? -1 : 1};
    c.shards =
        layout == 0 ? bn_mpi_test::uneven_shards(bn_mpi_test::size()) : bn_mpi_test::empty_shards(bn_mpi_test::size());
    c.fused = BN_FUSED_ON;
    c.steps = 2;
    c.seed = 41 + static_cast<uint64_t>(layout);
    bn_mpi_test::run_sync_case(c);
  }
}

BN_MPI_TEST("ghost batches (per-replica ghosts merged, Keras SyncBatchNormalization)") {
  for (bn_dtype dtype : {BN_F64, BN_F32}) {
    SyncCase c;
    c.name = "ghost NHWC";
    c.dtype = dtype;
    c.sample = {2, 2, 3};
    c.axes = {-1};
    c.shards = bn_mpi_test::even_shards(bn_mpi_test::size(), 6);
    c.ghost = 3;
    c.steps = 2;
    c.seed = 51;
    bn_mpi_test::run_sync_case(c);
    c.name = "ghost dense, renorm";
    c.sample = {5};
    c.shards = bn_mpi_test::even_shards(bn_mpi_test::size(), 8);
    c.ghost = 2;
    c.renorm = true;
    c.seed = 52;
    bn_mpi_test::run_sync_case(c);
  }
}

BN_MPI_TEST("several steps: regularizers, ReLU, unbiased moving variance") {
  for (bn_dtype dtype : {BN_F64, BN_F32}) {
    SyncCase c;
    c.name = "six steps";
    c.dtype = dtype;
    c.sample = {6};
    c.axes = {-1};
    c.shards = bn_mpi_test::uneven_shards(bn_mpi_test::size());
    c.regularized = true;
    c.relu = true;
    c.moving_variance = BN_MOVING_VARIANCE_UNBIASED;
    c.steps = 6;
    c.seed = 61;
    bn_mpi_test::run_sync_case(c);
  }
}

BN_MPI_TEST("large mean (1e4 offsets, unit spread)") {
  for (bn_dtype dtype : {BN_F64, BN_F32}) {
    SyncCase c;
    c.name = "large mean";
    c.dtype = dtype;
    c.sample = {3, 3};
    c.axes = {-1};
    c.shards = bn_mpi_test::uneven_shards(bn_mpi_test::size());
    c.offset = 1e4;
    c.spread_lo = 0.5;
    c.spread_hi = 1.0;
    c.steps = 2;
    c.seed = 71;
    bn_mpi_test::run_sync_case(c);
  }
}

BN_MPI_TEST("a sub-communicator: two groups synchronize apart") {
  // Ranks split into halves (even/odd); each half checks against its own concatenated batch.
  MPI_Comm half = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, bn_mpi_test::rank() % 2, bn_mpi_test::rank(), &half);
  int ranks = 0;
  MPI_Comm_size(half, &ranks);
  SyncCase c;
  c.name = "sub-communicator NHWC";
  c.sample = {2, 3};
  c.axes = {-1};
  c.shards = bn_mpi_test::uneven_shards(ranks);
  c.seed = 81 + static_cast<uint64_t>(bn_mpi_test::rank() % 2);  // the halves see different data
  bn_mpi_test::Sync sync;
  sync.comm = half;
  bn_mpi_test::run_sync_case(c, sync);
  MPI_Comm_free(&half);
}

BN_MPI_TEST("16-bit layers (bfloat16, float16) and the residual epilogue") {
  for (bn_dtype dtype : {BN_BF16, BN_F16}) {
    SyncCase c;
    c.name = dtype == BN_BF16 ? "bf16 NHWC" : "f16 NCHW";
    c.dtype = dtype;
    c.sample = dtype == BN_BF16 ? std::vector<int64_t>{3, 2, 4} : std::vector<int64_t>{4, 3, 2};
    c.axes = {dtype == BN_BF16 ? -1 : 1};
    c.shards = dtype == BN_BF16 ? bn_mpi_test::uneven_shards(bn_mpi_test::size())
                                : bn_mpi_test::empty_shards(bn_mpi_test::size());
    c.steps = 2;
    c.seed = 91 + static_cast<uint64_t>(dtype);
    bn_mpi_test::run_sync_case(c);
  }
  for (bn_dtype dtype : {BN_F64, BN_F32}) {
    SyncCase c;
    c.name = "residual + ReLU";
    c.dtype = dtype;
    c.sample = {2, 5};
    c.axes = {-1};
    c.shards = bn_mpi_test::uneven_shards(bn_mpi_test::size());
    c.residual = true;
    c.relu = true;
    c.steps = 3;
    c.seed = 95;
    bn_mpi_test::run_sync_case(c);
  }
}
