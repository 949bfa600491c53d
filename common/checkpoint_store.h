// Checkpoints in the shared store: atomic directories with a MANIFEST, an
// atomic LATEST pointer, verification with fall-back, and retention.
//
// Layout under a job's checkpoints directory:
//   step-00001000/{model.pt, optimizer.pt, state.json, MANIFEST}
//   LATEST            -> one line: "step-00001000"
//   .tmp-step-...     an uncommitted checkpoint (ignored; removed by CleanTemporaries)
//
// Commit protocol (CheckpointWriter::Commit):
//   1. every file is written into a private temporary directory and fsynced;
//   2. MANIFEST (size + SHA-256 of every file, the step, an optional score,
//      and a final line with the SHA-256 of the MANIFEST's own text) is written
//      last and fsynced, then the temporary directory itself;
//   3. the directory is renamed to step-NNNNNNNN and the parent fsynced;
//   4. LATEST is replaced atomically (WriteFileAtomic).
// A directory without a valid MANIFEST is not a checkpoint. A process killed
// at any point leaves LATEST at the previous, complete checkpoint.
//
// Single writer: only one process (rank 0) writes a given checkpoints
// directory. Readers may run concurrently with the writer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace retina {

struct ManifestEntry {
  std::string name;
  std::uint64_t size = 0;
  std::string sha256;
};

struct CheckpointManifest {
  std::int64_t step = 0;
  std::optional<double> score;  // higher is better (e.g. validation IoU)
  std::vector<ManifestEntry> files;

  std::string Serialize() const;
  // `source` names the file in error messages.
  static absl::StatusOr<CheckpointManifest> Parse(absl::string_view text,
                                                  const std::string& source);
};

struct CheckpointInfo {
  std::string name;  // "step-00001000"
  std::filesystem::path dir;
  std::int64_t step = 0;
  std::optional<double> score;
};

// "step-00001000" for 1000.
std::string CheckpointDirName(std::int64_t step);

// Builds one checkpoint. Not copyable; movable. Destroying an uncommitted
// writer removes its temporary directory.
class CheckpointWriter {
 public:
  // Starts checkpoint `step` under `checkpoints_dir` (created if missing).
  static absl::StatusOr<CheckpointWriter> Begin(const std::filesystem::path& checkpoints_dir,
                                                std::int64_t step);
  ~CheckpointWriter();
  CheckpointWriter(CheckpointWriter&& other) noexcept;
  CheckpointWriter& operator=(CheckpointWriter&&) = delete;
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Where files may be written directly (e.g. by torch::save); register each
  // with AddFile afterwards.
  const std::filesystem::path& temp_dir() const { return temp_dir_; }

  // Writes `name` with `contents` into the checkpoint (fsynced).
  absl::Status WriteFile(const std::string& name, absl::string_view contents);
  // Registers a file already written into temp_dir(); fsyncs it.
  absl::Status AddFile(const std::string& name);
  void SetScore(double score) { score_ = score; }

  // Seals and publishes the checkpoint (see the protocol above) and points
  // LATEST at it. A checkpoint of the same step that already exists is
  // replaced. The writer is spent afterwards.
  absl::StatusOr<CheckpointInfo> Commit();

 private:
  CheckpointWriter(std::filesystem::path checkpoints_dir, std::filesystem::path temp_dir,
                   std::int64_t step);
  std::filesystem::path checkpoints_dir_;
  std::filesystem::path temp_dir_;
  std::int64_t step_;
  std::optional<double> score_;
  std::vector<std::string> files_;
  bool done_ = false;
};

// Reads, verifies and prunes the checkpoints of one directory.
class CheckpointStore {
 public:
  explicit CheckpointStore(std::filesystem::path checkpoints_dir);

  // Committed checkpoints (those with a parseable MANIFEST), by ascending step.
  // Does not verify file checksums.
  std::vector<CheckpointInfo> List() const;

  // Verifies a checkpoint directory: MANIFEST self-checksum, then every
  // file's size and SHA-256. DATA_LOSS names the file and the failing check.
  static absl::StatusOr<CheckpointInfo> Verify(const std::filesystem::path& dir);

  // The checkpoint to resume from: LATEST's target if it verifies, else the
  // newest checkpoint that verifies (logging a warning naming what was
  // skipped). NOT_FOUND when there is none.
  absl::StatusOr<CheckpointInfo> Latest() const;

  // Reads LATEST without verifying; NOT_FOUND when absent.
  absl::StatusOr<std::string> ReadLatestPointer() const;

  // Deletes every committed checkpoint except: the newest `keep_last`, the
  // best-scored one when `keep_best`, those at `keep_steps` (finetune.eval_at)
  // and LATEST's target. Deletion renames a
  // directory aside first, so a partly deleted one never looks committed.
  // Returns the names removed.
  absl::StatusOr<std::vector<std::string>> ApplyRetention(int keep_last, bool keep_best,
                                                          const std::set<std::int64_t>& keep_steps = {}) const;

  // Removes temporaries left by killed writers. Call only when no writer runs.
  absl::Status CleanTemporaries() const;

  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

}  // namespace retina
