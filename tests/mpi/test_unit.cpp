// bn_mpi_unit_tests: libbatchnorm_mpi's source built into the test with pieces of 7 doubles
// (BN_MPI_MAX_CHUNK), and MPI_Allreduce interposed through MPI's profiling interface (PMPI)
// to record the pieces and to inject an MPI error (raised through the communicator's error
// handler, as MPI does).
#include <mpi.h>

#include <cmath>
#include <string>
#include <vector>

#include "batchnorm/batchnorm_mpi.h"
#include "harness.hpp"

namespace {

struct Interposer {
  bool armed = false;
  std::vector<int> pieces;
  int fail_piece = 0;  // 1-based piece that fails with MPI_ERR_OTHER; 0 = none
};
Interposer g_mpi;

void arm(int fail_piece) {
  g_mpi.armed = true;
  g_mpi.pieces.clear();
  g_mpi.fail_piece = fail_piece;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A duplicate of MPI_COMM_WORLD that returns errors (the recipe of batchnorm_mpi.h).
MPI_Comm returning_comm() {
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  return comm;
}

}  // namespace

extern "C" int MPI_Allreduce(const void* send, void* recv, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm) {
  if (g_mpi.armed) {
    g_mpi.pieces.push_back(count);
    if (static_cast<int>(g_mpi.pieces.size()) == g_mpi.fail_piece) {
      MPI_Comm_call_errhandler(comm, MPI_ERR_OTHER);
      return MPI_ERR_OTHER;
    }
  }
  return PMPI_Allreduce(send, recv, count, type, op, comm);
}

BN_MPI_TEST("pieces of at most BN_MPI_MAX_CHUNK doubles") {
  const int r = bn_mpi_test::rank(), p = bn_mpi_test::size();
  void* world = bn_mpi_user_data(MPI_COMM_WORLD);
  const std::vector<std::pair<int64_t, std::vector<int>>> cases = {{1, {1}}, {7, {7}}, {14, {7, 7}}, {20, {7, 7, 6}}};
  for (const auto& [count, pieces] : cases) {
    std::vector<double> v(static_cast<size_t>(count));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i) + 100.0 * r;
    arm(0);
    bn_mpi_test::check_status(bn_mpi_allreduce(world, v.data(), count), BN_OK, "bn_mpi_allreduce");
    g_mpi.armed = false;
    bn_mpi_test::check(g_mpi.pieces == pieces, "count " + std::to_string(count) + ": unexpected pieces");
    for (size_t i = 0; i < v.size(); ++i)
      bn_mpi_test::check(v[i] == static_cast<double>(i) * p + 100.0 * p * (p - 1) / 2,
                         "count " + std::to_string(count) + ": wrong sum at " + std::to_string(i));
  }
}

BN_MPI_TEST("an MPI error (returned by the communicator's handler) becomes BN_ERR_CALLBACK with MPI's text") {
  MPI_Comm comm = returning_comm();
  std::vector<double> v(20, 1.0);
  arm(2);
  const bn_status st = bn_mpi_allreduce(bn_mpi_user_data(comm), v.data(), 20);
  g_mpi.armed = false;
  bn_mpi_test::check_status(st, BN_ERR_CALLBACK, "bn_mpi_allreduce with an MPI error in its second piece");
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(MPI_ERR_OTHER, text, &length);
  const std::string message = bn_mpi_last_error();
  bn_mpi_test::check(
      contains(message, "bn_mpi_allreduce: MPI_Allreduce of doubles [7, 14) of 20 failed with MPI error") &&
          contains(message, text),
      "message: " + message);
  bn_mpi_test::check(g_mpi.pieces.size() == 2, "the pieces after the failing one were still sent");
  MPI_Comm_free(&comm);
}

BN_MPI_TEST("an MPI error inside bn_forward: BN_ERR_CALLBACK, the moving statistics unchanged") {
  MPI_Comm comm = returning_comm();
  bn_config* cfg = nullptr;
  bn_layer* layer = nullptr;
  const int64_t shape[2] = {4, 3};
  bn_mpi_test::check_status(bn_config_create(&cfg), BN_OK, "bn_config_create");
  bn_mpi_test::check_status(bn_config_set_dtype(cfg, BN_F64), BN_OK, "bn_config_set_dtype");
  const bool attached = bn_mpi_test::check_status(bn_config_set_mpi(cfg, comm), BN_OK, "bn_config_set_mpi");
  bn_mpi_test::check_status(bn_create(cfg, shape, 2, &layer), BN_OK, "bn_create");
  bn_config_destroy(cfg);
  if (attached && layer != nullptr) {
    bn_set_training(layer, 1);
    std::vector<double> x(12), y(12, -7.0), mean(3), mean_after(3);
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(static_cast<double>(i) + bn_mpi_test::rank());
    bn_get_param(layer, BN_PARAM_MOVING_MEAN, mean.data(), 3);
    arm(1);
    const bn_status st = bn_forward(layer, shape, 2, x.data(), y.data());
    g_mpi.armed = false;
    bn_mpi_test::check_status(st, BN_ERR_CALLBACK, "bn_forward with an MPI error");
    bn_mpi_test::check(contains(bn_mpi_last_error(), "failed with MPI error"),
                       std::string("bn_mpi_last_error: ") + bn_mpi_last_error());
    bn_get_param(layer, BN_PARAM_MOVING_MEAN, mean_after.data(), 3);
    bn_mpi_test::check(mean == mean_after && y == std::vector<double>(12, -7.0),
                       "the failed forward changed something");
    bn_mpi_test::check_status(bn_forward(layer, shape, 2, x.data(), y.data()), BN_OK, "bn_forward again");
  }
  bn_destroy(layer);
  MPI_Comm_free(&comm);
}
