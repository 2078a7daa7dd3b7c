// White-box tests of the state files' building blocks (batchnorm_core): CRC-32C against
// published check values, the blob's fields at the offsets docs/state_format.md gives, the
// decoder's refusals as exceptions, and write_file_atomic failing at each of its steps.
#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "io/crc32c.hpp"
#include "io/file.hpp"
#include "layer/error.hpp"
#include "layer/layer.hpp"
#include "layer/state_io.hpp"

namespace {

using Bytes = std::vector<uint8_t>;

template <class T>
T at(const Bytes& b, size_t offset) {
  T v;
  std::memcpy(&v, &b[offset], sizeof v);
  return v;
}

bn::Status status_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const bn::Error& e) {
    return e.status();
  }
  return bn::Status::ok;
}

}  // namespace

TEST_CASE("CRC-32C matches the published check values", "[layer][state]") {
  const std::string check = "123456789";
  CHECK(bn::io::crc32c(check.data(), check.size()) == 0xE3069283u);
  // RFC 3720 (iSCSI), appendix B.4.
  Bytes zeros(32, 0x00), ones(32, 0xFF), up(32), down(32);
  for (size_t i = 0; i < 32; ++i) {
    up[i] = static_cast<uint8_t>(i);
    down[i] = static_cast<uint8_t>(31 - i);
  }
  CHECK(bn::io::crc32c(zeros.data(), 32) == 0x8A9136AAu);
  CHECK(bn::io::crc32c(ones.data(), 32) == 0x62A8AB43u);
  CHECK(bn::io::crc32c(up.data(), 32) == 0x46DD794Eu);
  CHECK(bn::io::crc32c(down.data(), 32) == 0x113FDB5Cu);
  CHECK(bn::io::crc32c(nullptr, 0) == 0u);
  // Continuing a CRC over a split buffer gives the CRC of the whole.
  for (size_t split = 0; split <= check.size(); ++split) {
    CAPTURE(split);
    CHECK(bn::io::crc32c(check.data() + split, check.size() - split, bn::io::crc32c(check.data(), split)) ==
          0xE3069283u);
  }
}

TEST_CASE("the blob holds each field at its documented offset", "[layer][state]") {
  bn::Config c;
  c.dtype = bn::DType::f64;
  c.axes = {1, -1};
  c.momentum = 0.875;
  c.epsilon = 0.0625;
  c.center = false;
  c.rules = bn::KerasRules::v2;
  c.fused = bn::Fused::off;
  c.moving_variance = bn::MovingVariance::unbiased;
  c.cumulative_average = true;
  c.single_value = bn::SingleValue::reject;
  c.relu = true;
  c.nonfinite = bn::NonFinite::skip_update;
  c.allreduce = [](double*, int64_t) { return true; };  // one replica
  c.renorm = {true, 3.0, 0.25, 5.0, 0.5};
  c.virtual_batch_size = 2;
  c.keras.gamma_init = {bn::InitKind::random_uniform, 0.5, 1.5, 42};
  c.keras.beta_regularizer = {0.0, 0.125};
  c.keras.gamma_constraint = {bn::ConstraintKind::max_norm, 0.0, 2.0, 1.0, {0, 1}};
  const int64_t shape[] = {4, 3, 2};
  bn::Layer layer(c, shape, 3);
  layer.set_training(true);
  layer.set_step_count(5);
  const Bytes b = bn::encode_state(layer.state(), 10203);

  const size_t features = 6, arrays = 6;  // no beta; renorm adds three
  REQUIRE(b.size() == 572 + arrays * features * 8);
  CHECK(std::memcmp(b.data(),
                    "\x89"
                    "BNS\r\n\x1a\n",
                    8) == 0);
  CHECK(at<uint32_t>(b, 8) == 1u);
  CHECK(at<uint32_t>(b, 12) == 10203u);
  CHECK(at<uint64_t>(b, 16) == b.size());
  CHECK(at<uint32_t>(b, 24) == 512u);
  CHECK(at<int32_t>(b, 32) == 1);  // BN_F64
  CHECK(at<int32_t>(b, 36) == 3);
  CHECK((at<int64_t>(b, 40) == 4 && at<int64_t>(b, 48) == 3 && at<int64_t>(b, 56) == 2 && at<int64_t>(b, 64) == 0));
  CHECK(at<int32_t>(b, 104) == 2);
  CHECK((at<int32_t>(b, 108) == 1 && at<int32_t>(b, 112) == -1 && at<int32_t>(b, 116) == 0));
  CHECK(at<int32_t>(b, 140) == 1);
  CHECK(at<double>(b, 144) == 0.875);
  CHECK(at<double>(b, 152) == 0.0625);
  CHECK(at<int32_t>(b, 160) == 0);  // center
  CHECK(at<int32_t>(b, 164) == 1);  // scale
  CHECK(at<int32_t>(b, 168) == 1);  // trainable
  CHECK(at<int32_t>(b, 172) == 1);  // training
  CHECK(at<int32_t>(b, 176) == layer.mode());
  CHECK(at<int32_t>(b, 180) == 2);  // BN_FUSED_OFF
  CHECK(at<int32_t>(b, 184) == 0);
  CHECK(at<int32_t>(b, 188) == 2);  // unbiased
  CHECK(at<int32_t>(b, 192) == 1);
  CHECK(at<int32_t>(b, 196) == 1);  // reject
  CHECK(at<int32_t>(b, 200) == 1);  // relu
  CHECK(at<int32_t>(b, 204) == 2);  // callbacks: allreduce, no adjustment
  CHECK(at<int32_t>(b, 208) == 1);  // renorm
  CHECK(at<int32_t>(b, 212) == 2);  // BN_NONFINITE_SKIP_UPDATE
  CHECK((at<double>(b, 216) == 3.0 && at<double>(b, 224) == 0.25 && at<double>(b, 232) == 5.0 &&
         at<double>(b, 240) == 0.5));
  CHECK(at<int64_t>(b, 248) == 2);
  CHECK(at<int32_t>(b, 256) == 4);  // gamma: RANDOM_UNIFORM
  CHECK((at<double>(b, 264) == 0.5 && at<double>(b, 272) == 1.5 && at<uint64_t>(b, 280) == 42u));
  CHECK(at<int32_t>(b, 256 + 3 * 32) == 1);     // moving variance: ONES
  CHECK(at<double>(b, 384 + 16 + 8) == 0.125);  // beta's l2
  CHECK((at<int32_t>(b, 416) == 3 && at<int32_t>(b, 420) == 2 && at<double>(b, 432) == 2.0));
  CHECK((at<int32_t>(b, 448) == 0 && at<int32_t>(b, 452) == 1));
  CHECK(at<int32_t>(b, 480) == 0);  // beta: no constraint
  CHECK(at<int64_t>(b, 544) == 5);
  CHECK(at<int64_t>(b, 552) == 6);
  CHECK(at<int32_t>(b, 560) == 6);
  CHECK(at<int32_t>(b, 564) == 8);
  // Arrays: gamma (drawn by its initializer), moving mean 0, moving variance 1, renorm mean 0,
  // renorm stddev 1, moving stddev 1.
  std::vector<double> gamma(6);
  layer.get_param(bn::Param::gamma, gamma.data(), 6);
  for (size_t f = 0; f < features; ++f) {
    CAPTURE(f);
    CHECK(at<double>(b, 568 + f * 8) == gamma[f]);
    CHECK(at<double>(b, 568 + (features + f) * 8) == 0.0);
    CHECK(at<double>(b, 568 + (2 * features + f) * 8) == 1.0);
    CHECK(at<double>(b, 568 + (5 * features + f) * 8) == 1.0);
  }
  CHECK(at<uint32_t>(b, b.size() - 4) == bn::io::crc32c(b.data(), b.size() - 4));

  // And back.
  const bn::LayerState s = bn::decode_state(b.data(), b.size());
  CHECK(s.writer_version == 10203u);
  CHECK(s.config.axes == c.axes);
  CHECK(s.config.keras.gamma_constraint.axes == c.keras.gamma_constraint.axes);
  CHECK(s.step_count == 5);
  CHECK(s.gamma == gamma);
  CHECK(s.beta.empty());
  CHECK(s.config.nonfinite == bn::NonFinite::skip_update);
  CHECK((s.had_allreduce && !s.had_adjustment && !s.config.allreduce));
  bn::Layer restored(s, bn::Adjustment{}, bn::Allreduce{});
  CHECK(restored.config().nonfinite == bn::NonFinite::skip_update);
  CHECK(!restored.config().allreduce);
  CHECK(bn::encode_state(restored.state(), 10203) == b);
}

TEST_CASE("the decoder throws corrupt_data, and check_state_prefix sees a file's header", "[layer][state]") {
  const bn::Config c;
  const int64_t shape[] = {4, 3};
  bn::Layer layer(c, shape, 2);
  const Bytes b = bn::encode_state(layer.state(), 1);
  CHECK(status_of([&] { bn::decode_state(b.data(), b.size() - 1); }) == bn::Status::corrupt_data);
  CHECK(status_of([&] { bn::check_state_prefix(b.data(), 32, b.size()); }) == bn::Status::ok);
  CHECK(status_of([&] { bn::check_state_prefix(b.data(), 32, b.size() + 1); }) == bn::Status::corrupt_data);
  CHECK(status_of([&] { bn::check_state_prefix(b.data(), 5, 5); }) == bn::Status::corrupt_data);
  const char text[] = "hello, world, this is not a state at all";
  CHECK(status_of([&] { bn::check_state_prefix(reinterpret_cast<const uint8_t*>(text), 32, sizeof text); }) ==
        bn::Status::corrupt_data);
  // Loading into a layer of another structure: shape / invalid_argument, never corrupt.
  const int64_t other[] = {4, 5};
  bn::Layer wider(c, other, 2);
  CHECK(status_of([&] { wider.load(bn::decode_state(b.data(), b.size())); }) == bn::Status::shape);
}

namespace {

class Dir {
 public:
  Dir() {
    char pattern[] = "/tmp/bn_state_io_XXXXXX";
    REQUIRE(mkdtemp(pattern) != nullptr);
    path_ = pattern;
  }
  ~Dir() {
    for (const std::string& f : files()) ::unlink((path_ + "/" + f).c_str());
    ::rmdir(path_.c_str());
  }
  std::vector<std::string> files() const {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(path_.c_str())) {
      while (const dirent* e = ::readdir(d)) {
        if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.emplace_back(e->d_name);
      }
      ::closedir(d);
    }
    return names;
  }
  std::string file(const char* name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

Bytes read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("write_file_atomic failing at any step leaves the old file and no temporary file", "[layer][state]") {
  Dir dir;
  const std::string path = dir.file("f.bin");
  const Bytes old_bytes(100, 0x11), new_bytes(5000, 0x22);
  bn::io::write_file_atomic(path, old_bytes.data(), old_bytes.size());
  REQUIRE(read_all(path) == old_bytes);
  using Step = bn::io::WriteStep;
  for (Step step : {Step::create, Step::write, Step::sync, Step::close, Step::rename}) {
    CAPTURE(static_cast<int>(step));
    std::string message;
    try {
      bn::io::write_file_atomic(path, new_bytes.data(), new_bytes.size(), step);
    } catch (const bn::Error& e) {
      CHECK(e.status() == bn::Status::invalid_argument);
      message = e.what();
    }
    CHECK(message.find("Input/output error") != std::string::npos);
    CHECK(message.find(path) != std::string::npos);
    CHECK(read_all(path) == old_bytes);
    CHECK(dir.files() == std::vector<std::string>{"f.bin"});
  }
  bn::io::write_file_atomic(path, new_bytes.data(), new_bytes.size());
  CHECK(read_all(path) == new_bytes);
  CHECK(dir.files() == std::vector<std::string>{"f.bin"});
}

TEST_CASE("read_file hands the prefix to its check before reading the rest", "[layer][state]") {
  Dir dir;
  const std::string path = dir.file("g.bin");
  Bytes bytes(1000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7);
  bn::io::write_file_atomic(path, bytes.data(), bytes.size());
  size_t seen = 0;
  uint64_t seen_size = 0;
  const Bytes got = bn::io::read_file(path, 32, [&](const uint8_t* p, size_t n, uint64_t size) {
    seen = n;
    seen_size = size;
    CHECK(std::memcmp(p, bytes.data(), n) == 0);
  });
  CHECK(got == bytes);
  CHECK(seen == 32);
  CHECK(seen_size == 1000);
  const bn::Status refused = status_of([&] {
    bn::io::read_file(path, 32, [](const uint8_t*, size_t, uint64_t) { bn::fail(bn::Status::corrupt_data, "no"); });
  });
  CHECK(refused == bn::Status::corrupt_data);
  CHECK(status_of([&] { bn::io::read_file(dir.file("none"), 32, [](const uint8_t*, size_t, uint64_t) {}); }) ==
        bn::Status::invalid_argument);
}
