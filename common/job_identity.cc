#include "common/job_identity.h"

#include <sys/stat.h>

#include <cerrno>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace retina {
namespace fs = std::filesystem;
namespace {

fs::path StoreIdPath(const StoreLayout& s) { return s.root() / "STORE_ID"; }
fs::path JobUidPath(const StoreLayout& s, const std::string& job) { return s.JobDir(job) / "JOB_UID"; }

// The trimmed first line of `path`; "" when it does not exist.
absl::StatusOr<std::string> ReadId(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::string();
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const std::string id(absl::StripAsciiWhitespace(text.substr(0, text.find('\n'))));
  if (id.empty() || id.size() > 128) {
    return absl::DataLossError(absl::StrCat(path.string(), ": not an id (empty or over 128 characters)"));
  }
  return id;
}

bool HasEntries(const fs::path& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) && fs::directory_iterator(dir, ec) != fs::directory_iterator();
}

}  // namespace

std::string NewRandomId() {
  std::random_device rd;
  std::string out;
  for (int i = 0; i < 4; ++i) out += absl::StrFormat("%08x", rd());
  return out;
}

absl::StatusOr<std::string> ReadStoreId(const StoreLayout& store) { return ReadId(StoreIdPath(store)); }

absl::Status WriteStoreId(const StoreLayout& store, const std::string& id) {
  RETURN_IF_ERROR(CreateDirectories(store.root()));
  return WriteFileAtomic(StoreIdPath(store), id + "\n");
}

bool StoreHasJobs(const StoreLayout& store) { return HasEntries(store.root() / "jobs"); }

absl::Status ReserveJobDir(const StoreLayout& store, const std::string& job_id, const std::string& uid) {
  const fs::path dir = store.JobDir(job_id);
  RETURN_IF_ERROR(CreateDirectories(dir.parent_path()));
  if (::mkdir(dir.c_str(), 0755) != 0) {
    if (errno == EEXIST) return absl::AlreadyExistsError(absl::StrCat(dir.string(), ": exists"));
    return ErrnoStatus(errno, "mkdir", dir);
  }
  absl::Status s = WriteFileAtomic(JobUidPath(store, job_id), uid + "\n");
  if (!s.ok()) {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  return s;
}

void ReleaseJobDir(const StoreLayout& store, const std::string& job_id, const std::string& uid) {
  absl::StatusOr<std::string> owner = ReadId(JobUidPath(store, job_id));
  if (!owner.ok() || *owner != uid) return;
  std::error_code ec;
  fs::remove(JobUidPath(store, job_id), ec);
  fs::remove(store.JobDir(job_id), ec);  // only when empty
}

absl::Status CheckJobOwner(const StoreLayout& store, const std::string& job_id, const std::string& uid, bool claim) {
  if (uid.empty()) return absl::OkStatus();
  const fs::path dir = store.JobDir(job_id);
  ASSIGN_OR_RETURN(std::string owner, ReadId(JobUidPath(store, job_id)));
  if (owner == uid) return absl::OkStatus();
  if (!owner.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir.string(), " belongs to another job (JOB_UID ", owner, "); this run is job uid ", uid,
        ": refusing to resume from or write into it (was the coordinator started on another job database?)"));
  }
  if (HasEntries(dir)) {
    return absl::FailedPreconditionError(absl::StrCat(dir.string(), " exists without a JOB_UID, so job uid ", uid,
                                                      " did not create it: refusing to resume from or write into it"));
  }
  if (!claim) return absl::OkStatus();
  RETURN_IF_ERROR(CreateDirectories(dir));
  return WriteFileAtomic(JobUidPath(store, job_id), uid + "\n");
}

}  // namespace retina
