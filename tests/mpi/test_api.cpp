// The bn_mpi functions themselves, the collectives a layer makes, and failing collectives.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "batchnorm/batchnorm_mpi.h"
#include "counting.hpp"
#include "harness.hpp"
#include "sync_case.hpp"

namespace {

using bn_mpi_test::check;
using bn_mpi_test::check_status;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// An intercommunicator between the even and the odd ranks (needs 2 ranks or more).
MPI_Comm make_intercomm(MPI_Comm* local) {
  const int r = bn_mpi_test::rank();
  MPI_Comm_split(MPI_COMM_WORLD, r % 2, r, local);
  MPI_Comm inter = MPI_COMM_NULL;
  MPI_Intercomm_create(*local, 0, MPI_COMM_WORLD, r % 2 == 0 ? 1 : 0, 17, &inter);
  return inter;
}

struct Shot {
  std::vector<int64_t> shape;
  std::vector<unsigned char> x, dy;
};

// This rank's shard of a seeded global batch (NHWC f64, three features).
Shot shard(const bn_mpi_test::SyncCase& c, int step) {
  int64_t total = 0, first = 0;
  for (int r = 0; r < bn_mpi_test::size(); ++r) {
    if (r == bn_mpi_test::rank()) first = total;
    total += c.shards[static_cast<size_t>(r)];
  }
  std::vector<int64_t> global{total};
  global.insert(global.end(), c.sample.begin(), c.sample.end());
  int64_t row = 1;
  for (int64_t s : c.sample) row *= s;
  const std::vector<double> x = bn_mpi_test::case_x(c, global, step), dy = bn_mpi_test::case_dy(c, global, step);
  const auto b = static_cast<std::ptrdiff_t>(first * row),
             e = b + static_cast<std::ptrdiff_t>(c.shards[static_cast<size_t>(bn_mpi_test::rank())] * row);
  Shot s;
  s.shape = {c.shards[static_cast<size_t>(bn_mpi_test::rank())]};
  s.shape.insert(s.shape.end(), c.sample.begin(), c.sample.end());
  s.x = bn_mpi_test::to_bytes(std::vector<double>(x.begin() + b, x.begin() + e), c.dtype);
  s.dy = bn_mpi_test::to_bytes(std::vector<double>(dy.begin() + b, dy.begin() + e), c.dtype);
  s.x.resize(s.x.size() + 8);  // never empty: an empty shard still passes a valid pointer
  s.dy.resize(s.dy.size() + 8);
  return s;
}

bn_layer* counted_layer(const bn_mpi_test::SyncCase& c, bn_mpi_test::Counter* counter, const Shot& s) {
  bn_config* cfg = bn_mpi_test::make_config(c, 0);
  if (cfg == nullptr) return nullptr;
  bn_layer* layer = nullptr;
  if (check_status(bn_config_set_allreduce(cfg, bn_mpi_test::counting_allreduce, counter), BN_OK,
                   "bn_config_set_allreduce") &&
      check_status(bn_create(cfg, s.shape.data(), static_cast<int32_t>(s.shape.size()), &layer), BN_OK, "bn_create")) {
    check_status(bn_set_training(layer, 1), BN_OK, "bn_set_training");
    check_status(bn_set_num_threads(layer, 1), BN_OK, "bn_set_num_threads");
  }
  bn_config_destroy(cfg);
  return layer;
}

bool all_ranks(bool ok) {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

std::vector<unsigned char> snapshot(const bn_layer* layer, const bn_mpi_test::SyncCase& c) {
  std::vector<unsigned char> out;
  for (bn_param p : bn_mpi_test::shared_params(c)) {
    const std::vector<unsigned char> b = bn_mpi_test::to_bytes(bn_mpi_test::get_param(layer, p, c.dtype), BN_F64);
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

bn_mpi_test::SyncCase nhwc_case(std::vector<int64_t> shards, uint64_t seed) {
  bn_mpi_test::SyncCase c;
  c.name = "NHWC";
  c.sample = {2, 2, 3};
  c.axes = {-1};
  c.shards = std::move(shards);
  c.seed = seed;
  return c;
}

}  // namespace

BN_MPI_TEST("bn_config_set_mpi and bn_mpi_allreduce: arguments") {
  bn_config* cfg = nullptr;
  check_status(bn_config_create(&cfg), BN_OK, "bn_config_create");
  check_status(bn_config_set_mpi(nullptr, MPI_COMM_WORLD), BN_ERR_INVALID_ARGUMENT, "bn_config_set_mpi(NULL, world)");
  check(contains(bn_mpi_last_error(), "bn_config_set_mpi: cfg is NULL"),
        std::string("message: ") + bn_mpi_last_error());
  check_status(bn_config_set_mpi(cfg, MPI_COMM_NULL), BN_ERR_INVALID_ARGUMENT, "bn_config_set_mpi(cfg, MPI_COMM_NULL)");
  check(contains(bn_mpi_last_error(), "MPI_COMM_NULL"), std::string("message: ") + bn_mpi_last_error());
  if (bn_mpi_test::size() >= 2) {
    MPI_Comm local = MPI_COMM_NULL;
    MPI_Comm inter = make_intercomm(&local);
    check_status(bn_config_set_mpi(cfg, inter), BN_ERR_INVALID_ARGUMENT, "bn_config_set_mpi(cfg, intercommunicator)");
    check(contains(bn_mpi_last_error(), "intercommunicator"), std::string("message: ") + bn_mpi_last_error());
    MPI_Comm_free(&inter);
    MPI_Comm_free(&local);
  }
  // The user's communicator keeps its error handler.
  MPI_Errhandler before = MPI_ERRHANDLER_NULL, after = MPI_ERRHANDLER_NULL;
  MPI_Comm_get_errhandler(MPI_COMM_WORLD, &before);
  check_status(bn_config_set_mpi(cfg, MPI_COMM_WORLD), BN_OK,
               std::string("bn_config_set_mpi(cfg, world) (bn_mpi_last_error: ") + bn_mpi_last_error() + ")");
  double v[3] = {1.0, 2.0, 3.0};
  check_status(bn_mpi_allreduce(bn_mpi_user_data(MPI_COMM_WORLD), v, 3), BN_OK, "bn_mpi_allreduce(world, 3)");
  MPI_Comm_get_errhandler(MPI_COMM_WORLD, &after);
  check(before == after, "the error handler of MPI_COMM_WORLD changed");
  MPI_Errhandler_free(&before);
  MPI_Errhandler_free(&after);
  bn_config_destroy(cfg);

  void* world = bn_mpi_user_data(MPI_COMM_WORLD);
  check_status(bn_mpi_allreduce(world, v, -1), BN_ERR_INVALID_ARGUMENT, "bn_mpi_allreduce(count -1)");
  check(contains(bn_mpi_last_error(), "bn_mpi_allreduce: count=-1"), std::string("message: ") + bn_mpi_last_error());
  check_status(bn_mpi_allreduce(world, nullptr, 2), BN_ERR_INVALID_ARGUMENT, "bn_mpi_allreduce(NULL buffer, 2)");
  check_status(bn_mpi_allreduce(world, nullptr, 0), BN_OK, "bn_mpi_allreduce(NULL buffer, 0)");
  check_status(bn_mpi_allreduce(bn_mpi_user_data(MPI_COMM_NULL), v, 2), BN_ERR_INVALID_ARGUMENT,
               "bn_mpi_allreduce(MPI_COMM_NULL)");
}

BN_MPI_TEST("bn_mpi_allreduce sums in place, the same bits on every rank") {
  const int r = bn_mpi_test::rank(), p = bn_mpi_test::size();
  std::vector<double> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(static_cast<double>(i) * 0.37 + r) * std::pow(10.0, r % 5);
  std::vector<double> want(v.size(), 0.0);
  for (int q = 0; q < p; ++q)
    for (size_t i = 0; i < v.size(); ++i)
      want[i] += std::sin(static_cast<double>(i) * 0.37 + q) * std::pow(10.0, q % 5);
  check_status(bn_mpi_allreduce(bn_mpi_user_data(MPI_COMM_WORLD), v.data(), static_cast<int64_t>(v.size())), BN_OK,
               "bn_mpi_allreduce");
  double worst = 0.0;
  for (size_t i = 0; i < v.size(); ++i)
    worst = std::fmax(worst, std::fabs(v[i] - want[i]) / (1.0 + std::fabs(want[i])));
  check(worst < 1e-12, "sum off by " + std::to_string(worst));
  check(bn_mpi_test::same_on_all_ranks(bn_mpi_test::to_bytes(v, BN_F64), MPI_COMM_WORLD),
        "the sums differ between ranks");
}

BN_MPI_TEST("collectives: one set per training call, the same on every rank, none in inference") {
  for (int kind = 0; kind < 3; ++kind) {
    // kind 0: an uneven split; 1: an empty shard; 2: rank 0 holds large-mean rows, the others not.
    bn_mpi_test::SyncCase c = nhwc_case(
        kind == 1 ? bn_mpi_test::empty_shards(bn_mpi_test::size()) : bn_mpi_test::uneven_shards(bn_mpi_test::size()),
        90 + static_cast<uint64_t>(kind));
    Shot s = shard(c, 0);
    if (kind == 2 && bn_mpi_test::rank() == 0) {
      std::vector<double> x = bn_mpi_test::from_bytes(s.x, BN_F64);
      for (double& e : x) e += 1e7;
      s.x = bn_mpi_test::to_bytes(x, BN_F64);
    }
    bn_mpi_test::Counter counter;
    counter.comm = bn_mpi_user_data(MPI_COMM_WORLD);
    bn_layer* layer = counted_layer(c, &counter, s);
    if (!all_ranks(layer != nullptr)) {
      check(false, "the counted layer could not be built");
      bn_destroy(layer);
      continue;
    }
    const int32_t nd = static_cast<int32_t>(s.shape.size());
    std::vector<unsigned char> y(s.x.size()), dx(s.x.size()), dg(64), db(64);
    check_status(bn_forward(layer, s.shape.data(), nd, s.x.data(), y.data()), BN_OK, "training bn_forward");
    const size_t forward_calls = counter.counts.size();
    check_status(bn_backward(layer, s.shape.data(), nd, s.x.data(), s.dy.data(), dx.data(), dg.data(), db.data()),
                 BN_OK, "bn_backward");
    const size_t backward_calls = counter.counts.size() - forward_calls;
    check_status(bn_set_training(layer, 0), BN_OK, "bn_set_training(0)");
    check_status(bn_forward(layer, s.shape.data(), nd, s.x.data(), y.data()), BN_OK, "inference bn_forward");
    check(counter.counts.size() == forward_calls + backward_calls, "an inference forward called the callback");
    check(forward_calls >= 1 && backward_calls >= 1, "a training forward and a backward make a collective each");
    std::vector<double> sequence(counter.counts.begin(), counter.counts.end());
    check(bn_mpi_test::same_on_all_ranks(bn_mpi_test::to_bytes(sequence, BN_F64), MPI_COMM_WORLD),
          "the ranks made different collectives (counts)");
    std::string text;
    for (int64_t n : counter.counts) text += " " + std::to_string(n);
    const char* what[3] = {"uneven shards", "an empty shard", "one large-mean shard"};
    bn_mpi_test::note(std::string(what[kind]) + ", 3 features: forward " + std::to_string(forward_calls) +
                      " collective(s), backward " + std::to_string(backward_calls) + "; doubles per call:" + text);
    bn_destroy(layer);
  }
}

BN_MPI_TEST("a failing collective on every rank: BN_ERR_CALLBACK, nothing changed") {
  const bn_mpi_test::SyncCase c = nhwc_case(bn_mpi_test::uneven_shards(bn_mpi_test::size()), 100);
  const Shot a = shard(c, 0), b = shard(c, 1);
  bn_mpi_test::Counter counter;
  counter.comm = bn_mpi_user_data(MPI_COMM_WORLD);
  bn_layer* layer = counted_layer(c, &counter, a);
  if (!all_ranks(layer != nullptr)) {
    check(false, "the layer could not be built");
    bn_destroy(layer);
    return;
  }
  const int32_t nd = static_cast<int32_t>(a.shape.size());
  const size_t n = a.x.size();
  std::vector<unsigned char> y(n), dx(n), dg(3 * 8), db(3 * 8);
  check_status(bn_forward(layer, a.shape.data(), nd, a.x.data(), y.data()), BN_OK, "forward A");
  check_status(bn_backward(layer, a.shape.data(), nd, a.x.data(), a.dy.data(), dx.data(), dg.data(), db.data()), BN_OK,
               "backward A");
  const std::vector<unsigned char> state = snapshot(layer, c);

  // A forward whose first collective fails everywhere.
  counter.fail_at = static_cast<int64_t>(counter.counts.size()) + 1;
  std::vector<unsigned char> y2(b.x.size(), 0xEE);
  check_status(bn_forward(layer, b.shape.data(), nd, b.x.data(), y2.data()), BN_ERR_CALLBACK, "forward B, failing");
  check(!std::string(bn_last_error()).empty(), "no message after BN_ERR_CALLBACK");
  check(y2 == std::vector<unsigned char>(b.x.size(), 0xEE), "the failed forward wrote y");
  check(snapshot(layer, c) == state, "the failed forward changed a parameter or statistic");
  // The saved forward is still A's: its backward gives the same bits.
  std::vector<unsigned char> dx2(n), dg2(dg.size()), db2(db.size());
  check_status(bn_backward(layer, a.shape.data(), nd, a.x.data(), a.dy.data(), dx2.data(), dg2.data(), db2.data()),
               BN_OK, "backward A after the failed forward");
  check(dx2 == dx && dg2 == dg && db2 == db, "backward A changed after the failed forward");

  // A backward whose first collective fails everywhere.
  counter.fail_at = static_cast<int64_t>(counter.counts.size()) + 1;
  std::vector<unsigned char> dx3(n, 0xEE), dg3(dg.size(), 0xEE), db3(db.size(), 0xEE);
  check_status(bn_backward(layer, a.shape.data(), nd, a.x.data(), a.dy.data(), dx3.data(), dg3.data(), db3.data()),
               BN_ERR_CALLBACK, "backward A, failing");
  check(dx3 == std::vector<unsigned char>(n, 0xEE) && dg3 == std::vector<unsigned char>(dg.size(), 0xEE) &&
            db3 == std::vector<unsigned char>(db.size(), 0xEE),
        "the failed backward wrote an output");
  check(snapshot(layer, c) == state, "the failed backward changed a parameter or statistic");
  check_status(bn_backward(layer, a.shape.data(), nd, a.x.data(), a.dy.data(), dx3.data(), dg3.data(), db3.data()),
               BN_OK, "backward A again");
  // (dx3's padding after the shard still holds 0xEE: compare the shard only)
  check(std::equal(dx.begin(), dx.end() - 8, dx3.begin()), "backward A changed after the failed backward: dx");
  check(dg3 == dg, "backward A changed after the failed backward: dgamma");
  check(db3 == db, "backward A changed after the failed backward: dbeta");
  bn_destroy(layer);
}

BN_MPI_TEST("a collective failing on rank 0 only (its last one): rank 0 unchanged, the others go on") {
  const bn_mpi_test::SyncCase c = nhwc_case(bn_mpi_test::empty_shards(bn_mpi_test::size()), 110);
  const Shot a = shard(c, 0), b = shard(c, 1);
  bn_mpi_test::Counter counter, twin_counter;
  counter.comm = twin_counter.comm = bn_mpi_user_data(MPI_COMM_WORLD);
  counter.reduce_then_fail = true;
  bn_layer* layer = counted_layer(c, &counter, a);
  bn_layer* twin = counted_layer(c, &twin_counter, a);  // the same layer, to count each call's collectives
  if (!all_ranks(layer != nullptr && twin != nullptr)) {
    check(false, "the layers could not be built");
    bn_destroy(layer);
    bn_destroy(twin);
    return;
  }
  const bool failing = bn_mpi_test::rank() == 0;
  const int32_t nd = static_cast<int32_t>(a.shape.size());
  const size_t n = a.x.size();
  std::vector<unsigned char> y(n), dx(n), dg(3 * 8), db(3 * 8), y_twin(n), dx_twin(n), dg_twin(dg.size()),
      db_twin(db.size());

  check_status(bn_forward(layer, a.shape.data(), nd, a.x.data(), y.data()), BN_OK, "forward A");
  check_status(bn_forward(twin, a.shape.data(), nd, a.x.data(), y_twin.data()), BN_OK, "twin forward A");
  size_t before = twin_counter.counts.size();
  check_status(
      bn_backward(twin, a.shape.data(), nd, a.x.data(), a.dy.data(), dx_twin.data(), dg_twin.data(), db_twin.data()),
      BN_OK, "twin backward A");
  // The backward on the layer fails on rank 0 at its last collective.
  if (failing) counter.fail_at = static_cast<int64_t>(counter.counts.size() + (twin_counter.counts.size() - before));
  std::vector<unsigned char> dx1(n, 0xEE), dg1(dg.size(), 0xEE), db1(db.size(), 0xEE);
  check_status(bn_backward(layer, a.shape.data(), nd, a.x.data(), a.dy.data(), dx1.data(), dg1.data(), db1.data()),
               failing ? BN_ERR_CALLBACK : BN_OK, "backward A (failing on rank 0)");
  if (failing)
    check(dx1 == std::vector<unsigned char>(n, 0xEE) && dg1 == std::vector<unsigned char>(dg.size(), 0xEE) &&
              db1 == std::vector<unsigned char>(db.size(), 0xEE),
          "the failed backward wrote an output");
  // Every rank runs it again: rank 0's saved forward is intact, so all agree with the twin.
  check_status(bn_backward(layer, a.shape.data(), nd, a.x.data(), a.dy.data(), dx.data(), dg.data(), db.data()), BN_OK,
               "backward A again");
  check(dx == dx_twin && dg == dg_twin && db == db_twin, "backward A differs from the twin's");

  // The next forward fails on rank 0 at its last collective, after the others got their sums.
  const std::vector<unsigned char> state = snapshot(layer, c);
  before = twin_counter.counts.size();
  check_status(bn_forward(twin, b.shape.data(), nd, b.x.data(), y_twin.data()), BN_OK, "twin forward B");
  if (failing) counter.fail_at = static_cast<int64_t>(counter.counts.size() + (twin_counter.counts.size() - before));
  std::vector<unsigned char> y2(b.x.size(), 0xEE);
  check_status(bn_forward(layer, b.shape.data(), nd, b.x.data(), y2.data()), failing ? BN_ERR_CALLBACK : BN_OK,
               "forward B (failing on rank 0)");
  if (failing) {
    check(y2 == std::vector<unsigned char>(b.x.size(), 0xEE), "the failed forward wrote y");
    check(snapshot(layer, c) == state, "the failed forward changed a parameter or statistic");
  } else {
    check(snapshot(layer, c) == snapshot(twin, c), "a rank that did not fail differs from the twin");
  }
  bn_destroy(layer);
  bn_destroy(twin);
}
