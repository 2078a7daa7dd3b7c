// The core's error type. The C boundary maps it to a bn_status and a message;
// nothing in src/ knows the C types.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace bn {

// Values mirror the pinned ABI constants (checked by a static_assert in capi/).
enum class Status : int32_t {
  ok = 0,
  invalid_argument = 1,
  shape = 2,
  state = 3,
  out_of_memory = 4,
  unsupported = 5,
  corrupt_data = 6,
  callback = 7,
  nonfinite = 8,
  internal = 9,
};

class Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

[[noreturn]] inline void fail(Status status, const std::string& message) { throw Error(status, message); }

}  // namespace bn
