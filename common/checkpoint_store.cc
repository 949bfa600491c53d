#include "common/checkpoint_store.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/read_scope.h"
#include "common/status_macros.h"

namespace retina {
namespace fs = std::filesystem;
namespace {

constexpr char kManifestName[] = "MANIFEST";
constexpr char kLatestName[] = "LATEST";
constexpr char kManifestHeader[] = "retina-checkpoint-manifest v1";
constexpr char kTempPrefix[] = ".tmp-";
constexpr char kTrashPrefix[] = ".trash-";

bool ValidFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name != kManifestName &&
         name.find('/') == std::string::npos && name.find('\n') == std::string::npos &&
         name.find(' ') == std::string::npos;
}

// Moves `dir` aside (atomically), then deletes it.
absl::Status RemoveDirectoryAtomically(const fs::path& dir) {
  const fs::path trash = dir.parent_path() / UniqueTempName(kTrashPrefix);
  RETURN_IF_ERROR(RenameDurable(dir, trash));
  std::error_code ec;
  fs::remove_all(trash, ec);
  if (ec) return absl::InternalError(absl::StrCat("remove ", trash.string(), ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

std::string CheckpointDirName(std::int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::string CheckpointManifest::Serialize() const {
  std::string body = absl::StrCat(kManifestHeader, "\n", "step ", step, "\n");
  if (score) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.17g", *score);
    absl::StrAppend(&body, "score ", buf, "\n");
  }
  for (const ManifestEntry& f : files) {
    absl::StrAppend(&body, "file ", f.sha256, " ", f.size, " ", f.name, "\n");
  }
  return absl::StrCat(body, "end ", Sha256Hex(body), "\n");
}

absl::StatusOr<CheckpointManifest> CheckpointManifest::Parse(absl::string_view text,
                                                             const std::string& source) {
  auto error = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat(source, ": ", what));
  };
  // The last line seals everything before it.
  if (!absl::ConsumeSuffix(&text, "\n")) return error("truncated (no final newline)");
  const size_t last_nl = text.rfind('\n');
  if (last_nl == absl::string_view::npos) return error("truncated (no end line)");
  absl::string_view end_line = text.substr(last_nl + 1);
  const absl::string_view body = text.substr(0, last_nl + 1);
  if (!absl::ConsumePrefix(&end_line, "end ")) return error("truncated (no end line)");
  if (end_line != Sha256Hex(body)) return error("MANIFEST checksum mismatch (damaged)");

  CheckpointManifest m;
  bool saw_step = false;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(body, '\n', absl::SkipEmpty())) {
    ++line_no;
    if (line_no == 1) {
      if (line != kManifestHeader) return error(absl::StrCat("unknown header '", line, "'"));
      continue;
    }
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
    if (parts[0] == "step" && parts.size() == 2 && absl::SimpleAtoi(parts[1], &m.step)) {
      saw_step = true;
    } else if (parts[0] == "score" && parts.size() == 2) {
      double v;
      if (!absl::SimpleAtod(parts[1], &v)) return error(absl::StrCat("bad score line ", line_no));
      m.score = v;
    } else if (parts[0] == "file" && parts.size() == 4) {
      ManifestEntry e;
      e.sha256 = std::string(parts[1]);
      e.name = std::string(parts[3]);
      if (!absl::SimpleAtoi(parts[2], &e.size) || e.sha256.size() != 64 || !ValidFileName(e.name)) {
        return error(absl::StrCat("bad file line ", line_no));
      }
      m.files.push_back(std::move(e));
    } else {
      return error(absl::StrCat("unparseable line ", line_no, ": '", line, "'"));
    }
  }
  if (!saw_step) return error("no step line");
  return m;
}

// ---------------------------------------------------------------------------

CheckpointWriter::CheckpointWriter(fs::path checkpoints_dir, fs::path temp_dir,
                                   std::int64_t step)
    : checkpoints_dir_(std::move(checkpoints_dir)), temp_dir_(std::move(temp_dir)), step_(step) {}

CheckpointWriter::CheckpointWriter(CheckpointWriter&& other) noexcept
    : checkpoints_dir_(std::move(other.checkpoints_dir_)),
      temp_dir_(std::move(other.temp_dir_)),
      step_(other.step_),
      score_(other.score_),
      files_(std::move(other.files_)),
      done_(other.done_) {
  other.done_ = true;
}

CheckpointWriter::~CheckpointWriter() {
  if (done_) return;
  std::error_code ec;
  fs::remove_all(temp_dir_, ec);
}

absl::StatusOr<CheckpointWriter> CheckpointWriter::Begin(const fs::path& checkpoints_dir,
                                                         std::int64_t step) {
  if (step < 0) return absl::InvalidArgumentError(absl::StrCat("checkpoint step ", step, " < 0"));
  RETURN_IF_ERROR(CreateDirectories(checkpoints_dir));
  const fs::path temp =
      checkpoints_dir / UniqueTempName(absl::StrCat(kTempPrefix, CheckpointDirName(step), "."));
  if (::mkdir(temp.c_str(), 0755) != 0) return ErrnoStatus(errno, "mkdir", temp);
  return CheckpointWriter(checkpoints_dir, temp, step);
}

absl::Status CheckpointWriter::WriteFile(const std::string& name, absl::string_view contents) {
  if (done_) return absl::FailedPreconditionError("checkpoint writer already committed");
  if (!ValidFileName(name)) return absl::InvalidArgumentError(absl::StrCat("bad file name '", name, "'"));
  RETURN_IF_ERROR(WriteFileDurable(temp_dir_ / name, contents));
  files_.push_back(name);
  return absl::OkStatus();
}

absl::Status CheckpointWriter::AddFile(const std::string& name) {
  if (done_) return absl::FailedPreconditionError("checkpoint writer already committed");
  if (!ValidFileName(name)) return absl::InvalidArgumentError(absl::StrCat("bad file name '", name, "'"));
  RETURN_IF_ERROR(FsyncPath(temp_dir_ / name));
  files_.push_back(name);
  return absl::OkStatus();
}

absl::StatusOr<CheckpointInfo> CheckpointWriter::Commit() {
  if (done_) return absl::FailedPreconditionError("checkpoint writer already committed");
  CheckpointManifest manifest;
  manifest.step = step_;
  manifest.score = score_;
  std::sort(files_.begin(), files_.end());
  files_.erase(std::unique(files_.begin(), files_.end()), files_.end());
  for (const std::string& name : files_) {
    ASSIGN_OR_RETURN(FileDigest digest, Sha256File(temp_dir_ / name));
    manifest.files.push_back({name, digest.size, digest.sha256});
  }
  RETURN_IF_ERROR(WriteFileDurable(temp_dir_ / kManifestName, manifest.Serialize()));
  RETURN_IF_ERROR(FsyncPath(temp_dir_));

  const std::string name = CheckpointDirName(step_);
  const fs::path final_dir = checkpoints_dir_ / name;
  std::error_code ec;
  if (fs::exists(final_dir, ec)) RETURN_IF_ERROR(RemoveDirectoryAtomically(final_dir));
  RETURN_IF_ERROR(RenameDurable(temp_dir_, final_dir));
  done_ = true;
  RETURN_IF_ERROR(WriteFileAtomic(checkpoints_dir_ / kLatestName, name + "\n"));
  return CheckpointInfo{name, final_dir, step_, score_};
}

// ---------------------------------------------------------------------------

CheckpointStore::CheckpointStore(fs::path checkpoints_dir) : dir_(std::move(checkpoints_dir)) {}

std::vector<CheckpointInfo> CheckpointStore::List() const {
  std::vector<CheckpointInfo> out;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step-", 0) != 0 || !entry.is_directory(ec)) continue;
    absl::StatusOr<std::string> text = ReadFile(entry.path() / kManifestName);
    if (!text.ok()) continue;
    absl::StatusOr<CheckpointManifest> m = CheckpointManifest::Parse(*text, name);
    if (!m.ok()) continue;
    out.push_back({name, entry.path(), m->step, m->score});
  }
  std::sort(out.begin(), out.end(),
            [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.step < b.step; });
  return out;
}

absl::StatusOr<CheckpointInfo> CheckpointStore::Verify(const fs::path& dir) {
  const std::string where = dir.string();
  RETURN_IF_ERROR(CheckRead(where, dir / kManifestName));  // a symlinked step out of the store is not read
  ASSIGN_OR_RETURN(std::string text, ReadFile(dir / kManifestName), where);
  ASSIGN_OR_RETURN(CheckpointManifest m,
                   CheckpointManifest::Parse(text, (dir / kManifestName).string()));
  for (const ManifestEntry& f : m.files) {
    const fs::path path = dir / f.name;
    absl::StatusOr<FileDigest> digest = Sha256File(path);
    if (!digest.ok()) {
      return absl::DataLossError(absl::StrCat(path.string(), ": listed in MANIFEST but unreadable: ",
                                              digest.status().message()));
    }
    if (digest->size != f.size) {
      return absl::DataLossError(absl::StrCat(path.string(), ": size ", digest->size,
                                              " != ", f.size, " in MANIFEST"));
    }
    if (digest->sha256 != f.sha256) {
      return absl::DataLossError(absl::StrCat(path.string(), ": SHA-256 mismatch (damaged)"));
    }
  }
  return CheckpointInfo{dir.filename().string(), dir, m.step, m.score};
}

absl::StatusOr<std::string> CheckpointStore::ReadLatestPointer() const {
  ASSIGN_OR_RETURN(std::string text, ReadFile(dir_ / kLatestName));
  absl::string_view name = absl::StripAsciiWhitespace(text);
  if (name.empty() || name.find('/') != absl::string_view::npos) {
    return absl::DataLossError(absl::StrCat((dir_ / kLatestName).string(), ": malformed"));
  }
  return std::string(name);
}

absl::StatusOr<CheckpointInfo> CheckpointStore::Latest() const {
  absl::StatusOr<std::string> pointer = ReadLatestPointer();
  if (pointer.ok()) {
    absl::StatusOr<CheckpointInfo> info = Verify(dir_ / *pointer);
    if (info.ok()) return info;
    RETINA_LOG(Warning) << "LATEST -> " << *pointer << " does not verify ("
                        << info.status().message() << "); falling back";
  }
  std::vector<CheckpointInfo> all = List();
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    absl::StatusOr<CheckpointInfo> info = Verify(it->dir);
    if (info.ok()) return info;
    RETINA_LOG(Warning) << "skipping damaged checkpoint " << it->dir.string() << ": "
                        << info.status().message();
  }
  return absl::NotFoundError(absl::StrCat("no valid checkpoint in ", dir_.string()));
}

absl::StatusOr<std::vector<std::string>> CheckpointStore::ApplyRetention(
    int keep_last, bool keep_best, const std::set<std::int64_t>& keep_steps) const {
  if (keep_last < 1) return absl::InvalidArgumentError("retention keep_last must be >= 1");
  std::vector<CheckpointInfo> all = List();
  std::vector<bool> keep(all.size(), false);
  for (size_t i = all.size() > static_cast<size_t>(keep_last) ? all.size() - keep_last : 0;
       i < all.size(); ++i) {
    keep[i] = true;
  }
  if (keep_best) {
    int best = -1;
    for (size_t i = 0; i < all.size(); ++i) {
      if (all[i].score && (best < 0 || *all[i].score > *all[best].score)) best = static_cast<int>(i);
    }
    if (best >= 0) keep[best] = true;
  }
  absl::StatusOr<std::string> latest = ReadLatestPointer();
  std::vector<std::string> removed;
  for (size_t i = 0; i < all.size(); ++i) {
    if (keep[i] || keep_steps.count(all[i].step) || (latest.ok() && *latest == all[i].name)) continue;
    RETURN_IF_ERROR(RemoveDirectoryAtomically(all[i].dir));
    removed.push_back(all[i].name);
  }
  return removed;
}

absl::Status CheckpointStore::CleanTemporaries() const {
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kTempPrefix, 0) == 0 || name.rfind(kTrashPrefix, 0) == 0 ||
        name.rfind(".LATEST.tmp.", 0) == 0) {
      fs::remove_all(entry.path(), ec);
      if (ec) return absl::InternalError(absl::StrCat("remove ", entry.path().string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace retina
