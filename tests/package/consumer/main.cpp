// The C++ consumer: the same batch as main.c through the installed header-only wrapper
// <batchnorm/batchnorm.hpp> (exceptions on).
#include <batchnorm/batchnorm.hpp>
#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  try {
    if (batchnorm::version() / 10000 != BN_VERSION_MAJOR) return 1;
    batchnorm::Config cfg;
    cfg.set_epsilon(0.0);
    batchnorm::Layer layer(cfg, {4, 1});
    layer.set_training(true);
    const std::vector<float> x{1.0f, 2.0f, 3.0f, 4.0f};
    std::vector<float> y(4);
    layer.forward({4, 1}, x.data(), y.data());
    // mean 2.5, biased variance 1.25: y = (x - 2.5) / sqrt(1.25)
    for (std::size_t i = 0; i < 4; ++i) {
      const double expected = (x[i] - 2.5) / std::sqrt(1.25);
      if (std::fabs(y[i] - expected) > 1e-6) {
        std::fprintf(stderr, "consumer_cpp: y[%zu]=%g, expected %g\n", i, static_cast<double>(y[i]), expected);
        return 1;
      }
    }
  } catch (const batchnorm::Error& e) {
    std::fprintf(stderr, "consumer_cpp: %s (%s)\n", e.what(), e.name());
    return 1;
  }
  std::printf("consumer_cpp: libbatchnorm %s OK\n", batchnorm::version_string());
  return 0;
}
