// The shape list: one case per line, "name layout dims [dtype]" (see bench/shapes.txt).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bn::bench {

struct Case {
  std::string name;
  std::string layout;          // one letter per dimension, memory order: "NCHW", "NHWC", "NC", ...
  std::vector<int64_t> dims;   // sizes in memory order
  // Every layout reduces to x[n][c][s] (channels first) or x[n][s][c] (channels last).
  int64_t n = 0, c = 0, s = 0;
  bool channels_last = false;
  // Element type of x, y, dy, dx: "f32", or "bf16" / "f16" (16-bit activations, float
  // parameters and statistics).
  std::string dtype = "f32";

  int64_t element_bytes() const { return dtype == "f32" ? 4 : 2; }
  // The layout column of the report (and the PyTorch peer's key): "NHWC", or "NHWC/bf16".
  std::string label() const { return dtype == "f32" ? layout : layout + "/" + dtype; }

  int64_t elements() const { return n * c * s; }
  // Sizes in the N, C, spatial... order that oneDNN and PyTorch use for any layout.
  std::vector<int64_t> logical_dims() const;
  // Index of the channel axis in memory order (libbatchnorm's axis).
  int32_t channel_axis() const { return channels_last ? -1 : 1; }
};

// Reads a shape list; exits with a message naming the file and line on a bad line.
std::vector<Case> read_cases(const std::string& path);

}  // namespace bn::bench
