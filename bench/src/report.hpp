// The results: one row per (case, mode, threads), printed as a table while the run goes,
// then the geometric means, a CSV and a gnuplot PNG of the speed-ups.
#pragma once

#include <array>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "options.hpp"
#include "tensors.hpp"

namespace bn::bench {

// Column order of the implementations; the peers are oneDNN and PyTorch.
enum Column { kLibbatchnorm, kOnednn, kPytorch, kLoop, kOpenblas, kColumns };
extern const char* const kColumnNames[kColumns];

struct Row {
  std::string name, layout;
  Mode mode = Mode::kInference;
  int threads = 1;
  double bound_seconds = 0;  // minimal bytes / copy bandwidth at this thread count
  std::array<std::optional<double>, kColumns> seconds;          // median per call (over the rounds)
  std::array<std::vector<double>, kColumns> round_seconds;     // C++ implementations: one per round
  std::array<std::optional<double>, kColumns> allocs_per_call;  // C++ implementations only
  std::optional<double> torch_plain, torch_heap_reuse;
  std::optional<double> layer_bytes;  // libbatchnorm heap held by the layer after the first call

  std::optional<double> best_peer() const;
  std::optional<double> speedup() const;         // best peer / libbatchnorm
  std::optional<double> bound_fraction() const;  // bound / libbatchnorm
};

void print_table_header(FILE* out);
void print_row(FILE* out, const Row& row);
// Geometric means of time/bound per implementation, mode and thread count; the geometric
// mean speed-up over the fastest peer; heap use.
void print_summary(FILE* out, const std::vector<Row>& rows, const std::vector<int>& threads);
bool write_csv(const std::string& path, const std::vector<Row>& rows);
// Draws the speed-up per case with gnuplot; returns a one-line message of what happened.
std::string write_plot(const Options& options, const std::vector<Row>& rows);

}  // namespace bn::bench
