#include "common/job_identity.h"

#include <sys/stat.h>

#include <cerrno>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace retina {
namespace fs = std::filesystem;
namespace {

fs::path StoreIdPath(const StoreLayout& s) { return s.root() / "STORE_ID"; }
fs::path JobUidPath(const StoreLayout& s, const std::string& job) { return s.JobDir(job) / "JOB_UID"; }
fs::path AttemptPath(const StoreLayout& s, const std::string& job) { return s.JobDir(job) / "ATTEMPT"; }

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

namespace {

// The attempt recorded in jobs/<job_id>/ATTEMPT (0 when none).
absl::StatusOr<int> ReadAttempt(const StoreLayout& store, const std::string& job_id) {
  ASSIGN_OR_RETURN(std::string text, ReadId(AttemptPath(store, job_id)));
  if (text.empty()) return 0;
  int attempt = 0;
  if (!absl::SimpleAtoi(text, &attempt) || attempt < 1) {
    return absl::DataLossError(absl::StrCat(AttemptPath(store, job_id).string(), ": '", text, "' is not an attempt number"));
  }
  return attempt;
}

absl::Status Superseded(const StoreLayout& store, const std::string& job_id, int attempt, int newer) {
  return absl::AbortedError(absl::StrCat("attempt ", attempt, " of job ", job_id, " is superseded: attempt ", newer,
                                         " has started (", AttemptPath(store, job_id).string(),
                                         "); this rank stops without writing into the job (the coordinator ran the "
                                         "job again while this attempt was cut off)"));
}

}  // namespace

absl::Status ClaimAttempt(const StoreLayout& store, const std::string& job_id, int attempt) {
  if (attempt <= 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(int current, ReadAttempt(store, job_id));
  if (current > attempt) return Superseded(store, job_id, attempt, current);
  if (current == attempt) return absl::OkStatus();
  RETURN_IF_ERROR(CreateDirectories(store.JobDir(job_id)));
  return WriteFileAtomic(AttemptPath(store, job_id), absl::StrCat(attempt, "\n"));
}

absl::Status CheckAttemptCurrent(const StoreLayout& store, const std::string& job_id, int attempt) {
  if (attempt <= 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(int current, ReadAttempt(store, job_id));
  return current > attempt ? Superseded(store, job_id, attempt, current) : absl::OkStatus();
}

}  // namespace retina
