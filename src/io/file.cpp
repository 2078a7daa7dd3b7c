#include "io/file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "layer/error.hpp"

namespace bn::io {
namespace {

// strerror_r is the GNU (char*) or the XSI (int) variant depending on the C library.
[[maybe_unused]] const char* reason_text(int rc, const char* buffer) {
  return rc == 0 ? buffer : "unknown error";
}
[[maybe_unused]] const char* reason_text(const char* text, const char*) {
  return text;
}

std::string reason(int err) {
  char buffer[256] = "";
  return reason_text(strerror_r(err, buffer, sizeof buffer), buffer);
}

[[noreturn]] void os_fail(const std::string& what, const std::string& path, int err) {
  fail(Status::invalid_argument, what + " '" + path + "': " + reason(err));
}

void check_path(const std::string& path) {
  if (path.empty()) fail(Status::invalid_argument, "path is empty");
}

// Closes a descriptor on every path out of a scope unless released.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Removes the temporary file unless the rename has consumed it.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  ~TempFile() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }
  void consumed() { path_.clear(); }

 private:
  std::string path_;
};

// Writes all bytes, resuming after signals and short writes. Returns 0 or an errno value.
int write_all(int fd, const unsigned char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return 0;
}

std::string directory_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::atomic<uint64_t> g_temp_counter{0};  // distinct temporary names within one process

}  // namespace

void write_file_atomic(const std::string& path, const void* data, size_t size, WriteStep fail_at) {
  check_path(path);
  const auto* bytes = static_cast<const unsigned char*>(data);
  // A fresh name for each attempt; O_EXCL never opens a file someone else has.
  int fd = -1;
  std::string temp_path;
  for (int attempt = 0; fd < 0; ++attempt) {
    temp_path = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(g_temp_counter.fetch_add(1));
    fd = fail_at == WriteStep::create ? (errno = EIO, -1)
                                      : ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && (errno != EEXIST || attempt >= 100)) os_fail("cannot create a temporary file for", path, errno);
  }
  Fd file(fd);
  TempFile temp(temp_path);
  int err = 0;
  if (fail_at == WriteStep::write) {
    err = write_all(file.get(), bytes, size / 2);
    if (err == 0) err = EIO;
  } else {
    err = write_all(file.get(), bytes, size);
  }
  if (err != 0) os_fail("cannot write", temp.path(), err);
  if (fail_at == WriteStep::sync || ::fsync(file.get()) != 0)
    os_fail("cannot fsync", temp.path(), fail_at == WriteStep::sync ? EIO : errno);
  const int raw = file.release();
  if (::close(raw) != 0 || fail_at == WriteStep::close)
    os_fail("cannot close", temp.path(), fail_at == WriteStep::close ? EIO : errno);
  if (fail_at == WriteStep::rename || ::rename(temp.path().c_str(), path.c_str()) != 0) {
    os_fail("cannot rename '" + temp.path() + "' to", path, fail_at == WriteStep::rename ? EIO : errno);
  }
  temp.consumed();
  // Make the rename durable. The new file is in place whatever happens here.
  const int dir = ::open(directory_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
}

std::vector<uint8_t> read_file(const std::string& path, size_t prefix_size,
                               const std::function<void(const uint8_t*, size_t, uint64_t)>& check_prefix) {
  check_path(path);
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) os_fail("cannot open", path, errno);
  Fd file(fd);
  struct stat st {};
  if (::fstat(file.get(), &st) != 0) os_fail("cannot stat", path, errno);
  if (!S_ISREG(st.st_mode)) fail(Status::invalid_argument, "'" + path + "' is not a regular file");
  const auto file_size = static_cast<uint64_t>(st.st_size);
  std::vector<uint8_t> bytes(static_cast<size_t>(file_size < prefix_size ? file_size : prefix_size));
  size_t have = 0;
  auto read_up_to = [&](size_t n) {
    while (have < n) {
      const ssize_t r = ::read(file.get(), bytes.data() + have, n - have);
      if (r < 0) {
        if (errno == EINTR) continue;
        os_fail("cannot read", path, errno);
      }
      if (r == 0) break;  // the file shrank: the caller sees fewer bytes
      have += static_cast<size_t>(r);
    }
  };
  read_up_to(bytes.size());
  check_prefix(bytes.data(), have, file_size);
  if (have == bytes.size() && file_size > have) {
    bytes.resize(static_cast<size_t>(file_size));
    read_up_to(bytes.size());
  }
  bytes.resize(have);
  return bytes;
}

}  // namespace bn::io
