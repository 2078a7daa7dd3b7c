// State files: round trips through bn_save_file / bn_load_file / bn_create_from_file, the
// errors of the file system, foreign and damaged files, and the atomic replacement: a save
// that fails half-way (a file-size limit) and a saving process killed at random moments both
// leave a complete file at the path.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <random>
#include <thread>

#include "state_support.hpp"

using namespace state_test;

namespace {

const Spec kSpec{"f32 (6, 4)", BN_F32, {6, 4}, nullptr};

}  // namespace

TEST_CASE("bn_save_file writes the blob, bn_load_file and bn_create_from_file read it back", "[capi][state][file]") {
  TempDir dir;
  Target t(kSpec);
  const std::string path = dir.file("layer.bnstate");
  REQUIRE(bn_save_file(t.layer.get(), path.c_str()) == BN_OK);
  const Bytes blob = save(t.layer.get());
  CHECK(read_all(path) == blob);
  CHECK(dir.files() == std::vector<std::string>{"layer.bnstate"});  // no temporary file left

  bn_layer* raw = nullptr;
  REQUIRE(bn_create_from_file(path.c_str(), &raw) == BN_OK);
  Layer b(raw, &bn_destroy);
  CHECK(save(b.get()) == blob);

  Layer c = spec_layer(kSpec);
  REQUIRE(bn_load_file(c.get(), path.c_str()) == BN_OK);
  CHECK(save(c.get()) == blob);

  // Saving again replaces the file (another state, another size).
  const Spec bigger{"f64", BN_F64, {6, 9}, nullptr};
  Layer d = spec_layer(bigger);
  REQUIRE(bn_save_file(d.get(), path.c_str()) == BN_OK);
  CHECK(read_all(path) == save(d.get()));
  CHECK(dir.files() == std::vector<std::string>{"layer.bnstate"});
  // Relative paths work too (the directory of the path is ".").
  const std::string relative = "bn_state_relative_test.bnstate";
  REQUIRE(bn_save_file(d.get(), relative.c_str()) == BN_OK);
  CHECK(read_all(relative) == save(d.get()));
  CHECK(::unlink(relative.c_str()) == 0);
}

TEST_CASE("files that cannot be read are BN_ERR_INVALID_ARGUMENT with the reason, and change nothing",
          "[capi][state][file]") {
  TempDir dir;
  Target t(kSpec);
  const Observed before = t.observe();
  bn_layer* out = nullptr;
  const std::string missing = dir.file("missing.bnstate");
  poison_last_error();
  check_status(bn_load_file(t.layer.get(), missing.c_str()), BN_ERR_INVALID_ARGUMENT, {"bn_load_file"});
  CHECK(std::string(bn_last_error()).find("No such file or directory") != std::string::npos);
  CHECK(std::string(bn_last_error()).find(missing) != std::string::npos);
  check_status(bn_create_from_file(missing.c_str(), &out), BN_ERR_INVALID_ARGUMENT, {"bn_create_from_file"});
  CHECK(out == nullptr);
  check_status(bn_load_file(t.layer.get(), dir.path().c_str()), BN_ERR_INVALID_ARGUMENT, {"bn_load_file"});
  CHECK(std::string(bn_last_error()).find("not a regular file") != std::string::npos);
  check_status(bn_load_file(t.layer.get(), ""), BN_ERR_INVALID_ARGUMENT, {"bn_load_file", "path"});
  CHECK(t.observe() == before);
}

TEST_CASE("foreign, truncated and damaged files are BN_ERR_CORRUPT_DATA naming the file", "[capi][state][file]") {
  TempDir dir;
  Target t(kSpec);
  const Observed before = t.observe();
  const Bytes blob = save(t.layer.get());
  struct Bad {
    const char* name;
    Bytes bytes;
    const char* needle;
  };
  Bytes flipped = blob;
  flipped[600] ^= 0x10;
  const std::string text = "not a state\n";
  const std::vector<Bad> bad = {
      {"empty", {}, "truncated"},
      {"text", Bytes(text.begin(), text.end()), "not a libbatchnorm state"},
      {"half", Bytes(blob.begin(), blob.begin() + 300), "truncated"},
      {"header only", Bytes(blob.begin(), blob.begin() + 32), "truncated"},
      {"flipped", flipped, "checksum"},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.name);
    const std::string path = dir.file(b.name);
    write_all(path, b.bytes);
    poison_last_error();
    check_status(bn_load_file(t.layer.get(), path.c_str()), BN_ERR_CORRUPT_DATA, {"bn_load_file"});
    const std::string message = bn_last_error();
    CHECK(message.find(path) != std::string::npos);
    CHECK(message.find(b.needle) != std::string::npos);
    bn_layer* out = nullptr;
    check_status(bn_create_from_file(path.c_str(), &out), BN_ERR_CORRUPT_DATA, {"bn_create_from_file"});
    CHECK(out == nullptr);
  }
  CHECK(t.observe() == before);
}

TEST_CASE("a save that cannot create its file changes nothing on disk", "[capi][state][file]") {
  TempDir dir;
  Target t(kSpec);
  const Observed before = t.observe();
  SECTION("the directory does not exist") {
    const std::string path = dir.file("no/such/dir/layer.bnstate");
    poison_last_error();
    check_status(bn_save_file(t.layer.get(), path.c_str()), BN_ERR_INVALID_ARGUMENT, {"bn_save_file"});
    CHECK(std::string(bn_last_error()).find("No such file or directory") != std::string::npos);
    CHECK(dir.files().empty());
  }
  SECTION("the path is a directory: the rename fails, the temporary file is removed") {
    const std::string sub = dir.file("sub");
    REQUIRE(::mkdir(sub.c_str(), 0755) == 0);
    poison_last_error();
    check_status(bn_save_file(t.layer.get(), sub.c_str()), BN_ERR_INVALID_ARGUMENT, {"bn_save_file"});
    CHECK(std::string(bn_last_error()).find("rename") != std::string::npos);
    CHECK(dir.files() == std::vector<std::string>{"sub"});
    struct stat st {};
    REQUIRE(::stat(sub.c_str(), &st) == 0);
    CHECK(S_ISDIR(st.st_mode));
    ::rmdir(sub.c_str());
  }
  SECTION("an empty path") {
    check_status(bn_save_file(t.layer.get(), ""), BN_ERR_INVALID_ARGUMENT, {"bn_save_file", "path"});
  }
  CHECK(t.observe() == before);
}

TEST_CASE("a save that fails half-way leaves the old file intact and no temporary file", "[capi][state][file]") {
  // The child process may write at most 1000 bytes per file (RLIMIT_FSIZE; SIGXFSZ ignored,
  // so write() fails with EFBIG): the new blob, larger than that, cannot be written. Works
  // for root too, unlike file permissions.
  TempDir dir;
  const std::string path = dir.file("layer.bnstate");
  Layer old_layer = spec_layer({"small", BN_F32, {4, 3}, nullptr});
  REQUIRE(bn_save_file(old_layer.get(), path.c_str()) == BN_OK);
  const Bytes old_bytes = read_all(path);
  REQUIRE(old_bytes.size() < 1000);
  const Spec big{"big", BN_F32, {2, 256}, nullptr};
  Layer new_layer = spec_layer(big);
  REQUIRE(save(new_layer.get()).size() > 1000);

  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{1000, 1000};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(10);
    const bn_status st = bn_save_file(new_layer.get(), path.c_str());
    const bool named = std::string(bn_last_error()).find("File too large") != std::string::npos;
    ::_exit(st == BN_ERR_INVALID_ARGUMENT && named ? 0 : 11);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(read_all(path) == old_bytes);
  CHECK(dir.files() == std::vector<std::string>{"layer.bnstate"});
  Layer reloaded = spec_layer({"small", BN_F32, {4, 3}, nullptr});
  CHECK(bn_load_file(reloaded.get(), path.c_str()) == BN_OK);
}

TEST_CASE("a process killed while saving leaves a complete file at the path", "[capi][state][file]") {
  // A child saves two states of ~1 MB in turn, as fast as it can; it is killed with SIGKILL
  // after a random delay. Whatever the moment, the path holds one of the two complete
  // states (only stale temporary files may be left next to it).
  TempDir dir;
  const std::string path = dir.file("layer.bnstate");
  const Spec s{"f64 (2, 32768)", BN_F64, {2, 32768}, nullptr};
  Layer a = spec_layer(s), b = spec_layer(s);
  REQUIRE(bn_set_training(b.get(), 1) == BN_OK);
  train_step(b.get(), s, 1);
  const Bytes blob_a = save(a.get()), blob_b = save(b.get());
  REQUIRE(blob_a != blob_b);
  REQUIRE(bn_save_file(a.get(), path.c_str()) == BN_OK);

  std::mt19937 rng(99);
  int saw_a = 0, saw_b = 0;
  for (int round = 0; round < 12; ++round) {
    CAPTURE(round);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      for (uint64_t k = 0;; ++k) {
        if (bn_save_file(k % 2 ? a.get() : b.get(), path.c_str()) != BN_OK) ::_exit(12);
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(2000 + rng() % 40000));
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFSIGNALED(status));  // it was still saving, not failing
    const Bytes now = read_all(path);
    const bool is_a = now == blob_a, is_b = now == blob_b;
    CHECK((is_a || is_b));
    saw_a += is_a;
    saw_b += is_b;
    Layer check = spec_layer(s);
    CHECK(bn_load_file(check.get(), path.c_str()) == BN_OK);
  }
  // Stale temporary files show that kills did land inside saves.
  const size_t stale = dir.files().size() - 1;
  INFO("rounds that found state a: " << saw_a << ", state b: " << saw_b << "; stale temporary files: " << stale);
  CHECK(saw_a + saw_b == 12);
}
