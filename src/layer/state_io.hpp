// The layer's state as bytes: the versioned little-endian format of docs/state_format.md
// (header, configuration, step counter, parameters and statistics, CRC-32C). Encoding and
// decoding only: the layer fills and consumes a LayerState (layer.cpp), the C boundary moves
// the bytes, io/file.cpp writes and reads files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "layer/config.hpp"

namespace bn {

// Everything a state blob holds. The configuration is the layer's live one (momentum,
// renorm clipping, trainable and the non-finite policy as last set); its callbacks are always
// empty (a callback cannot be stored): `had_adjustment` and `had_allreduce` record whether
// the layer's build decisions (the fused path) counted one. Per-feature arrays hold `features` values rounded to the
// parameter type (float unless dtype is f64); gamma is empty without scale, beta without
// center, the renorm arrays without renorm.
struct LayerState {
  uint32_t writer_version = 0;  // MAJOR*10000 + MINOR*100 + PATCH of the library that wrote it
  Config config;
  bool had_adjustment = false;
  bool had_allreduce = false;        // AUTO fused with an allreduce callback resolves to non-fused
  std::vector<int64_t> input_shape;  // the shape the layer was built for
  bool fused = false;                // the fused-path decision taken at build
  bool training = false;
  int32_t mode = 0;
  int64_t step_count = 0;  // moving-statistics updates so far (the cumulative average's count)
  int64_t features = 0;
  std::vector<double> gamma, beta, moving_mean, moving_variance, renorm_mean, renorm_stddev, moving_stddev;
};

constexpr uint32_t kStateFormatVersion = 1;
constexpr size_t kStateHeaderSize = 32;

// The blob of a state. `library_version` is recorded in the header (informative).
std::vector<uint8_t> encode_state(const LayerState& state, uint32_t library_version);

// Parses and checks a whole blob: magic, format version, size, checksum, every field's
// range, the array sizes against the configuration, and every value (finite; variances and
// standard deviations >= 0). Throws Error(corrupt_data) with the reason. What only a layer
// can check (the configuration against the input shape, the fused decision) is checked by
// the Layer built from it.
LayerState decode_state(const uint8_t* data, size_t size);

// The checks decode_state begins with, on the first n (>= min(32, file_size)) bytes of a
// file of file_size bytes: magic, format version and the recorded size. Throws
// Error(corrupt_data).
void check_state_prefix(const uint8_t* data, size_t n, uint64_t file_size);

}  // namespace bn
