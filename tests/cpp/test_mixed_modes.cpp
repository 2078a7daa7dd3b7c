// Both error modes of the wrapper in one program: this file throws, status_mode_tu.cpp returns
// statuses, and neither sees the other's definitions (distinct inline namespaces).
#include <batchnorm/batchnorm.hpp>
#include <catch2/catch.hpp>
#include <type_traits>
#include <vector>

#include "cpp_support.hpp"
#include "status_mode_tu.hpp"

namespace {

static_assert(std::is_same<batchnorm::Layer, batchnorm::throwing::Layer>::value, "exception mode's namespace");

TEST_CASE("a status-mode translation unit and an exception-mode one coexist", "[cpp][modes]") {
  const cpp_test::StatusReport r = cpp_test::status_mode_bad_forward();
  CHECK_FALSE(r.exceptions);
  CHECK(r.status == BN_ERR_SHAPE);
  CHECK(cpp_test::contains(r.message, "bn_forward"));

  batchnorm::Config cfg;
  batchnorm::Layer layer(cfg, {4, 3});
  std::vector<float> x(12, 1.0f), y(12);
  CHECK_THROWS_AS(layer.forward({4, 2}, x.data(), y.data()), batchnorm::Error);
}

}  // namespace
