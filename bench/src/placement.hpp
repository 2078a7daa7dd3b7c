// --placement: libbatchnorm and oneDNN on the same calls with the tensors where user programs
// put them, to show what a buffer's place within a page or a cache line costs.
#pragma once

#include <vector>

#include "cases.hpp"
#include "options.hpp"

namespace bn::bench {

// Times every case of the list (each mode, each thread count) under each placement and prints
// one table; returns the process exit code (1 when a call failed or a check did not pass).
int run_placement(const Options& opt, const std::vector<Case>& cases);

}  // namespace bn::bench
