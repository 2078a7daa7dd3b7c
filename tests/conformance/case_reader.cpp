#include "case_reader.hpp"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <stdexcept>

namespace bn::conformance {
namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw std::runtime_error(where + ": " + what);
}

double parse_double(const std::string& token, const std::string& where) {
  const char* begin = token.c_str();
  char* end = nullptr;
  const double v = std::strtod(begin, &end);  // accepts "nan", and repr() round-trips exactly
  if (end == begin || *end != '\0') fail(where, "not a number: '" + token + "'");
  return v;
}

int64_t parse_int(const std::string& token, const std::string& where) {
  const char* begin = token.c_str();
  char* end = nullptr;
  const long long v = std::strtoll(begin, &end, 10);
  if (end == begin || *end != '\0') fail(where, "not an integer: '" + token + "'");
  return static_cast<int64_t>(v);
}

bool parse_flag(const std::string& token, const std::string& where) {
  const int64_t v = parse_int(token, where);
  if (v != 0 && v != 1) fail(where, "expected 0 or 1, got " + token);
  return v == 1;
}

std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open tensor file");
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Decodes little-endian IEEE-754 values whatever the host byte order: assemble the integer
// from its bytes (least significant first), then reinterpret its bits.
std::vector<double> decode(const std::vector<unsigned char>& bytes, const std::string& dtype, size_t count,
                           const std::string& where) {
  const size_t width = dtype == "float32" ? 4 : 8;
  if (bytes.size() != count * width) {
    fail(where, "file holds " + std::to_string(bytes.size()) + " bytes, the shape needs " +
                    std::to_string(count * width));
  }
  std::vector<double> out(count);
  for (size_t i = 0; i < count; ++i) {
    uint64_t bits = 0;
    for (size_t b = 0; b < width; ++b) bits |= static_cast<uint64_t>(bytes[i * width + b]) << (8 * b);
    if (width == 4) {
      const uint32_t bits32 = static_cast<uint32_t>(bits);
      float f;
      std::memcpy(&f, &bits32, sizeof f);
      out[i] = static_cast<double>(f);
    } else {
      double d;
      std::memcpy(&d, &bits, sizeof d);
      out[i] = d;
    }
  }
  return out;
}

Tensor parse_tensor(std::istringstream& ss, const std::string& dir, const std::string& where) {
  Tensor t;
  std::string ndim_token;
  if (!(ss >> t.name >> t.role >> t.dtype >> t.file >> ndim_token)) fail(where, "short tensor line");
  if (t.role != "input" && t.role != "output" && t.role != "aux_output") fail(where, "unknown role " + t.role);
  if (t.dtype != "float32" && t.dtype != "float64") fail(where, "unknown dtype " + t.dtype);
  const int64_t ndim = parse_int(ndim_token, where);
  if (ndim < 1) fail(where, "ndim must be >= 1");
  size_t count = 1;
  for (int64_t i = 0; i < ndim; ++i) {
    std::string d;
    if (!(ss >> d)) fail(where, "tensor line has fewer than ndim sizes");
    const int64_t size = parse_int(d, where);
    if (size < 0) fail(where, "negative size");
    t.shape.push_back(size);
    count *= static_cast<size_t>(size);
  }
  t.data = decode(read_bytes(dir + "/" + t.file), t.dtype, count, dir + "/" + t.file);
  return t;
}

}  // namespace

const Tensor* Case::find(const std::string& tensor_name, const std::string& dtype) const {
  for (const Tensor& t : tensors) {
    if (t.name == tensor_name && t.dtype == dtype) return &t;
  }
  return nullptr;
}

Tolerance Case::tolerance(const std::string& dtype, const std::string& tensor_name) const {
  for (const TolEntry& e : tolerances) {
    if (e.dtype == dtype && e.name == tensor_name) return e.tol;
  }
  fail(dir, "no tol line for " + dtype + " " + tensor_name);
}

std::vector<std::string> Case::dtypes() const {
  std::vector<std::string> out;
  for (const char* dt : {"float32", "float64"}) {
    if (find("X", dt) != nullptr) out.emplace_back(dt);
  }
  return out;
}

std::vector<std::string> read_index(const std::string& root) {
  const std::string path = root + "/index.txt";
  std::ifstream in(path);
  if (!in) fail(path, "cannot open the case index");
  std::vector<std::string> ids;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::string id;
    if (!(ss >> id) || id[0] == '#') continue;
    ids.push_back(id);
  }
  return ids;
}

Case load_case(const std::string& root, const std::string& id) {
  Case c;
  c.id = id;
  c.dir = root + "/" + id;
  const std::string path = c.dir + "/case.txt";
  std::ifstream in(path);
  if (!in) fail(path, "cannot open");

  std::set<std::string> seen;
  bool ended = false;
  std::string line;
  int line_no = 0;
  while (!ended && std::getline(in, line)) {
    ++line_no;
    const std::string where = path + ":" + std::to_string(line_no);
    std::istringstream ss(line);
    std::string key;
    if (!(ss >> key) || key[0] == '#') continue;
    if (key == "end") {
      ended = true;
      continue;
    }
    if (key == "tensor") {
      c.tensors.push_back(parse_tensor(ss, c.dir, where));
      continue;
    }
    if (key == "tol") {
      Case::TolEntry e;
      std::string a, r;
      if (!(ss >> e.dtype >> e.name >> a >> r)) fail(where, "short tol line");
      e.tol = {parse_double(a, where), parse_double(r, where)};
      c.tolerances.push_back(e);
      continue;
    }
    std::string value;
    if (!(ss >> value)) fail(where, "key '" + key + "' has no value");
    if (!seen.insert(key).second) fail(where, "duplicate key " + key);
    if (key == "format") {
      if (value != "1") fail(where, "unsupported format " + value);
    } else if (key == "name") {
      c.name = value;
    } else if (key == "training") {
      c.training = parse_flag(value, where);
    } else if (key == "backward") {
      c.backward = parse_flag(value, where);
    } else if (key == "expect_error") {
      c.expect_error = parse_flag(value, where);
    } else if (key == "channel_axis") {
      c.channel_axis = static_cast<int>(parse_int(value, where));
    } else if (key == "epsilon") {
      c.epsilon = parse_double(value, where);
    } else if (key == "batch_stat_weight") {
      c.batch_stat_weight = parse_double(value, where);
    } else if (key == "running_var_unbiased") {
      c.running_var_unbiased = parse_flag(value, where);
    } else {
      fail(where, "unknown key " + key);
    }
  }
  if (!ended) fail(path, "no 'end' line (truncated file?)");
  for (const char* k : {"format", "name", "training", "backward", "expect_error", "channel_axis", "epsilon",
                        "batch_stat_weight", "running_var_unbiased"}) {
    if (seen.count(k) == 0) fail(path, std::string("missing key ") + k);
  }
  const std::string folder = id.substr(id.find_last_of('/') + 1);
  if (c.name != folder) fail(path, "name '" + c.name + "' differs from the folder '" + folder + "'");
  if (c.dtypes().empty()) fail(path, "no X tensor");
  return c;
}

}  // namespace bn::conformance
