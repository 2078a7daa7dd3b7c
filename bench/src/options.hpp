// Command line of bn_bench.
#pragma once

#include <string>
#include <vector>

namespace bn::bench {

struct Options {
  std::string cases_path = BN_BENCH_SOURCE_DIR "/shapes.txt";
  std::string torch_script = BN_BENCH_SOURCE_DIR "/torch_peer.py";
  std::string gnuplot_script = BN_BENCH_SOURCE_DIR "/speedup.gp";
  std::string python = BN_BENCH_PYTHON;
  std::string csv_path = "bn_bench.csv";
  std::string png_path = "bn_bench.png";
  std::vector<int> threads = {1, 2};
  bool quick = false;
  bool check = false;   // compare each C++ implementation's outputs with a double reference
  bool torch = true;    // --no-torch skips the PyTorch subprocess
  double target_seconds = 0.25;  // per implementation and row
  bool placement = false;  // --placement: the buffer-placement table instead of the main one
  int rounds = 3;  // the whole table timed this many times; each time is the median of the rounds
};

// Parses argv; prints usage and exits on --help or a bad argument.
Options parse_options(int argc, char** argv);

}  // namespace bn::bench
