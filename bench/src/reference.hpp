// The --check oracle: batch normalization recomputed in double precision, straight from
// the definitions (independent of every timed implementation), and a tolerance check.
#pragma once

#include <string>

#include "tensors.hpp"

namespace bn::bench {

// Compares t's outputs for `mode` (y; or dx, dgamma, dbeta) with the double reference.
// Returns "" when they agree, else a description of the worst mismatch.
std::string check_outputs(const Tensors& t, Mode mode);

}  // namespace bn::bench
