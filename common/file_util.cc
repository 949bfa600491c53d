#include "common/file_util.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <random>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace retina {
namespace fs = std::filesystem;

absl::Status ErrnoStatus(int err, absl::string_view op, const fs::path& path) {
  const std::string msg = absl::StrCat(op, " ", path.string(), ": ", std::strerror(err));
  switch (err) {
    case ENOENT: return absl::NotFoundError(msg);
    case EEXIST: return absl::AlreadyExistsError(msg);
    case EACCES:
    case EPERM: return absl::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT: return absl::ResourceExhaustedError(msg);
    case EINTR:
    case EAGAIN:
    case EIO: return absl::UnavailableError(msg);
    default: return absl::InternalError(msg);
  }
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

int UniqueFd::Close() {
  const int rc = fd_ >= 0 ? ::close(fd_) : 0;
  fd_ = -1;
  return rc;
}

namespace {

absl::Status WriteAll(int fd, absl::string_view data, const fs::path& path) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "write", path);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

fs::path ParentOrDot(const fs::path& path) {
  fs::path parent = path.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

}  // namespace

std::string UniqueTempName(absl::string_view prefix) {
  static std::atomic<std::uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrCat(prefix, ::getpid(), ".", counter.fetch_add(1), ".", rng() % 1000000007);
}

absl::Status FsyncPath(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, "open", path);
  if (::fsync(fd.get()) != 0) return ErrnoStatus(errno, "fsync", path);
  return absl::OkStatus();
}

absl::Status WriteFileDurable(const fs::path& path, absl::string_view contents) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) return ErrnoStatus(errno, "open", path);
  RETURN_IF_ERROR(WriteAll(fd.get(), contents, path));
  if (::fsync(fd.get()) != 0) return ErrnoStatus(errno, "fsync", path);
  if (fd.Close() != 0) return ErrnoStatus(errno, "close", path);
  return absl::OkStatus();
}

absl::Status WriteFileAtomic(const fs::path& path, absl::string_view contents) {
  const fs::path dir = ParentOrDot(path);
  const fs::path tmp = dir / UniqueTempName(absl::StrCat(".", path.filename().string(), ".tmp."));
  absl::Cleanup remove_tmp = [&] { ::unlink(tmp.c_str()); };
  RETURN_IF_ERROR(WriteFileDurable(tmp, contents));
  if (::rename(tmp.c_str(), path.c_str()) != 0) return ErrnoStatus(errno, "rename", path);
  std::move(remove_tmp).Cancel();
  return FsyncPath(dir);
}

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, "open", path);
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "read", path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

absl::Status CreateDirectories(const fs::path& dir) {
  if (dir.empty()) return absl::OkStatus();
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("mkdir ", dir.string(), ": exists and is not a directory"));
  }
  const fs::path parent = dir.has_parent_path() && dir.parent_path() != dir ? dir.parent_path()
                                                                             : fs::path();
  RETURN_IF_ERROR(CreateDirectories(parent));
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return ErrnoStatus(errno, "mkdir", dir);
  return FsyncPath(ParentOrDot(dir));
}

absl::Status RenameDurable(const fs::path& from, const fs::path& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("rename ", from.string(), " ->"), to);
  }
  RETURN_IF_ERROR(FsyncPath(ParentOrDot(to)));
  if (ParentOrDot(from) != ParentOrDot(to)) RETURN_IF_ERROR(FsyncPath(ParentOrDot(from)));
  return absl::OkStatus();
}

namespace {
struct EvpCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using EvpCtx = std::unique_ptr<EVP_MD_CTX, EvpCtxDeleter>;

std::string Hex(const unsigned char* digest, unsigned int len) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(2 * len, '0');
  for (unsigned int i = 0; i < len; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 15];
  }
  return out;
}
}  // namespace

std::string Sha256Hex(absl::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  return Hex(digest, len);
}

absl::StatusOr<FileDigest> Sha256File(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, "open", path);
  EvpCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("EVP_DigestInit_ex(sha256) failed");
  }
  FileDigest result;
  std::unique_ptr<char[]> buf(new char[1 << 20]);
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf.get(), 1 << 20);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "read", path);
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.get(), static_cast<size_t>(n));
    result.size += static_cast<std::uint64_t>(n);
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  result.sha256 = Hex(digest, len);
  return result;
}

}  // namespace retina
