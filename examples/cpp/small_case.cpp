// The shared small case (examples/README.md) through the C++ wrapper: one training step of
// BatchNormalization(axis=1, momentum=0.9, epsilon=1e-3) on a 2x3x2x2 NCHW batch, every result
// checked against examples/expected_small_case.txt. Usage: small_case_cpp [FILE].
#include <batchnorm/batchnorm.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

// Every item of the file: name -> values.
std::map<std::string, std::vector<double>> read_items(const std::string& path) {
  std::map<std::string, std::vector<double>> items;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string name;
    if (!(words >> name) || name[0] == '#') continue;
    double v = 0;
    while (words >> v) items[name].push_back(v);
  }
  return items;
}

int check(const char* what, const std::vector<float>& got, const std::vector<double>& want, double tol) {
  int bad = got.size() == want.size() ? 0 : 1;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol)) {
      std::fprintf(stderr, "%s[%zu] = %.9g, expected %.9g\n", what, i, static_cast<double>(got[i]), want[i]);
      ++bad;
    }
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "examples/expected_small_case.txt";
  auto items = read_items(path);
  if (items["x"].size() != 24 || items["tolerance"].size() != 1) {
    std::fprintf(stderr, "small_case_cpp: cannot read %s\n", path.c_str());
    return 1;
  }
  const std::vector<float> x(items["x"].begin(), items["x"].end());
  const std::vector<float> gamma(items["gamma"].begin(), items["gamma"].end());
  const std::vector<float> beta(items["beta"].begin(), items["beta"].end());
  try {
    batchnorm::Config cfg;
    cfg.set_axes({1}).set_momentum(0.9).set_epsilon(1e-3);
    batchnorm::Layer layer(cfg, {2, 3, 2, 2});
    layer.set_param(BN_PARAM_GAMMA, gamma);
    layer.set_param(BN_PARAM_BETA, beta);
    layer.set_training(true);
    std::vector<float> y(24);
    layer.forward({2, 3, 2, 2}, x.data(), y.data());
    const std::vector<float> mm = layer.get_param<float>(BN_PARAM_MOVING_MEAN);
    const std::vector<float> mv = layer.get_param<float>(BN_PARAM_MOVING_VARIANCE);
    const double tol = items["tolerance"][0];
    const int bad = check("y", y, items["y"], tol) + check("moving_mean", mm, items["moving_mean"], tol) +
                    check("moving_variance", mv, items["moving_variance"], tol);
    std::printf("small case (C++): y[0] = %.6f, moving_variance[0] = %.6f: %s\n", static_cast<double>(y[0]),
                static_cast<double>(mv[0]), bad ? "MISMATCH" : "all 30 values match");
    return bad ? 1 : 0;
  } catch (const batchnorm::Error& e) {
    std::fprintf(stderr, "small_case_cpp: %s\n", e.what());
    return 1;
  }
}
