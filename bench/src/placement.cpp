#include "placement.hpp"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>

#include "impl.hpp"
#include "reference.hpp"
#include "tensors.hpp"
#include "timing.hpp"

namespace bn::bench {
namespace {

// Inputs at `in`, outputs at `out` bytes past a page boundary. malloc returns 16 bytes past a
// 64-byte line for large blocks (std::vector too); blocks allocated one after the other lie
// a whole number of pages plus a header apart: 16 bytes (malloc) or 64 (aligned allocators).
constexpr Placement kPlacements[] = {
    {"lines", 0, 0},         // every tensor on a page boundary
    {"malloc", 16, 16},      // every tensor 16 bytes past a line, at the same page offset
    {"out+16", 16, 32},      // outputs 16 bytes past the inputs (two mallocs in a row)
    {"out+64", 0, 64},       // outputs 64 bytes past the inputs (two aligned allocations in a row)
};
constexpr int kPlaces = static_cast<int>(sizeof kPlacements / sizeof kPlacements[0]);

struct PlaceRow {
  std::string name, layout;
  Mode mode;
  int threads;
  std::vector<double> seconds[2][kPlaces];  // [implementation][placement]: one per round
};

}  // namespace

int run_placement(const Options& opt, const std::vector<Case>& cases) {
  std::unique_ptr<Impl> impls[2] = {make_libbatchnorm(), make_onednn()};
  std::printf("Buffer placement: the same calls with x, dy (inputs) and y, dx (outputs) placed as\n"
              "  lines   every tensor on a page boundary (64-byte aligned, same page offset)\n"
              "  malloc  every tensor 16 bytes past a line, same page offset (malloc, std::vector)\n"
              "  out+16  outputs 16 bytes past the inputs (two mallocs in a row)\n"
              "  out+64  outputs 64 bytes past the inputs (two 64-byte aligned allocations in a row)\n"
              "Median microseconds per call (the median over %d round(s), every placement timed in each);\n"
              "worst/best: the slowest placement over the fastest.\n",
              opt.rounds);
  for (const auto& impl : impls) std::printf("  %s\n", impl->describe().c_str());
  std::printf("\n%-14s %-9s %-9s %3s", "case", "mode", "layout", "thr");
  for (const auto& impl : impls) {
    std::printf(" | %-12s", impl->name().c_str());
    for (int p = 1; p < kPlaces; ++p) std::printf(" %8s", "");
    std::printf(" %10s", "");
  }
  std::printf("\n%-14s %-9s %-9s %3s", "", "", "", "");
  for (int i = 0; i < 2; ++i) {
    std::printf(" |");
    for (const Placement& p : kPlacements) std::printf(" %8s", p.name);
    std::printf(" %10s", "worst/best");
  }
  std::printf("\n");
  int failures = 0;
  for (const Case& k : cases) {
    std::vector<PlaceRow> rows;
    for (Mode mode : kModes)
      for (int threads : opt.threads) rows.push_back({k.name, k.label(), mode, threads, {}});
    // Rounds: every placement once per round, so that the machine's drift reaches them alike.
    for (int round = 1; round <= opt.rounds; ++round) {
      for (int p = 0; p < kPlaces; ++p) {
        std::fprintf(stderr, "[placement, round %d/%d] %s %s: %s\n", round, opt.rounds, k.name.c_str(),
                     k.layout.c_str(), kPlacements[p].name);
        try {
          Tensors t(k, kPlacements[p]);
          for (PlaceRow& row : rows) {
            for (int i = 0; i < 2; ++i) {
              Impl& impl = *impls[i];
              if (!impl.available() || !impl.supports(k)) continue;
              try {
                if (opt.check) t.poison_outputs();
                auto runner = impl.prepare(t, row.mode, row.threads);
                const TimingPolicy policy{opt.target_seconds, 3, opt.quick ? 9 : 101, 5e-4};
                row.seconds[i][p].push_back(time_median([&] { runner->run(); }, policy).median_seconds);
                if (opt.check) {
                  t.widen_outputs();
                  const std::string err = check_outputs(t, row.mode);
                  if (!err.empty()) throw std::runtime_error("check failed: " + err);
                }
              } catch (const std::exception& e) {
                if (i == 0) ++failures;  // a peer's failure is reported, not fatal
                std::fprintf(stderr, "ERROR: %s on %s %s %s, %d thread(s), placement %s: %s\n",
                             impl.name().c_str(), k.name.c_str(), row.layout.c_str(), mode_name(row.mode),
                             row.threads, kPlacements[p].name, e.what());
              }
            }
          }
        } catch (const std::bad_alloc&) {
          ++failures;
          std::fprintf(stderr, "ERROR: out of memory for %s %s\n", k.name.c_str(), k.layout.c_str());
        }
      }
    }
    for (const PlaceRow& row : rows) {
      std::printf("%-14s %-9s %-9s %3d", row.name.c_str(), mode_name(row.mode), row.layout.c_str(), row.threads);
      for (int i = 0; i < 2; ++i) {
        std::printf(" |");
        double lo = 0, hi = 0;
        bool all = true;
        for (int p = 0; p < kPlaces; ++p) {
          // A failed round leaves the cell n/a: a median over fewer rounds would not compare.
          const auto s = row.seconds[i][p].size() == static_cast<size_t>(opt.rounds) ? median_of(row.seconds[i][p])
                                                                                      : std::nullopt;
          if (!s) {
            all = false;
            std::printf(" %8s", "n/a");
            continue;
          }
          std::printf(" %8.1f", *s * 1e6);
          lo = p == 0 ? *s : std::min(lo, *s);
          hi = p == 0 ? *s : std::max(hi, *s);
        }
        if (all) {
          std::printf(" %9.2fx", hi / lo);
        } else {
          std::printf(" %10s", "n/a");
        }
      }
      std::printf("\n");
    }
  }
  std::printf("%s\n", failures ? "FAILED (see the errors above)" : "OK");
  return failures ? 1 : 0;
}

}  // namespace bn::bench
