// The committed state blobs (tests/fuzz/corpus/load/, the fuzzer's seeds): blobs written by
// an earlier build must keep loading, and re-save to the same bytes (but for the writer's
// library version and so the checksum); the damaged ones stay refused. The hidden test
// "[.corpus]" regenerates the directory:
//   BN_CORPUS_DIR=tests/fuzz/corpus/load build/tests/capi/bn_capi_state_tests "[.corpus]"
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "state_support.hpp"

using namespace state_test;

#ifndef BN_SOURCE_DIR
#error "BN_SOURCE_DIR must be defined (the repository root)"
#endif

namespace {

const std::string kCorpus = std::string(BN_SOURCE_DIR) + "/tests/fuzz/corpus/load";

bool starts_with(const std::string& s, const char* prefix) {
  return s.rfind(prefix, 0) == 0;
}

// The blob with this library's version in the header (and the checksum resealed).
Bytes as_this_version(Bytes b) {
  put<uint32_t>(b, 12, bn_version());
  reseal(b);
  return b;
}

}  // namespace

TEST_CASE("the committed state blobs load, and re-save to the same bytes", "[capi][state][corpus]") {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(kCorpus.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    ::closedir(d);
  }
  INFO("corpus directory: " << kCorpus);
  REQUIRE(names.size() >= 10);
  int valid = 0, damaged = 0;
  for (const std::string& name : names) {
    CAPTURE(name);
    const Bytes blob = read_all(kCorpus + "/" + name);
    bn_layer* raw = nullptr;
    const bn_status st = bn_create_from_state(blob.data(), static_cast<int64_t>(blob.size()), &raw);
    Layer layer(raw, &bn_destroy);
    if (starts_with(name, "valid_")) {
      ++valid;
      INFO(bn_last_error());
      REQUIRE(st == BN_OK);
      CHECK(save(layer.get()) == as_this_version(blob));
      REQUIRE(bn_load(layer.get(), blob.data(), static_cast<int64_t>(blob.size())) == BN_OK);
    } else {
      ++damaged;
      CHECK(st == BN_ERR_CORRUPT_DATA);
      CHECK(raw == nullptr);
    }
  }
  CHECK(valid >= 8);
  CHECK(damaged >= 3);
}

TEST_CASE("regenerate the fuzzer's seed corpus of state blobs", "[.corpus]") {
  const char* dir = std::getenv("BN_CORPUS_DIR");
  REQUIRE(dir != nullptr);
  int k = 0;
  for (const Spec& s : specs()) {
    Layer layer = spec_layer(s);
    give_history(layer.get(), s);
    const Bytes blob = save(layer.get());
    std::string slug;
    for (char c : s.name) slug += std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(c) : '_';
    char prefix[32];
    std::snprintf(prefix, sizeof prefix, "valid_%02d_", k++);
    write_all(std::string(dir) + "/" + prefix + slug.substr(0, 40) + ".bnstate", blob);
    if (k == 1) {
      write_all(std::string(dir) + "/damaged_truncated_header.bnstate", Bytes(blob.begin(), blob.begin() + 20));
      write_all(std::string(dir) + "/damaged_truncated_config.bnstate", Bytes(blob.begin(), blob.begin() + 300));
      write_all(std::string(dir) + "/damaged_truncated_arrays.bnstate", Bytes(blob.begin(), blob.end() - 9));
      Bytes flipped = blob;
      flipped[200] ^= 0x04;
      write_all(std::string(dir) + "/damaged_bit_flip.bnstate", flipped);
    }
  }
}
