// A minimal test harness for programs run under mpirun. Every rank runs every test; a failed
// check is recorded and the test goes on, so that all ranks keep making the same collective
// calls (a check that returned early would leave the other ranks waiting forever). After each
// test the ranks agree on the verdict with one MPI_Allreduce; rank 0 prints it.
#pragma once

#include <mpi.h>

#include <functional>
#include <sstream>
#include <string>

#include "batchnorm/batchnorm.h"

namespace bn_mpi_test {

int rank();
int size();

// Records a failure of the running test on this rank and prints it with the rank.
void fail(const std::string& message);
// fail(what) unless ok; returns ok.
bool check(bool ok, const std::string& what);
// Checks a bn_* status, quoting bn_last_error() on a mismatch; returns got == want.
bool check_status(bn_status got, bn_status want, const std::string& call);
// Prints on rank 0 only (notes that belong to the test log, such as collective counts).
void note(const std::string& message);

struct Registrar {
  Registrar(const char* name, void (*fn)());
};

// Runs the registered tests whose name contains `filter` (all when empty) on every rank.
// Returns the number of failed tests, the same on every rank.
int run_all(const std::string& filter);

}  // namespace bn_mpi_test

#define BN_MPI_CONCAT2(a, b) a##b
#define BN_MPI_CONCAT(a, b) BN_MPI_CONCAT2(a, b)
// BN_MPI_TEST("name") { body }: registers a test that every rank runs.
#define BN_MPI_TEST(name)                                                                                             \
  static void BN_MPI_CONCAT(mpi_test_fn_, __LINE__)();                                                                \
  static const bn_mpi_test::Registrar BN_MPI_CONCAT(mpi_test_reg_, __LINE__)(name,                                    \
                                                                             &BN_MPI_CONCAT(mpi_test_fn_, __LINE__)); \
  static void BN_MPI_CONCAT(mpi_test_fn_, __LINE__)()
