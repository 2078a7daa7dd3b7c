// Damaged, foreign and forged state blobs: every prefix, every single bit flip, other
// versions and magics, random bytes, and blobs with a valid checksum but a value the library
// would not accept. Each is refused with BN_ERR_CORRUPT_DATA and a message, by bn_load
// (which leaves the layer bitwise as it was) and by bn_create_from_state (which writes no
// layer).
#include <random>

#include "state_support.hpp"

using namespace state_test;

namespace {

const Spec kSmall{"f32 (6, 2)", BN_F32, {6, 2}, nullptr};
const Spec kRenorm{"f32 renorm (4, 2)", BN_F32, {4, 2}, [](bn_config* c) {
                     REQUIRE(bn_config_set_renorm(c, 1, 2.0, 0.5, 1.0, 0.9) == BN_OK);
                   }};

// Refused by both readers; `needles` must appear in the message. Checks the layer is
// unchanged only when `check_layer` (the exhaustive loops check it every time too, but
// cheaply enough).
void expect_corrupt(Target& t, const Observed& before, const Bytes& blob, std::initializer_list<const char*> needles) {
  const unsigned char* data = blob.empty() ? reinterpret_cast<const unsigned char*>("") : blob.data();
  const auto n = static_cast<int64_t>(blob.size());
  poison_last_error();
  const bn_status st = bn_load(t.layer.get(), data, n);
  if (st != BN_ERR_CORRUPT_DATA) {
    INFO("bn_load: " << bn_status_string(st) << ": " << bn_last_error());
    CHECK(st == BN_ERR_CORRUPT_DATA);
  }
  const std::string message = bn_last_error();
  CHECK(mentions(message, "bn_load"));
  for (const char* needle : needles) {
    INFO("the message should mention \"" << needle << "\": " << message);
    CHECK(message.find(needle) != std::string::npos);
  }
  bn_layer* out = nullptr;
  const bn_status created = bn_create_from_state(data, n, &out);
  if (created != BN_ERR_CORRUPT_DATA || out != nullptr) {
    INFO("bn_create_from_state: " << bn_status_string(created) << ": " << bn_last_error());
    CHECK(created == BN_ERR_CORRUPT_DATA);
    CHECK(out == nullptr);
    bn_destroy(out);
  }
  const Observed after = t.observe();
  if (!(after == before)) CHECK(after == before);  // one CHECK per failure, not per call
}

}  // namespace

TEST_CASE("every prefix of a blob is refused and changes nothing", "[capi][state][corrupt]") {
  for (const Spec& s : {kSmall, kRenorm}) {
    Target t(s);
    const Observed before = t.observe();
    const Bytes blob = save(t.layer.get());
    for (size_t len = 0; len < blob.size(); ++len) {
      CAPTURE(s.name, len);
      const Bytes prefix(blob.begin(), blob.begin() + static_cast<std::ptrdiff_t>(len));
      expect_corrupt(t, before, prefix, {"truncated"});
    }
    Bytes longer = blob;
    longer.push_back(0);
    expect_corrupt(t, before, longer, {"trailing"});
    REQUIRE(bn_load(t.layer.get(), blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
  }
}

TEST_CASE("every single bit flip of a blob is refused and changes nothing", "[capi][state][corrupt]") {
  Target t(kSmall);
  const Observed before = t.observe();
  const Bytes blob = save(t.layer.get());
  REQUIRE(blob.size() == 572u + 4u * 2u * 4u);
  for (size_t byte = 0; byte < blob.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      CAPTURE(byte, bit);
      Bytes flipped = blob;
      flipped[byte] = static_cast<unsigned char>(flipped[byte] ^ (1u << bit));
      expect_corrupt(t, before, flipped, {});
    }
  }
}

TEST_CASE("other versions, other magics and foreign bytes are refused", "[capi][state][corrupt]") {
  Target t(kSmall);
  const Observed before = t.observe();
  const Bytes blob = save(t.layer.get());
  SECTION("a later or earlier format version, even with a valid checksum") {
    for (uint32_t version : {0u, 2u, 3u, 0x01000000u}) {
      CAPTURE(version);
      Bytes b = blob;
      put<uint32_t>(b, offset::version, version);
      reseal(b);
      expect_corrupt(t, before, b, {"format version", std::to_string(version).c_str()});
    }
  }
  SECTION("another magic") {
    for (size_t i = 0; i < 8; ++i) {
      CAPTURE(i);
      Bytes b = blob;
      b[i] = static_cast<unsigned char>(b[i] + 1);
      expect_corrupt(t, before, b, {"not a libbatchnorm state"});
    }
  }
  SECTION("random bytes of random lengths") {
    std::mt19937_64 rng(2024);
    for (int k = 0; k < 2000; ++k) {
      Bytes b(rng() % 1500);
      for (auto& v : b) v = static_cast<unsigned char>(rng());
      expect_corrupt(t, before, b, {});
    }
  }
  SECTION("random bodies behind a valid header and checksum") {
    std::mt19937_64 rng(7);
    for (int k = 0; k < 2000; ++k) {
      Bytes b(576 + rng() % 200);
      for (auto& v : b) v = static_cast<unsigned char>(rng());
      std::copy(blob.begin(), blob.begin() + 16, b.begin());  // magic and version
      put<uint32_t>(b, 24, 512);
      put<uint32_t>(b, 28, 0);
      reseal(b);
      expect_corrupt(t, before, b, {});
    }
  }
  SECTION("text and a blob of zeros") {
    const std::string text = "gamma,beta,moving_mean,moving_variance\n1,0,0,1\n";
    expect_corrupt(t, before, Bytes(text.begin(), text.end()), {"not a libbatchnorm state"});
    expect_corrupt(t, before, Bytes(blob.size(), 0), {"not a libbatchnorm state"});
  }
}

TEST_CASE("blobs with a valid checksum but values the library would not accept are refused", "[capi][state][corrupt]") {
  Target t(kSmall);
  const Observed before = t.observe();
  const Bytes blob = save(t.layer.get());
  const double nan = std::nan(""), inf = 1.0 / 0.0;
  struct Forgery {
    const char* what;
    std::function<void(Bytes&)> edit;
    std::vector<const char*> needles;
  };
  const size_t mv0 = offset::arrays + 3 * 2 * 4;  // MOVING_VARIANCE[0]: after gamma, beta, moving mean
  const std::vector<Forgery> forgeries = {
      {"configuration size", [](Bytes& b) { put<uint32_t>(b, 24, 511); }, {"configuration size"}},
      {"reserved header field", [](Bytes& b) { put<uint32_t>(b, 28, 1); }, {"reserved"}},
      {"unknown dtype", [](Bytes& b) { put<int32_t>(b, offset::dtype, 4); }, {"dtype=4"}},
      {"ndim 0", [](Bytes& b) { put<int32_t>(b, offset::ndim, 0); }, {"ndim=0"}},
      {"ndim 9", [](Bytes& b) { put<int32_t>(b, offset::ndim, 9); }, {"ndim=9"}},
      {"negative size", [](Bytes& b) { put<int64_t>(b, offset::input_shape, -6); }, {"input_shape[0]=-6"}},
      {"used unused shape slot",
       [](Bytes& b) { put<int64_t>(b, offset::input_shape + 2 * 8, 3); },
       {"input_shape[2]", "unused"}},
      {"axis out of range for the rank", [](Bytes& b) { put<int32_t>(b, offset::axes, 5); }, {"axes"}},
      {"axis count 0", [](Bytes& b) { put<int32_t>(b, offset::axis_count, 0); }, {"axis_count=0"}},
      {"repeated axis",
       [](Bytes& b) {
         put<int32_t>(b, offset::axis_count, 2);
         put<int32_t>(b, offset::axes + 4, 1);
       },
       {"axes"}},
      {"momentum NaN", [&](Bytes& b) { put<double>(b, offset::momentum, nan); }, {"momentum"}},
      {"momentum 1.5", [](Bytes& b) { put<double>(b, offset::momentum, 1.5); }, {"momentum"}},
      {"negative epsilon", [](Bytes& b) { put<double>(b, offset::epsilon, -1e-3); }, {"epsilon"}},
      {"infinite epsilon", [&](Bytes& b) { put<double>(b, offset::epsilon, inf); }, {"epsilon"}},
      {"a flag of 2", [](Bytes& b) { put<int32_t>(b, offset::center, 2); }, {"center=2"}},
      {"unknown mode bits", [](Bytes& b) { put<int32_t>(b, offset::mode, 8); }, {"mode=8"}},
      {"fused decision flipped", [](Bytes& b) { put<int32_t>(b, offset::fused_resolved, 1); }, {"fused"}},
      {"unknown non-finite policy",
       [](Bytes& b) { put<int32_t>(b, offset::nonfinite_policy, 3); },
       {"nonfinite_policy=3"}},
      {"negative non-finite policy",
       [](Bytes& b) { put<int32_t>(b, offset::nonfinite_policy, -1); },
       {"nonfinite_policy=-1"}},
      {"unknown callback bit", [](Bytes& b) { put<int32_t>(b, offset::callbacks, 4); }, {"callbacks=4"}},
      {"negative virtual batch size",
       [](Bytes& b) { put<int64_t>(b, offset::virtual_batch_size, -2); },
       {"virtual_batch_size"}},
      {"unknown initializer kind", [](Bytes& b) { put<int32_t>(b, offset::initializers, 6); }, {"initializer"}},
      {"moving-variance initializer that can draw negatives",
       [](Bytes& b) { put<int32_t>(b, offset::initializers + 3 * 32, 3); },
       {"MOVING_VARIANCE", "initializer"}},
      {"negative regularizer", [](Bytes& b) { put<double>(b, offset::regularizers, -0.5); }, {"regularizer"}},
      {"norm constraint without axes",
       [](Bytes& b) { put<int32_t>(b, offset::constraints, 2); },
       {"constraint axis count"}},
      {"renorm clipping rmax < rmin", [](Bytes& b) { put<double>(b, 216, -1.0); }, {"rmax"}},
      {"negative step count", [](Bytes& b) { put<int64_t>(b, offset::step_count, -1); }, {"step_count"}},
      {"features", [](Bytes& b) { put<int64_t>(b, offset::features, 3); }, {"features=3"}},
      {"array count", [](Bytes& b) { put<int32_t>(b, offset::array_count, 3); }, {"array_count=3"}},
      {"element size", [](Bytes& b) { put<int32_t>(b, offset::element_size, 8); }, {"element_size=8"}},
      {"NaN moving variance", [&](Bytes& b) { put<float>(b, mv0, static_cast<float>(nan)); }, {"MOVING_VARIANCE[0]"}},
      {"negative moving variance", [&](Bytes& b) { put<float>(b, mv0 + 4, -0.5f); }, {"MOVING_VARIANCE[1]"}},
      {"infinite gamma", [&](Bytes& b) { put<float>(b, offset::arrays, static_cast<float>(inf)); }, {"GAMMA[0]"}},
      {"NaN moving mean",
       [&](Bytes& b) { put<float>(b, offset::arrays + 16, static_cast<float>(nan)); },
       {"MOVING_MEAN[0]"}},
      {"an extra array", [](Bytes& b) { b.insert(b.end() - 4, 8, 0); }, {"bytes of arrays"}},
      {"a missing value", [](Bytes& b) { b.erase(b.end() - 8, b.end() - 4); }, {"bytes of arrays"}},
  };
  for (const Forgery& f : forgeries) {
    CAPTURE(f.what);
    Bytes b = blob;
    f.edit(b);
    reseal(b);
    poison_last_error();
    const std::initializer_list<const char*> none{};
    expect_corrupt(t, before, b, none);
    const std::string message = bn_last_error();
    // bn_create_from_state ran last; its message names the same field.
    for (const char* needle : f.needles) {
      INFO("the message should mention \"" << needle << "\": " << message);
      CHECK(message.find(needle) != std::string::npos);
    }
  }
  // The untouched blob, resealed, still loads: the forgeries failed for their edit alone.
  Bytes same = blob;
  reseal(same);
  CHECK(same == blob);
  REQUIRE(bn_load(t.layer.get(), same.data(), static_cast<int64_t>(same.size())) == BN_OK);
}

TEST_CASE("a blob that records a callback its fused decision contradicts is refused", "[capi][state][corrupt]") {
  // A float32 NHWC layer takes the fused path; with a callback it would not have.
  const Spec s{"fused", BN_F32, {2, 2, 2, 3}, nullptr};
  Target t(s);
  const Observed before = t.observe();
  Bytes b = save(t.layer.get());
  REQUIRE(get<int32_t>(b, offset::fused_resolved) == 1);
  put<int32_t>(b, offset::callbacks, 1);
  reseal(b);
  expect_corrupt(t, before, b, {"fused"});
  // Nor would it have with an allreduce callback (fused AUTO resolves to non-fused).
  put<int32_t>(b, offset::callbacks, 2);
  reseal(b);
  expect_corrupt(t, before, b, {"fused"});
}
