// manifest.json of a sharded dataset in the store (datasets/<name>/):
//
// {
//   "format": "retina-shards/1",
//   "name": "cem500k", "labelled": false, "height": 224, "width": 224,
//   "count": 500000, "mean": 0.5729, "std": 0.1274,      (of v/255 over all images)
//   "shards": [{"file": "shard-00000.h5", "count": 4096, "bytes": 205520896,
//               "sha256": "..."}, ...],
//   "source": "/data/cem500k/*.tiff",
//   "classes": 2,                                         (labelled: incl. background; 0 unknown)
//   "versions": [{"version": 1, "shards": 3, "count": ..., "mean": ..., "std": ...,
//                 "digest": "...", "added": "retina-shard import ..."}, ...]
// }
//
// Versions (retina-shard import --add): a dataset grows by appending shards,
// never by changing one. Version k is the first versions[k-1].shards shards,
// with that version's count and normalisation; the top-level fields describe
// the latest. A version's digest is the SHA-256 of its shard entries (file,
// count, bytes, sha256), so a job that records (version, digest) names its
// exact training data. A manifest without "versions" has one version, all of
// its shards. A dataset is referenced at a version as NAME@k (or PATH@k);
// without @k, the latest.
//
// Written last and atomically by the packer: a dataset without a valid
// manifest does not exist. Each shard is an HDF5 file with contiguous uint8
// datasets images [N, H, W] (and masks [N, H, W] when labelled) and names [N].
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace retina {

struct ShardInfo {
  std::string file;
  int64_t count = 0;
  uint64_t bytes = 0;
  std::string sha256;
};

// A shard entry as JSON ({"file", "count", "bytes", "sha256"}), shared by the
// manifest and by retina-shard pack's resume state. FromJson throws
// nlohmann::json::exception on a missing or mistyped field.
nlohmann::ordered_json ShardInfoToJson(const ShardInfo& shard);
ShardInfo ShardInfoFromJson(const nlohmann::json& j);

struct DatasetManifest {
  static constexpr char kFormat[] = "retina-shards/1";
  static constexpr char kFileName[] = "manifest.json";

  std::string name;
  bool labelled = false;
  int64_t height = 0;
  int64_t width = 0;
  int64_t count = 0;
  double mean = 0;
  double std = 0;
  std::vector<ShardInfo> shards;
  std::string source;
  int classes = 0;  // labelled datasets: classes incl. background, when known

  struct Version {
    int version = 1;
    int64_t shards = 0;  // the first `shards` shards
    int64_t count = 0;
    double mean = 0, std = 0;
    std::string digest;  // VersionDigest
    std::string added;   // what added it (the command's input)
  };
  std::vector<Version> versions;  // empty: one version, all shards

  int latest_version() const { return versions.empty() ? 1 : versions.back().version; }
  // The SHA-256 of the first `shards` shard entries.
  std::string VersionDigest(int64_t shards) const;
  // The manifest as of version `version` (0 = latest): its shards, count and
  // normalisation. NOT_FOUND naming the versions there are.
  absl::StatusOr<DatasetManifest> AtVersion(int version) const;

  std::string ToJson() const;
  // Validates structure and totals; `source_name` names the file in errors.
  static absl::StatusOr<DatasetManifest> FromJson(const std::string& text, const std::string& source_name);
  static absl::StatusOr<DatasetManifest> Load(const std::filesystem::path& dataset_dir);
};

// "NAME@k" / "PATH@k" -> (NAME or PATH, k); without "@k", k = 0 (latest).
// INVALID_ARGUMENT (naming `key`) for a version that is not a positive number.
absl::StatusOr<std::pair<std::string, int>> SplitDatasetVersion(const std::string& ref, const std::string& key);

// Checks every shard's size and SHA-256 against the manifest. DATA_LOSS names
// the shard and the failing check.
absl::Status VerifyDatasetChecksums(const std::filesystem::path& dataset_dir, const DatasetManifest& manifest);

}  // namespace retina
