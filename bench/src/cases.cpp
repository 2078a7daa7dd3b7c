#include "cases.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace bn::bench {
namespace {

[[noreturn]] void bad_line(const std::string& path, int line, const std::string& why) {
  std::fprintf(stderr, "bn_bench: %s:%d: %s\n", path.c_str(), line, why.c_str());
  std::exit(2);
}

std::vector<int64_t> parse_dims(const std::string& text) {
  std::vector<int64_t> dims;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, 'x')) {
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 1) return {};
    dims.push_back(v);
  }
  return dims;
}

}  // namespace

std::vector<int64_t> Case::logical_dims() const {
  std::vector<int64_t> out = {n, c};
  const size_t first = channels_last ? 1 : 2;
  const size_t last = channels_last ? dims.size() - 1 : dims.size();
  for (size_t i = first; i < last; ++i) out.push_back(dims[i]);
  return out;
}

std::vector<Case> read_cases(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "bn_bench: cannot open the shape list '%s'\n", path.c_str());
    std::exit(2);
  }
  std::vector<Case> cases;
  std::string text;
  int line = 0;
  while (std::getline(in, text)) {
    ++line;
    const auto hash = text.find('#');
    if (hash != std::string::npos) text.resize(hash);
    std::stringstream ss(text);
    Case k;
    std::string dims_text, extra;
    if (!(ss >> k.name)) continue;  // blank or comment line
    if (!(ss >> k.layout >> dims_text)) bad_line(path, line, "expected 'name layout dims [dtype]'");
    if (ss >> extra) {
      if (extra != "f32" && extra != "bf16" && extra != "f16")
        bad_line(path, line, "dtype '" + extra + "' is not f32, bf16 or f16");
      k.dtype = extra;
      if (ss >> extra) bad_line(path, line, "expected 'name layout dims [dtype]'");
    }
    k.dims = parse_dims(dims_text);
    const size_t nd = k.layout.size();
    if (k.dims.size() != nd || nd < 2)
      bad_line(path, line, "dims '" + dims_text + "' do not match layout '" + k.layout + "'");
    if (k.layout[0] != 'N') bad_line(path, line, "the layout must start with N (batch)");
    if (k.layout[nd - 1] == 'C') k.channels_last = true;
    else if (k.layout[1] == 'C') k.channels_last = false;
    else bad_line(path, line, "C (channels) must be the second or the last letter");
    if (nd > 5) bad_line(path, line, "at most 3 spatial dimensions");
    k.n = k.dims[0];
    k.c = k.channels_last ? k.dims[nd - 1] : k.dims[1];
    k.s = 1;
    for (size_t i = 0; i < nd; ++i) k.s *= k.dims[i];
    k.s /= k.n * k.c;
    cases.push_back(k);
  }
  if (cases.empty()) {
    std::fprintf(stderr, "bn_bench: no case in '%s'\n", path.c_str());
    std::exit(2);
  }
  return cases;
}

}  // namespace bn::bench
