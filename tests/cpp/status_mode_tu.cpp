// See status_mode_tu.hpp. Compiled with exceptions on: the macro alone selects status mode.
#define BATCHNORM_NO_EXCEPTIONS
#include "status_mode_tu.hpp"

#include <batchnorm/batchnorm.hpp>
#include <type_traits>
#include <vector>

static_assert(std::is_same<batchnorm::Result, batchnorm::Status>::value, "status mode returns Status");
static_assert(std::is_same<batchnorm::Layer, batchnorm::returning::Layer>::value, "status mode's namespace");

namespace cpp_test {

StatusReport status_mode_bad_forward() {
  batchnorm::Config cfg;
  batchnorm::Layer layer;
  batchnorm::Status st = batchnorm::Layer::create(cfg, {4, 3}, layer);
  if (!st) return {st.status(), "create: " + st.message(), BATCHNORM_EXCEPTIONS != 0};
  std::vector<float> x(12, 1.0f), y(12);
  st = layer.forward({4, 2}, x.data(), y.data());
  return {st.status(), st.message(), BATCHNORM_EXCEPTIONS != 0};
}

}  // namespace cpp_test
