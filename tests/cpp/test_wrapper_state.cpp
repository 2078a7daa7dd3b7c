// The C++ wrapper's state functions (exception mode): save / load / create_from_state and the
// file forms give the same bytes as the C calls, a refusal throws batchnorm::Error with the
// C status and message and changes nothing, and a layer made from a blob knows its dtype.
#include <unistd.h>

#include <batchnorm/batchnorm.hpp>
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "cpp_support.hpp"

namespace {

using Blob = std::vector<uint8_t>;

// The blob through the C API, for comparison.
Blob c_save(const bn_layer* layer) {
  int64_t size = 0;
  REQUIRE(bn_save(layer, nullptr, 0, &size) == BN_OK);
  Blob blob(static_cast<std::size_t>(size));
  REQUIRE(bn_save(layer, blob.data(), size, &size) == BN_OK);
  return blob;
}

batchnorm::Layer trained(bn_dtype dtype) {
  batchnorm::Config cfg;
  cfg.set_dtype(dtype).set_axes({1}).set_momentum(0.9).set_renorm(true, 2.0, 0.5, 1.0, 0.9);
  batchnorm::Layer layer(cfg, {4, 3, 2});
  layer.set_training(true);
  if (dtype == BN_F64) {
    std::vector<double> x(24), y(24);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>(i % 7) - 2.5;
    layer.forward({4, 3, 2}, x.data(), y.data());
  } else {
    std::vector<float> x(24), y(24);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 5) - 1.5f;
    layer.forward({4, 3, 2}, x.data(), y.data());
  }
  return layer;
}

}  // namespace

TEST_CASE("save, load and from_state match the C API bitwise", "[cpp][state]") {
  for (bn_dtype dtype : {BN_F32, BN_F64}) {
    CAPTURE(dtype);
    batchnorm::Layer a = trained(dtype);
    const Blob blob = a.save();
    CHECK(blob == c_save(a.get()));
    Blob into{1, 2, 3};
    a.save(into);
    CHECK(into == blob);

    batchnorm::Layer b = batchnorm::Layer::from_state(blob);
    CHECK(b.dtype() == dtype);
    CHECK(b.save() == blob);
    CHECK(b.step_count() == 1);
    b.set_step_count(7);
    CHECK(b.step_count() == 7);

    batchnorm::Layer c;
    batchnorm::Layer::create_from_state(blob, c);
    c.set_step_count(3);
    c.load(blob);
    CHECK(c.save() == blob);
  }
}

TEST_CASE("a refused blob throws the C status and message and changes nothing", "[cpp][state]") {
  batchnorm::Layer a = trained(BN_F32);
  const Blob before = a.save();
  Blob damaged = before;
  damaged.resize(damaged.size() - 1);
  try {
    a.load(damaged);
    FAIL("no batchnorm::Error thrown");
  } catch (const batchnorm::Error& e) {
    CHECK(e.status() == BN_ERR_CORRUPT_DATA);
    CHECK(std::string(e.what()).find("bn_load: ") == 0);
    CHECK(std::string(e.what()).find("truncated") != std::string::npos);
  }
  CHECK(a.save() == before);
  const Blob f64 = trained(BN_F64).save();
  try {
    a.load(f64);
    FAIL("no batchnorm::Error thrown");
  } catch (const batchnorm::Error& e) {
    CHECK(e.status() == BN_ERR_INVALID_ARGUMENT);
    CHECK(std::string(e.what()).find("dtype") != std::string::npos);
  }
  CHECK(a.save() == before);
  batchnorm::Layer none;
  CHECK_THROWS_AS(batchnorm::Layer::create_from_state(damaged, none), batchnorm::Error);
  CHECK(!none);
  CHECK_THROWS_AS(a.set_step_count(-1), batchnorm::Error);
}

TEST_CASE("save_file, load_file and from_file", "[cpp][state]") {
  char dir_template[] = "/tmp/bn_cpp_state_XXXXXX";
  REQUIRE(mkdtemp(dir_template) != nullptr);
  const std::string dir = dir_template, path = dir + "/layer.bnstate";
  batchnorm::Layer a = trained(BN_F64);
  a.save_file(path);
  batchnorm::Layer b = batchnorm::Layer::from_file(path);
  CHECK(b.dtype() == BN_F64);
  CHECK(b.save() == a.save());
  batchnorm::Layer c = trained(BN_F64);
  c.set_momentum(0.25);
  c.load_file(path);
  CHECK(c.save() == a.save());
  try {
    c.load_file(dir + "/missing");
    FAIL("no batchnorm::Error thrown");
  } catch (const batchnorm::Error& e) {
    CHECK(e.status() == BN_ERR_INVALID_ARGUMENT);
    CHECK(std::string(e.what()).find("bn_load_file") == 0);
  }
  CHECK_THROWS_AS(batchnorm::Layer::from_file(dir + "/missing"), batchnorm::Error);
  std::remove(path.c_str());
  ::rmdir(dir.c_str());
}
