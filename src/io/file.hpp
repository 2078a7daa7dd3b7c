// Whole-file reads and atomic whole-file replacement (POSIX). The only code of the library
// that touches the file system; callers hand it bytes and get bytes back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace bn::io {

// A step of write_file_atomic, so that tests can make one of them fail.
enum class WriteStep : int32_t { none = 0, create, write, sync, close, rename };

// Replaces the file at `path` with `size` bytes so that a crash at any moment leaves either
// the old file or the complete new one at `path`: the bytes go to a new temporary file
// "<path>.tmp.<pid>.<n>" in the same directory (created exclusively, permissions as for any
// new file: 0666 minus the umask), which is fsync'ed, closed and renamed over `path`; then
// the directory is fsync'ed so that the rename itself is durable (best effort: the new file
// is in place by then, so a failure of that last fsync is not reported). On any failure
// before the rename the temporary file is removed and `path` is untouched. A crash leaves at
// most a stale temporary file next to `path`. Throws Error(invalid_argument) naming the path,
// the step and the OS's reason. `fail_at` (tests only) makes that step fail with EIO; the
// write step then fails after writing half of the bytes.
void write_file_atomic(const std::string& path, const void* data, size_t size, WriteStep fail_at = WriteStep::none);

// Reads the whole regular file at `path`. `check_prefix(bytes, n, file_size)` is called
// with its first n = min(prefix_size, file_size) bytes before the rest is read, and may throw
// (so that a foreign or inconsistent file is refused without reading it all). Throws
// Error(invalid_argument) with the OS's reason when the file cannot be opened or read.
std::vector<uint8_t> read_file(const std::string& path, size_t prefix_size,
                               const std::function<void(const uint8_t*, size_t, uint64_t)>& check_prefix);

}  // namespace bn::io
