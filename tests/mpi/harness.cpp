#include "harness.hpp"

#include <cstdio>
#include <vector>

namespace bn_mpi_test {
namespace {

struct Test {
  const char* name;
  void (*fn)();
};

std::vector<Test>& registry() {
  static std::vector<Test> tests;
  return tests;
}

const char* g_current = "";
int g_failures = 0;  // checks failed on this rank in the running test

}  // namespace

int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

Registrar::Registrar(const char* name, void (*fn)()) {
  registry().push_back({name, fn});
}

void fail(const std::string& message) {
  ++g_failures;
  std::fprintf(stderr, "[rank %d/%d] %s: FAILED: %s\n", rank(), size(), g_current, message.c_str());
  std::fflush(stderr);
}

bool check(bool ok, const std::string& what) {
  if (!ok) fail(what);
  return ok;
}

bool check_status(bn_status got, bn_status want, const std::string& call) {
  if (got == want) return true;
  fail(call + " returned " + bn_status_string(got) + " but expected " + bn_status_string(want) +
       " (bn_last_error: " + bn_last_error() + ")");
  return false;
}

void note(const std::string& message) {
  if (rank() != 0) return;
  std::printf("  note: %s\n", message.c_str());
  std::fflush(stdout);
}

int run_all(const std::string& filter) {
  int failed = 0, ran = 0;
  for (const Test& t : registry()) {
    if (!filter.empty() && std::string(t.name).find(filter) == std::string::npos) continue;
    g_current = t.name;
    g_failures = 0;
    if (rank() == 0) {
      std::printf("[ RUN  ] %s\n", t.name);
      std::fflush(stdout);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    t.fn();
    int local = g_failures, ranks_failed = 0;
    local = local > 0 ? 1 : 0;
    MPI_Allreduce(&local, &ranks_failed, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    ++ran;
    if (ranks_failed > 0) ++failed;
    if (rank() == 0) {
      std::printf("[ %s ] %s (%.2f s%s)\n", ranks_failed ? "FAIL" : " OK ", t.name, MPI_Wtime() - start,
                  ranks_failed ? (", failed on " + std::to_string(ranks_failed) + " rank(s)").c_str() : "");
      std::fflush(stdout);
    }
  }
  if (rank() == 0) {
    std::printf("%d of %d tests passed on %d ranks\n", ran - failed, ran, size());
    std::fflush(stdout);
  }
  if (ran == 0) return 1;  // a filter that matches nothing is an error
  return failed;
}

}  // namespace bn_mpi_test
