// A translation unit of the Catch2 program compiled in the wrapper's status mode
// (BATCHNORM_NO_EXCEPTIONS), next to the others in exception mode: the two modes live in
// different inline namespaces, so one program may hold both. Declared without the wrapper.
#pragma once

#include <batchnorm/batchnorm.h>

#include <string>

namespace cpp_test {

struct StatusReport {
  bn_status status;
  std::string message;
  bool exceptions;  // BATCHNORM_EXCEPTIONS as that translation unit saw it
};

// Creates a 4x3 layer and runs a forward with shape {4, 2} through the status-mode wrapper.
StatusReport status_mode_bad_forward();

}  // namespace cpp_test
