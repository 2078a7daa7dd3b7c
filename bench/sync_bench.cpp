// bn_sync_bench: the cost of synchronized batch norm over MPI, per training step (bn_forward +
// bn_backward), on the ranks of MPI_COMM_WORLD (run it under mpiexec; bench/run_sync.sh runs
// 2 and 4 ranks). For each case of a shape list whose dims are one rank's shard (weak
// scaling, as data-parallel training runs), it times the step
//   local   a plain layer on the rank's shard (every rank at once, no communication)
//   synced  the same layer with the cross-replica callback: bn_mpi_allreduce over the world,
//           through a wrapper that counts the collectives, their doubles and the time inside
// and prints, on rank 0, the collectives and payload bytes a step needs and the times. A
// sample times k steps after a barrier, the two layers' samples alternate, a sample's time is
// the slowest rank's, and the median of the samples is reported (the number of steps is
// decided by rank 0 and shared, so every rank makes the same collectives). --check compares the synchronized y, dx and
// the rank-summed dgamma/dbeta with one process on the gathered batch (exit 1 on a mismatch).
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "batchnorm/batchnorm_mpi.h"
#include "src/cases.hpp"

namespace {

using bn::bench::Case;

struct Options {
  std::string cases = BN_BENCH_SOURCE_DIR "/sync_shapes.txt";
  std::string csv;
  double target = 0.5;  // seconds of samples per case and variant
  int threads = 1;      // bn_set_num_threads per rank
  bool check = false;
  bool quick = false;
};

struct World {
  int rank = 0, size = 1;
};

// The wrapping callback: counts calls and doubles, and the time spent inside.
struct Counter {
  void* comm = nullptr;
  long calls = 0;
  long long doubles = 0;
  double seconds = 0.0;
};

bn_status counting_allreduce(void* user_data, double* buffer, int64_t count) {
  Counter* c = static_cast<Counter*>(user_data);
  const double start = MPI_Wtime();
  const bn_status st = bn_mpi_allreduce(c->comm, buffer, count);
  c->seconds += MPI_Wtime() - start;
  ++c->calls;
  c->doubles += count;
  return st;
}

[[noreturn]] void die(const World& w, const std::string& what) {
  std::fprintf(stderr, "bn_sync_bench [rank %d]: %s (bn_last_error: %s; bn_mpi_last_error: %s)\n", w.rank, what.c_str(),
               bn_last_error(), bn_mpi_last_error());
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}

void ok(const World& w, bn_status st, const char* call) {
  if (st != BN_OK) die(w, std::string(call) + " failed: " + bn_status_string(st));
}

// One layer on a shard shape; callback NULL = local.
struct Layer {
  bn_layer* layer = nullptr;
  Layer(const World& w, const Case& k, const std::vector<int64_t>& shape, int threads, Counter* counter) {
    bn_config* cfg = nullptr;
    ok(w, bn_config_create(&cfg), "bn_config_create");
    const int32_t axis = k.channel_axis();
    ok(w, bn_config_set_axes(cfg, &axis, 1), "bn_config_set_axes");
    ok(w, bn_config_set_fused(cfg, BN_FUSED_OFF), "bn_config_set_fused");
    if (counter != nullptr) ok(w, bn_config_set_allreduce(cfg, counting_allreduce, counter), "bn_config_set_allreduce");
    ok(w, bn_create(cfg, shape.data(), static_cast<int32_t>(shape.size()), &layer), "bn_create");
    bn_config_destroy(cfg);
    ok(w, bn_set_training(layer, 1), "bn_set_training");
    ok(w, bn_set_num_threads(layer, threads), "bn_set_num_threads");
  }
  ~Layer() { bn_destroy(layer); }
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;
};

struct Tensors {
  std::vector<int64_t> shape;
  std::vector<float> x, dy, y, dx, dgamma, dbeta;
};

// This rank's shard: per-channel offsets and spreads (the same for every rank), values from a
// generator seeded by the case and the rank.
Tensors make_shard(const Case& k, int rank, uint64_t case_index) {
  Tensors t;
  t.shape = k.dims;
  const size_t n = static_cast<size_t>(k.elements()), c = static_cast<size_t>(k.c);
  std::mt19937_64 channel_rng(1000 + case_index), rng(case_index * 7919 + static_cast<uint64_t>(rank));
  std::uniform_real_distribution<double> offset(-2.0, 2.0), spread(0.5, 2.0);
  std::vector<double> mu(c), sd(c);
  for (size_t i = 0; i < c; ++i) {
    mu[i] = offset(channel_rng);
    sd[i] = spread(channel_rng);
  }
  std::normal_distribution<double> unit(0.0, 1.0);
  t.x.resize(n);
  t.dy.resize(n);
  const size_t s = static_cast<size_t>(k.s);
  for (size_t i = 0; i < n; ++i) {
    const size_t ch = k.channels_last ? i % c : (i / s) % c;
    t.x[i] = static_cast<float>(mu[ch] + sd[ch] * unit(rng));
    t.dy[i] = static_cast<float>(unit(rng));
  }
  t.y.resize(n);
  t.dx.resize(n);
  t.dgamma.resize(c);
  t.dbeta.resize(c);
  return t;
}

void step(const World& w, bn_layer* layer, Tensors& t) {
  const int32_t nd = static_cast<int32_t>(t.shape.size());
  ok(w, bn_forward(layer, t.shape.data(), nd, t.x.data(), t.y.data()), "bn_forward");
  ok(w, bn_backward(layer, t.shape.data(), nd, t.x.data(), t.dy.data(), t.dx.data(), t.dgamma.data(), t.dbeta.data()),
     "bn_backward");
}

struct StepTimes {
  double local = 0.0;                          // seconds per step of the plain layer (median sample)
  double synced = 0.0;                         // of the synchronized layer
  double in_coll = 0.0;                        // of which inside the callback (includes waiting for the other ranks)
  double local_best = 0.0, synced_best = 0.0;  // the fastest samples
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// k steps of one layer, timed on this rank after a barrier; returns seconds per step.
double sample(bn_layer* layer, Tensors& t, const World& w, int k) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double start = MPI_Wtime();
  for (int i = 0; i < k; ++i) step(w, layer, t);
  return (MPI_Wtime() - start) / k;
}

// The two layers' samples alternate (local, synced, local, ...) so that both meet the same
// load on a shared machine. Each sample's time is the slowest rank's; the medians are
// returned. Rank 0 sizes the samples from a calibration step and shares k and the count.
StepTimes time_steps(const World& w, bn_layer* local, bn_layer* synced, Counter* counter, Tensors& t,
                     const Options& opt) {
  for (int i = 0; i < 2; ++i) {  // warm-up: plans, first touch, MPI connections
    step(w, local, t);
    step(w, synced, t);
  }
  double one = sample(local, t, w, 1) + sample(synced, t, w, 1);
  MPI_Allreduce(MPI_IN_PLACE, &one, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  one = std::max(one / 2, 1e-9);
  int plan[2] = {std::max(1, static_cast<int>(std::ceil(2e-3 / one))), 0};  // k: >= 2 ms per sample
  plan[1] = std::clamp(static_cast<int>(opt.target / (plan[0] * one)), 3, 51);
  MPI_Bcast(plan, 2, MPI_INT, 0, MPI_COMM_WORLD);
  std::vector<double> locals, synceds, colls;
  for (int s = 0; s < plan[1]; ++s) {
    double times[3] = {sample(local, t, w, plan[0]), 0.0, counter->seconds};
    times[1] = sample(synced, t, w, plan[0]);
    times[2] = (counter->seconds - times[2]) / plan[0];
    MPI_Allreduce(MPI_IN_PLACE, times, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    locals.push_back(times[0]);
    synceds.push_back(times[1]);
    colls.push_back(times[2]);
  }
  return {median(locals), median(synceds), median(colls), *std::min_element(locals.begin(), locals.end()),
          *std::min_element(synceds.begin(), synceds.end())};
}

// --check: one process on the gathered batch against this rank's synchronized results.
bool check_case(const World& w, const Case& k, Tensors& t, int threads, Counter* counter) {
  Layer synced(w, k, t.shape, threads, counter);
  step(w, synced.layer, t);
  const size_t n = t.x.size(), c = static_cast<size_t>(k.c);
  Tensors all;
  all.shape = t.shape;
  all.shape[0] *= w.size;
  all.x.resize(n * static_cast<size_t>(w.size));
  all.dy.resize(all.x.size());
  MPI_Allgather(t.x.data(), static_cast<int>(n), MPI_FLOAT, all.x.data(), static_cast<int>(n), MPI_FLOAT,
                MPI_COMM_WORLD);
  MPI_Allgather(t.dy.data(), static_cast<int>(n), MPI_FLOAT, all.dy.data(), static_cast<int>(n), MPI_FLOAT,
                MPI_COMM_WORLD);
  all.y.resize(all.x.size());
  all.dx.resize(all.x.size());
  all.dgamma.resize(c);
  all.dbeta.resize(c);
  Layer ref(w, k, all.shape, threads, nullptr);
  step(w, ref.layer, all);
  std::vector<double> dg(t.dgamma.begin(), t.dgamma.end()), db(t.dbeta.begin(), t.dbeta.end());
  MPI_Allreduce(MPI_IN_PLACE, dg.data(), static_cast<int>(c), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, db.data(), static_cast<int>(c), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  // Relative to the largest magnitude of each result (1e-4, as bn_bench --check).
  auto worst = [](const float* got, const float* want, size_t count, const double* got_d = nullptr) {
    double scale = 1e-30, diff = 0.0;
    for (size_t i = 0; i < count; ++i) scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
    for (size_t i = 0; i < count; ++i)
      diff = std::max(diff, std::fabs((got_d ? got_d[i] : static_cast<double>(got[i])) - want[i]));
    return diff / scale;
  };
  const size_t first = n * static_cast<size_t>(w.rank);
  const double e[4] = {worst(t.y.data(), all.y.data() + first, n), worst(t.dx.data(), all.dx.data() + first, n),
                       worst(nullptr, all.dgamma.data(), c, dg.data()), worst(nullptr, all.dbeta.data(), c, db.data())};
  const bool pass = *std::max_element(e, e + 4) <= 1e-4;
  if (!pass)
    std::fprintf(stderr,
                 "bn_sync_bench [rank %d]: --check %s %s: relative error y %.2g, dx %.2g, dgamma %.2g, dbeta %.2g\n",
                 w.rank, k.name.c_str(), k.layout.c_str(), e[0], e[1], e[2], e[3]);
  int mine = pass ? 1 : 0, all_pass = 0;
  MPI_Allreduce(&mine, &all_pass, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all_pass == 1;
}

Options parse(int argc, char** argv, const World& w) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(w, "missing value after " + a);
      return argv[++i];
    };
    if (a == "--cases")
      o.cases = value();
    else if (a == "--csv")
      o.csv = value();
    else if (a == "--target")
      o.target = std::atof(value().c_str());
    else if (a == "--threads")
      o.threads = std::atoi(value().c_str());
    else if (a == "--check")
      o.check = true;
    else if (a == "--quick")
      o.quick = o.check = true;
    else if (a == "--help") {
      if (w.rank == 0)
        std::printf(
            "usage: mpiexec -n P %s [--cases FILE] [--csv PATH] [--target SEC] [--threads T] [--check] [--quick]\n",
            argv[0]);
      MPI_Finalize();
      std::exit(0);
    } else
      die(w, "unknown option " + a);
  }
  if (o.quick) o.target = 0.02;
  return o;
}

std::string shape_text(const std::vector<int64_t>& dims) {
  std::string s;
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? "x" : "") + std::to_string(dims[i]);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  World w;
  MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w.size);
  const Options opt = parse(argc, argv, w);
  const std::vector<Case> cases = bn::bench::read_cases(opt.cases);
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = "";
  int length = 0;
  MPI_Get_library_version(version, &length);
  if (char* nl = std::strchr(version, '\n')) *nl = '\0';
  FILE* csv = nullptr;
  if (w.rank == 0) {
    std::printf("bn_sync_bench: libbatchnorm %s, %d ranks, %d batch norm thread(s) per rank, %s\n", bn_version_string(),
                w.size, opt.threads, version);
    std::printf(
        "a step = bn_forward + bn_backward (f32, training, fused off) on each rank's shard; times: median of the "
        "slowest rank's\n\n");
    std::printf("%-14s %-5s %-16s %6s | %4s %3s %7s | %8s %9s %8s %7s %8s | %8s %9s %7s\n", "case", "lay",
                "shard per rank", "feat", "coll", "fwd", "bytes", "local ms", "synced ms", "+ms", "+%", "in coll",
                "best loc", "best sync", "best +%");
    if (!opt.csv.empty()) {
      csv = std::fopen(opt.csv.c_str(), "w");
      if (csv == nullptr) die(w, "cannot write " + opt.csv);
      std::fprintf(csv,
                   "case,layout,shard,ranks,features,collectives_per_step,forward_collectives,payload_bytes_per_step,"
                   "local_ms,synced_ms,overhead_ms,overhead_percent,in_collectives_ms,best_local_ms,best_synced_ms\n");
    }
  }
  bool all_checked = true;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& k = cases[i];
    Tensors t = make_shard(k, w.rank, i);
    Counter counter;
    counter.comm = bn_mpi_user_data(MPI_COMM_WORLD);
    if (opt.check) all_checked &= check_case(w, k, t, opt.threads, &counter);
    // What one step needs: counted on a fresh layer.
    Counter per_step;
    per_step.comm = counter.comm;
    long forward_calls = 0;
    {
      Layer counted(w, k, t.shape, opt.threads, &per_step);
      const int32_t nd = static_cast<int32_t>(t.shape.size());
      ok(w, bn_forward(counted.layer, t.shape.data(), nd, t.x.data(), t.y.data()), "bn_forward");
      forward_calls = per_step.calls;
      ok(w,
         bn_backward(counted.layer, t.shape.data(), nd, t.x.data(), t.dy.data(), t.dx.data(), t.dgamma.data(),
                     t.dbeta.data()),
         "bn_backward");
    }
    Counter timed;
    timed.comm = counter.comm;
    StepTimes st;
    {
      Layer local(w, k, t.shape, opt.threads, nullptr), synced(w, k, t.shape, opt.threads, &timed);
      st = time_steps(w, local.layer, synced.layer, &timed, t, opt);
    }
    const double local_s = st.local, synced_s = st.synced, in_coll = st.in_coll;
    if (w.rank == 0) {
      const long long bytes = per_step.doubles * static_cast<long long>(sizeof(double));
      const double over = (synced_s - local_s) * 1e3, pct = 100.0 * (synced_s / local_s - 1.0);
      const double best_pct = 100.0 * (st.synced_best / st.local_best - 1.0);
      std::printf("%-14s %-5s %-16s %6lld | %4ld %3ld %7lld | %8.3f %9.3f %8.3f %6.0f%% %8.3f | %8.3f %9.3f %6.0f%%\n",
                  k.name.c_str(), k.layout.c_str(), shape_text(k.dims).c_str(), static_cast<long long>(k.c),
                  per_step.calls, forward_calls, bytes, local_s * 1e3, synced_s * 1e3, over, pct, in_coll * 1e3,
                  st.local_best * 1e3, st.synced_best * 1e3, best_pct);
      std::fflush(stdout);
      if (csv != nullptr)
        std::fprintf(csv, "%s,%s,%s,%d,%lld,%ld,%ld,%lld,%.6f,%.6f,%.6f,%.2f,%.6f,%.6f,%.6f\n", k.name.c_str(),
                     k.layout.c_str(), shape_text(k.dims).c_str(), w.size, static_cast<long long>(k.c), per_step.calls,
                     forward_calls, bytes, local_s * 1e3, synced_s * 1e3, over, pct, in_coll * 1e3, st.local_best * 1e3,
                     st.synced_best * 1e3);
    }
  }
  if (w.rank == 0) {
    std::printf(
        "\ncoll: collectives per step (fwd: of them in the forward); bytes: payload per rank per step (doubles x 8, as "
        "given to MPI_Allreduce);\nms: median samples, the slowest rank's; in coll: inside the callback (waiting "
        "included); best: the fastest samples\n");
    if (opt.check)
      std::printf("--check: %s\n", all_checked ? "synchronized results match one process on the gathered "
                                                 "batch (1e-4)"
                                               : "MISMATCH");
  }
  if (csv != nullptr) std::fclose(csv);
  MPI_Finalize();
  return all_checked ? 0 : 1;
}
