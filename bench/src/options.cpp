#include "options.hpp"

#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace bn::bench {
namespace {

void usage(const char* argv0, int code) {
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: %s [options]\n"
               "  --cases FILE     shape list (default: bench/shapes.txt)\n"
               "  --threads LIST   thread counts, e.g. 1,2 (default 1,2)\n"
               "  --csv PATH       CSV output (default bn_bench.csv)\n"
               "  --png PATH       speed-up plot, needs gnuplot (default bn_bench.png)\n"
               "  --quick          few repetitions (CI smoke); implies --check\n"
               "  --check          compare outputs with a double-precision reference\n"
               "  --target SEC     time spent per implementation and row (default 0.25)\n"
               "  --rounds N       time the whole table N times, report each time's median\n"
               "                   over the rounds (default 3; --quick: 1)\n"
               "  --no-torch       do not run the PyTorch peer\n"
               "  --placement      instead of the table: libbatchnorm and oneDNN with the tensors\n"
               "                   on page boundaries, 16 bytes past a line (malloc), outputs 16\n"
               "                   or 64 bytes past the inputs (one round, no PyTorch)\n"
               "  --python PATH    interpreter for the PyTorch peer (default %s)\n"
               "  --torch-script PATH, --gnuplot-script PATH   override the bench/ files\n",
               argv0, BN_BENCH_PYTHON);
  std::exit(code);
}

std::vector<int> parse_threads(const std::string& text) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const int t = std::atoi(item.c_str());
    if (t < 1 || t > 256) {
      std::fprintf(stderr, "bn_bench: --threads: '%s' is not a thread count\n", item.c_str());
      std::exit(2);
    }
    out.push_back(t);
  }
  if (out.empty()) {
    std::fprintf(stderr, "bn_bench: --threads needs at least one count\n");
    std::exit(2);
  }
  return out;
}

}  // namespace

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bn_bench: %s needs a value\n", a.c_str());
        usage(argv[0], 2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") usage(argv[0], 0);
    else if (a == "--cases") o.cases_path = value();
    else if (a == "--threads") o.threads = parse_threads(value());
    else if (a == "--csv") o.csv_path = value();
    else if (a == "--png") o.png_path = value();
    else if (a == "--quick") o.quick = true;
    else if (a == "--check") o.check = true;
    else if (a == "--no-torch") o.torch = false;
    else if (a == "--placement") o.placement = true;
    else if (a == "--target") o.target_seconds = std::atof(value().c_str());
    else if (a == "--rounds") o.rounds = std::atoi(value().c_str());
    else if (a == "--python") o.python = value();
    else if (a == "--torch-script") o.torch_script = value();
    else if (a == "--gnuplot-script") o.gnuplot_script = value();
    else {
      std::fprintf(stderr, "bn_bench: unknown argument '%s'\n", a.c_str());
      usage(argv[0], 2);
    }
  }
  if (o.quick) {
    o.check = true;
    o.target_seconds = 0.005;
    o.rounds = 1;
  }
  if (o.rounds < 1 || o.rounds > 20) {
    std::fprintf(stderr, "bn_bench: --rounds must be 1 to 20\n");
    std::exit(2);
  }
  if (!(o.target_seconds > 0)) {
    std::fprintf(stderr, "bn_bench: --target must be > 0\n");
    std::exit(2);
  }
  return o;
}

}  // namespace bn::bench
