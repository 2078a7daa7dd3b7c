// Reader for the shared conformance cases (conformance/README.md §1): case.txt plus raw
// little-endian float32/float64 tensor files, every value widened to double.
// The reader is strict: an unknown key, a missing key, a malformed number, a file whose size
// does not match its shape or a missing `end` is an error (std::runtime_error naming the case
// directory and the line), so a damaged case can never be skipped silently.
#ifndef BN_TESTS_CONFORMANCE_CASE_READER_HPP
#define BN_TESTS_CONFORMANCE_CASE_READER_HPP

#include <cstdint>
#include <string>
#include <vector>

namespace bn::conformance {

struct Tensor {
  std::string name;   // X, scale, B, input_mean, input_var, dY, Y, running_mean, ...
  std::string role;   // input, output, aux_output
  std::string dtype;  // float32 or float64
  std::string file;
  std::vector<int64_t> shape;
  std::vector<double> data;  // row-major, widened to double (exact for both dtypes)
};

struct Tolerance {
  double atol = 0.0;
  double rtol = 0.0;
};

struct Case {
  std::string id;   // path relative to the cases directory, e.g. "torch/train_4d"
  std::string dir;  // absolute (or as given) directory of the case
  std::string name;
  bool training = false;
  bool backward = false;
  bool expect_error = false;
  int channel_axis = 0;
  double epsilon = 0.0;
  double batch_stat_weight = 0.0;  // may be NaN: "does not matter"
  bool running_var_unbiased = false;
  std::vector<Tensor> tensors;

  struct TolEntry {
    std::string dtype, name;
    Tolerance tol;
  };
  std::vector<TolEntry> tolerances;

  // nullptr when the case has no such tensor in that dtype.
  const Tensor* find(const std::string& tensor_name, const std::string& dtype) const;
  // Throws when the case has no tolerance for that output (README: every output has one).
  Tolerance tolerance(const std::string& dtype, const std::string& tensor_name) const;
  // The dtypes in which X is stored, float32 first.
  std::vector<std::string> dtypes() const;
};

// The case ids listed in <root>/index.txt (blank lines and '#' comments ignored).
// Throws when the file cannot be read.
std::vector<std::string> read_index(const std::string& root);

// Loads <root>/<id>/case.txt and every tensor file it names. Throws on any problem.
Case load_case(const std::string& root, const std::string& id);

}  // namespace bn::conformance

#endif
