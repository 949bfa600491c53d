// Durable file primitives for the shared store (a POSIX filesystem: a local
// disk, NFS, Lustre or GPFS).
//
// Contract of the "atomic" writers: after they return OK the new content is
// on stable storage under its final name; if the process dies at any point
// before that, readers see either the old file or no file, never a partial
// one. Implementation: write a uniquely named temporary in the same
// directory, fsync it, rename(2) it over the target, fsync the directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace retina {

// An owned file descriptor (-1: none), closed on destruction; movable, not
// copyable, so whatever holds one is too.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = other.release();
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);
  // Closes now, reporting close(2)'s result (deferred write errors on NFS).
  int Close();

 private:
  int fd_ = -1;
};

// Writes `contents` to `path` atomically and durably (see above).
absl::Status WriteFileAtomic(const std::filesystem::path& path, absl::string_view contents);

// Writes `contents` to a new file (truncating) and fsyncs it; not atomic.
absl::Status WriteFileDurable(const std::filesystem::path& path, absl::string_view contents);

// Reads a whole file. NOT_FOUND when it does not exist.
absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path);

// fsyncs a file or directory by path.
absl::Status FsyncPath(const std::filesystem::path& path);

// Creates `dir` and its parents (like mkdir -p), fsyncing each parent whose
// entries changed so the new directories survive a crash.
absl::Status CreateDirectories(const std::filesystem::path& dir);

// rename(2) then fsync of the destination's parent (and the source's parent
// when different).
absl::Status RenameDurable(const std::filesystem::path& from, const std::filesystem::path& to);

// A name unique to this process and call, for temporaries: "<prefix><pid>.<n>.<rand>".
std::string UniqueTempName(absl::string_view prefix);

// SHA-256 as 64 lowercase hex digits.
std::string Sha256Hex(absl::string_view data);
// SHA-256 of a file, streamed; also returns its size in bytes.
struct FileDigest {
  std::string sha256;
  std::uint64_t size = 0;
};
absl::StatusOr<FileDigest> Sha256File(const std::filesystem::path& path);

// errno as a status naming the operation and path, e.g.
// "open /store/x: No such file or directory" (code mapped from errno).
absl::Status ErrnoStatus(int err, absl::string_view op, const std::filesystem::path& path);

}  // namespace retina
