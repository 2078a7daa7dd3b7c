// bn_bench: times libbatchnorm, its peers (oneDNN, PyTorch) and two baselines (plain loop,
// OpenBLAS-composed) on every case of a shape list, in three modes and at each thread count,
// and relates every time to the copy-bandwidth bound. See bench/README.md.
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <stdexcept>
#include <thread>
#include <vector>

#include "alloc_hook.h"
#include "bandwidth.hpp"
#include "cases.hpp"
#include "impl.hpp"
#include "options.hpp"
#include "placement.hpp"
#include "reference.hpp"
#include "report.hpp"
#include "tensors.hpp"
#include "timing.hpp"
#include "torch_peer.hpp"

namespace bn::bench {
namespace {

// CPU time of the whole machine (/proc/stat) and of this process and its children, to tell
// how much of the machine other processes took while we ran (the timings' noise).
struct CpuClock {
  double machine_busy = 0, machine_total = 0, ours = 0;  // seconds (summed over CPUs)
  bool valid = false;

  static CpuClock now() {
    CpuClock c;
    std::FILE* f = std::fopen("/proc/stat", "r");
    if (!f) return c;
    unsigned long long v[8] = {};
    const int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                              &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
    std::fclose(f);
    if (n < 5) return c;
    const double tick = 1.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
    for (auto x : v) c.machine_total += static_cast<double>(x) * tick;
    c.machine_busy = c.machine_total - static_cast<double>(v[3] + v[4]) * tick;  // not idle/iowait
    for (int who : {RUSAGE_SELF, RUSAGE_CHILDREN}) {
      struct rusage ru;
      getrusage(who, &ru);
      c.ours += static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                1e-6 * static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    }
    c.valid = true;
    return c;
  }
  // Share of all CPUs' time since `start` that other processes used; -1 when unknown.
  double others_share_since(const CpuClock& start) const {
    const double total = machine_total - start.machine_total;
    if (!valid || !start.valid || total <= 0) return -1;
    const double others = (machine_busy - start.machine_busy) - (ours - start.ours);
    return std::clamp(others / total, 0.0, 1.0);
  }
};

std::string load_note(double share) {
  if (share < 0) return "unknown";
  char buf[200];
  std::snprintf(buf, sizeof buf, "%.0f%%%s", 100 * share,
                share > 0.15 ? " -- BUSY: multi-thread times are inflated, OpenMP peers' most "
                               "(a barrier can wait a whole scheduler time slice)"
                             : "");
  return buf;
}

double heap_in_use() {
  const struct mallinfo2 mi = mallinfo2();
  return static_cast<double>(mi.uordblks + mi.hblkhd);
}

// Bytes an ideal implementation moves: forwards read x and write y (the statistics of a
// training forward stay in cache in the ideal); the backward reads x and dy, writes dx.
double minimal_bytes(const Case& k, Mode mode) {
  const double tensor = static_cast<double>(k.elements() * k.element_bytes());
  return (mode == Mode::kBackward ? 3 : 2) * tensor;
}

struct Bench {
  const Options& opt;
  std::vector<std::unique_ptr<Impl>> impls;  // indexed by Column; kPytorch is the subprocess
  TorchPeer torch;
  std::map<int, double> bandwidth;  // bytes/s by thread count
  std::vector<Row> rows;
  int failures = 0;

  explicit Bench(const Options& o) : opt(o), impls(kColumns), torch(o) {
    impls[kLibbatchnorm] = make_libbatchnorm();
    impls[kOnednn] = make_onednn();
    impls[kLoop] = make_loop();
    impls[kOpenblas] = make_openblas();
  }

  // The copy bandwidth, measured once per round (this machine's bandwidth drifts over
  // minutes, as the implementations' times do); the bound uses the median over the rounds.
  std::map<int, std::vector<CopyBandwidth>> bandwidth_rounds;
  size_t bandwidth_bytes() const {
    const size_t llc = last_level_cache_bytes();
    return opt.quick ? std::max<size_t>(2 * llc, size_t{64} << 20) : std::max<size_t>(8 * llc, size_t{256} << 20);
  }
  void measure_bandwidth() {
    for (int t : opt.threads) {
      bandwidth_rounds[t].push_back(copy_bandwidth(bandwidth_bytes(), t, opt.quick ? 3 : 7));
      std::vector<double> best;
      for (const CopyBandwidth& bw : bandwidth_rounds[t]) best.push_back(bw.best());
      bandwidth[t] = *median_of(best);
    }
  }
  void describe_bandwidth() {
    const size_t rounds = bandwidth_rounds.begin()->second.size();
    std::printf("Copy bandwidth, best of %d copies of %zu MiB (LLC %zu MiB) in each of %zu round(s), "
                "read + write bytes counted; the bound uses the median over the rounds of the "
                "faster of memcpy and the streaming copy:\n",
                opt.quick ? 3 : 7, bandwidth_bytes() >> 20, last_level_cache_bytes() >> 20, rounds);
    for (int t : opt.threads) {
      std::vector<double> copy, stream;
      for (const CopyBandwidth& bw : bandwidth_rounds[t]) {
        copy.push_back(bw.memcpy_rate / 1e9);
        stream.push_back(bw.stream_rate / 1e9);
      }
      std::printf("  %d thread(s): memcpy %.1f GB/s, streaming (non-temporal) copy %.1f GB/s", t,
                  *median_of(copy), *median_of(stream));
      if (rounds > 1)
        std::printf(" (rounds: memcpy %.1f-%.1f, streaming %.1f-%.1f)", *std::min_element(copy.begin(), copy.end()),
                    *std::max_element(copy.begin(), copy.end()), *std::min_element(stream.begin(), stream.end()),
                    *std::max_element(stream.begin(), stream.end()));
      std::printf("\n");
    }
  }

  void describe(double others_share) {
    std::printf("Machine: %u hardware threads; other processes' share of the CPUs before the "
                "run: %s\n",
                std::thread::hardware_concurrency(), load_note(others_share).c_str());
    std::printf("Threads timed:");
    for (int t : opt.threads) std::printf(" %d", t);
    std::printf(". Times are medians per call in ms");
    if (opt.rounds > 1) {
      std::printf(", each the median of %d rounds (the whole table timed %d times, the PyTorch peer run "
                  "again before each round)",
                  opt.rounds, opt.rounds);
    }
    std::printf(".\n");
    for (int c = 0; c < kColumns; ++c)
      std::printf("  %s\n", c == kPytorch ? torch.describe().c_str() : impls[c]->describe().c_str());
  }

  // Times one C++ implementation on one row; records time, allocations and the check.
  void time_impl(int c, Tensors& t, Row& row) {
    Impl& impl = *impls[c];
    if (!impl.available() || !impl.supports(t.shape)) return;
    try {
      if (opt.check) t.poison_outputs();
      const double heap_before = heap_in_use();
      auto runner = impl.prepare(t, row.mode, row.threads);
      if (c == kLibbatchnorm) {
        runner->run();  // first call: whatever the layer plans lazily is now in place
        row.layer_bytes = std::max(row.layer_bytes.value_or(0.0), heap_in_use() - heap_before);
      }
      const TimingPolicy policy{opt.target_seconds, 3, opt.quick ? 9 : 101, 5e-4};
      row.round_seconds[c].push_back(time_median([&] { runner->run(); }, policy).median_seconds);
      row.seconds[c] = median_of(row.round_seconds[c]);
      // Steady state: count heap allocations over a few more calls.
      constexpr int kCalls = 3;
      bench_alloc_counting(1);
      for (int i = 0; i < kCalls; ++i) runner->run();
      bench_alloc_counting(0);
      row.allocs_per_call[c] =
          std::max(row.allocs_per_call[c].value_or(0.0), static_cast<double>(bench_alloc_count()) / kCalls);
      if (opt.check) {
        t.widen_outputs();
        const std::string err = check_outputs(t, row.mode);
        if (!err.empty()) {
          ++failures;
          std::fprintf(stderr, "CHECK FAILED: %s on %s %s %s, %d thread(s): %s\n",
                       impl.name().c_str(), row.name.c_str(), row.layout.c_str(),
                       mode_name(row.mode), row.threads, err.c_str());
        }
      }
    } catch (const std::exception& e) {
      row.seconds[c].reset();
      if (c == kLibbatchnorm) ++failures;  // a peer's failure is reported, not fatal
      std::fprintf(stderr, "ERROR: %s on %s %s %s, %d thread(s): %s\n", impl.name().c_str(),
                   row.name.c_str(), row.layout.c_str(), mode_name(row.mode), row.threads,
                   e.what());
    }
  }

  // One round of one case: its rows (made in the first round, from `first` on) timed again.
  void run_case(const Case& k, size_t first, bool last_round) {
    Tensors t(k);
    size_t i = first;
    for (Mode mode : kModes)
      for (int threads : opt.threads) {
        if (i == rows.size()) {
          Row row;
          row.name = k.name;
          row.layout = k.label();
          row.mode = mode;
          row.threads = threads;
          rows.push_back(row);
        }
        Row& row = rows[i++];
        for (int c : {kLibbatchnorm, kOnednn, kLoop, kOpenblas}) time_impl(c, t, row);
        if (!last_round) continue;
        row.bound_seconds = minimal_bytes(k, mode) / bandwidth[threads];  // the rounds' median
        const auto tm = torch.lookup(k.name, k.label(), mode_name(mode), threads);
        row.torch_plain = tm.plain;
        row.torch_heap_reuse = tm.heap_reuse;
        row.seconds[kPytorch] = tm.best();
        print_row(stdout, row);
      }
  }
};

int run(int argc, char** argv) {
  const auto start = std::chrono::steady_clock::now();
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // the table interleaves sanely with progress
  const Options opt = parse_options(argc, argv);
  const std::vector<Case> cases = read_cases(opt.cases_path);
  if (opt.placement) return run_placement(opt, cases);
  const CpuClock idle_start = CpuClock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const double others_before = CpuClock::now().others_share_since(idle_start);
  const CpuClock run_start = CpuClock::now();
  Bench bench(opt);
  // Rounds: the PyTorch peer, then every case; the table is printed in the last round, each
  // time the median over the rounds (machine noise drifts over minutes: every implementation
  // is timed in every round, so drift reaches them alike).
  std::vector<size_t> first_row(cases.size(), 0);
  std::vector<bool> skipped(cases.size(), false);  // out of memory in the first round
  for (int round = 1; round <= opt.rounds; ++round) {
    const bool last = round == opt.rounds;
    if (opt.torch) bench.torch.run_all(opt.threads);
    bench.measure_bandwidth();
    if (last) {
      bench.describe_bandwidth();
      bench.describe(others_before);
      std::printf("\n");
      print_table_header(stdout);
    }
    for (size_t i = 0; i < cases.size(); ++i) {
      std::fprintf(stderr, "[round %d/%d] [%zu/%zu] %s %s\n", round, opt.rounds, i + 1, cases.size(),
                   cases[i].name.c_str(), cases[i].layout.c_str());
      if (round == 1) first_row[i] = bench.rows.size();
      if (skipped[i]) continue;
      try {
        bench.run_case(cases[i], first_row[i], last);
      } catch (const std::bad_alloc&) {
        ++bench.failures;
        if (round == 1) skipped[i] = true;
        if (round == 1) bench.rows.resize(first_row[i]);  // no partial rows
        std::fprintf(stderr, "ERROR: out of memory for %s %s\n", cases[i].name.c_str(),
                     cases[i].layout.c_str());
      }
    }
  }
  print_summary(stdout, bench.rows, opt.threads);
  std::printf("\nCSV: %s\n", write_csv(opt.csv_path, bench.rows)
                                 ? opt.csv_path.c_str()
                                 : ("could not write " + opt.csv_path).c_str());
  std::printf("%s\n", write_plot(opt, bench.rows).c_str());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("Other processes' share of the CPUs during the run: %s\n",
              load_note(CpuClock::now().others_share_since(run_start)).c_str());
  std::printf("Total time %.0f s. %s\n", seconds,
              bench.failures ? "FAILED (see the errors above)" : "OK");
  return bench.failures ? 1 : 0;
}

}  // namespace
}  // namespace bn::bench

int main(int argc, char** argv) { return bn::bench::run(argc, argv); }
