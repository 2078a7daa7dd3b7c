#include "report.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>

namespace bn::bench {

const char* const kColumnNames[kColumns] = {"libbatchnorm", "oneDNN", "PyTorch", "loop",
                                            "openblas"};

std::optional<double> Row::best_peer() const {
  std::optional<double> best;
  for (int c : {kOnednn, kPytorch})
    if (seconds[c] && (!best || *seconds[c] < *best)) best = seconds[c];
  return best;
}

std::optional<double> Row::speedup() const {
  const auto peer = best_peer();
  if (!peer || !seconds[kLibbatchnorm]) return std::nullopt;
  return *peer / *seconds[kLibbatchnorm];
}

std::optional<double> Row::bound_fraction() const {
  if (!seconds[kLibbatchnorm]) return std::nullopt;
  return bound_seconds / *seconds[kLibbatchnorm];
}

namespace {

std::string ms(const std::optional<double>& seconds) {
  if (!seconds) return "n/a";
  const double v = *seconds * 1e3;
  char buf[32];
  std::snprintf(buf, sizeof buf, v < 0.1 ? "%.4f" : v < 10 ? "%.3f" : v < 1000 ? "%.1f" : "%.0f",
                v);
  return buf;
}

std::string num(const std::optional<double>& v, const char* fmt) {
  if (!v) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, fmt, *v);
  return buf;
}

// Geometric mean of the values; nullopt when empty.
struct GeoMean {
  double log_sum = 0;
  int count = 0;
  void add(double v) {
    log_sum += std::log(v);
    ++count;
  }
  std::optional<double> value() const {
    return count ? std::optional<double>(std::exp(log_sum / count)) : std::nullopt;
  }
};

}  // namespace

void print_table_header(FILE* out) {
  std::fprintf(out, "%-14s %-9s %-9s %3s", "case", "mode", "layout", "thr");
  for (const char* name : kColumnNames) std::fprintf(out, " %12s", name);
  std::fprintf(out, " %9s %9s\n", "speed-up", "bound");
  std::fprintf(out, "%-14s %-9s %-9s %3s", "", "", "", "");
  for (int c = 0; c < kColumns; ++c) std::fprintf(out, " %12s", "(ms)");
  std::fprintf(out, " %9s %9s\n", "vs peer", "fraction");
}

void print_row(FILE* out, const Row& r) {
  std::fprintf(out, "%-14s %-9s %-9s %3d", r.name.c_str(), mode_name(r.mode), r.layout.c_str(),
               r.threads);
  for (const auto& s : r.seconds) std::fprintf(out, " %12s", ms(s).c_str());
  std::fprintf(out, " %9s %9s\n", (num(r.speedup(), "%.2f") + (r.speedup() ? "x" : "")).c_str(),
               num(r.bound_fraction(), "%.3f").c_str());
  std::fflush(out);
}

void print_summary(FILE* out, const std::vector<Row>& all_rows, const std::vector<int>& threads) {
  // The per-mode tables are over the float32 rows; the 16-bit rows (layout "NHWC/bf16", ...)
  // get lines of their own below.
  auto is_half = [](const Row& r) { return r.layout.find('/') != std::string::npos; };
  std::vector<Row> rows, half_rows;
  for (const Row& r : all_rows) (is_half(r) ? half_rows : rows).push_back(r);
  std::fprintf(out,
               "\nGeometric mean of time / bandwidth bound per implementation "
               "(1.00 = at the bound; lower is better; float32 rows):\n%-9s %3s", "mode", "thr");
  for (const char* name : kColumnNames) std::fprintf(out, " %12s", name);
  std::fprintf(out, "\n");
  for (Mode mode : kModes)
    for (int t : threads) {
      std::fprintf(out, "%-9s %3d", mode_name(mode), t);
      for (int c = 0; c < kColumns; ++c) {
        GeoMean g;
        for (const Row& r : rows)
          if (r.mode == mode && r.threads == t && r.seconds[c]) g.add(*r.seconds[c] / r.bound_seconds);
        std::fprintf(out, " %12s", num(g.value(), "%.2f").c_str());
      }
      std::fprintf(out, "\n");
    }

  std::fprintf(out, "\nGeometric-mean speed-up of libbatchnorm over the fastest peer "
                    "(oneDNN, PyTorch; > 1 = faster; float32 rows):\n%-9s %3s %9s %5s\n",
               "mode", "thr", "speed-up", "rows");
  GeoMean all;
  for (Mode mode : kModes)
    for (int t : threads) {
      GeoMean g;
      for (const Row& r : rows)
        if (r.mode == mode && r.threads == t && r.speedup()) {
          g.add(*r.speedup());
          all.add(*r.speedup());
        }
      std::fprintf(out, "%-9s %3d %9s %5d\n", mode_name(mode), t,
                   (num(g.value(), "%.2f") + (g.count ? "x" : "")).c_str(), g.count);
    }
  std::fprintf(out, "%-9s %3s %9s %5d\n", "all", "all",
               (num(all.value(), "%.2f") + (all.count ? "x" : "")).c_str(), all.count);
  if (!half_rows.empty()) {
    GeoMean speedup, bound;
    for (const Row& r : half_rows) {
      if (r.speedup()) speedup.add(*r.speedup());
      if (r.seconds[kLibbatchnorm]) bound.add(*r.seconds[kLibbatchnorm] / r.bound_seconds);
    }
    std::fprintf(out,
                 "16-bit rows (bf16, f16; bound from 2-byte elements): libbatchnorm time / bound %s, "
                 "speed-up over the fastest peer %s in %d of %zu rows\n",
                 num(bound.value(), "%.2f").c_str(),
                 (num(speedup.value(), "%.2f") + (speedup.count ? "x" : "")).c_str(), speedup.count,
                 half_rows.size());
  }

  // PyTorch: which heap setting won (it allocates its outputs on every call).
  GeoMean ratio;
  int heap_wins = 0;
  for (const Row& r : all_rows)
    if (r.torch_plain && r.torch_heap_reuse) {
      ratio.add(*r.torch_plain / *r.torch_heap_reuse);
      heap_wins += *r.torch_heap_reuse < *r.torch_plain;
    }
  if (ratio.count)
    std::fprintf(out,
                 "\nPyTorch: the heap-reuse run was faster in %d of %d rows; geometric mean of "
                 "plain / heap-reuse time = %.2f\n",
                 heap_wins, ratio.count, *ratio.value());

  // Memory: allocations inside the timed loops, and what a libbatchnorm layer holds.
  std::fprintf(out, "\nHeap allocations per call in the timed loops (max over rows):");
  for (int c = 0; c < kColumns; ++c) {
    std::optional<double> worst;
    for (const Row& r : all_rows)
      if (r.allocs_per_call[c] && (!worst || *r.allocs_per_call[c] > *worst))
        worst = r.allocs_per_call[c];
    if (worst) std::fprintf(out, " %s %.3g,", kColumnNames[c], *worst);
  }
  std::fprintf(out, "\n");
  const Row* biggest = nullptr;
  for (const Row& r : all_rows)
    if (r.layer_bytes && (!biggest || *r.layer_bytes > *biggest->layer_bytes)) biggest = &r;
  if (biggest)
    std::fprintf(out,
                 "libbatchnorm heap held by one layer after bn_create and its first call: "
                 "max %.0f bytes (%s %s %s, %d thread(s))\n",
                 *biggest->layer_bytes, biggest->name.c_str(), biggest->layout.c_str(),
                 mode_name(biggest->mode), biggest->threads);
}

bool write_csv(const std::string& path, const std::vector<Row>& rows) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return false;
  std::fprintf(f,
               "case,mode,layout,threads,libbatchnorm_ms,onednn_ms,pytorch_ms,loop_ms,"
               "openblas_ms,speedup_vs_best_peer,bound_fraction,bound_ms,pytorch_plain_ms,"
               "pytorch_heap_reuse_ms,libbatchnorm_allocs_per_call,libbatchnorm_layer_bytes\n");
  auto field = [&](const std::optional<double>& v, double scale) {
    if (v) std::fprintf(f, ",%.6g", *v * scale);
    else std::fprintf(f, ",");
  };
  for (const Row& r : rows) {
    std::fprintf(f, "%s,%s,%s,%d", r.name.c_str(), mode_name(r.mode), r.layout.c_str(),
                 r.threads);
    for (const auto& s : r.seconds) field(s, 1e3);
    field(r.speedup(), 1);
    field(r.bound_fraction(), 1);
    field(r.bound_seconds, 1e3);
    field(r.torch_plain, 1e3);
    field(r.torch_heap_reuse, 1e3);
    field(r.allocs_per_call[kLibbatchnorm], 1);
    field(r.layer_bytes, 1);
    std::fprintf(f, "\n");
  }
  return std::fclose(f) == 0;
}

std::string write_plot(const Options& options, const std::vector<Row>& rows) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
    return "PNG: skipped, gnuplot is not installed (apt-get install gnuplot-nox)";
  // One line per case and layout: speed-ups for each mode and thread count ("?" = none).
  std::vector<std::string> labels;
  std::map<std::string, std::map<std::pair<int, int>, double>> values;
  bool any = false;
  double lo = 1, hi = 1;  // the y range always shows the line at 1
  for (const Row& r : rows) {
    const std::string label = r.name + " " + r.layout;
    if (!values.count(label)) labels.push_back(label);
    auto& v = values[label];
    if (auto s = r.speedup()) {
      v[{static_cast<int>(r.mode), r.threads}] = *s;
      lo = std::min(lo, *s);
      hi = std::max(hi, *s);
      any = true;
    }
  }
  if (!any) return "PNG: skipped, no peer was timed so there is no speed-up to plot";
  char data_path[] = "/tmp/bn_bench_plot_XXXXXX";
  const int fd = mkstemp(data_path);
  if (fd < 0) return "PNG: skipped, cannot create a temporary file";
  std::ostringstream data;
  for (const auto& label : labels) {
    data << '"' << label << '"';
    for (Mode mode : kModes)
      for (int t : options.threads) {
        const auto& v = values[label];
        auto it = v.find({static_cast<int>(mode), t});
        data << ' ';
        if (it == v.end()) data << '?';
        else data << it->second;
      }
    data << '\n';
  }
  const std::string text = data.str();
  const bool written = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  std::string thread_list;
  for (int t : options.threads) thread_list += (thread_list.empty() ? "" : " ") + std::to_string(t);
  std::ostringstream cmd;
  cmd << "gnuplot -e \"datafile='" << data_path << "'; outfile='" << options.png_path
      << "'; threadlist='" << thread_list << "'; ymin=" << lo / 1.5 << "; ymax=" << hi * 1.5
      << "\" '" << options.gnuplot_script << "'";
  const int status = written ? std::system(cmd.str().c_str()) : -1;
  unlink(data_path);
  if (status != 0) return "PNG: gnuplot failed (status " + std::to_string(status) + ")";
  return "PNG: " + options.png_path;
}

}  // namespace bn::bench
