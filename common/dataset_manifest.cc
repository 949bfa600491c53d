#include "common/dataset_manifest.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/read_scope.h"
#include "common/status_macros.h"

namespace retina {

nlohmann::ordered_json ShardInfoToJson(const ShardInfo& s) {
  return {{"file", s.file}, {"count", s.count}, {"bytes", s.bytes}, {"sha256", s.sha256}};
}

ShardInfo ShardInfoFromJson(const nlohmann::json& j) {
  return {j.at("file").get<std::string>(), j.at("count").get<int64_t>(), j.at("bytes").get<uint64_t>(),
          j.at("sha256").get<std::string>()};
}

std::string DatasetManifest::ToJson() const {
  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["name"] = name;
  j["labelled"] = labelled;
  j["height"] = height;
  j["width"] = width;
  j["count"] = count;
  j["mean"] = mean;
  j["std"] = std;
  j["shards"] = nlohmann::ordered_json::array();
  for (const ShardInfo& s : shards) j["shards"].push_back(ShardInfoToJson(s));
  j["source"] = source;
  return j.dump(2) + "\n";
}

absl::StatusOr<DatasetManifest> DatasetManifest::FromJson(const std::string& text, const std::string& where) {
  auto bad = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat(where, ": ", what));
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return bad(absl::StrCat("not valid JSON: ", e.what()));
  }
  DatasetManifest m;
  try {
    if (j.value("format", "") != kFormat) {
      return bad(absl::StrCat("format is '", j.value("format", ""), "', expected '", kFormat, "'"));
    }
    m.name = j.at("name").get<std::string>();
    m.labelled = j.at("labelled").get<bool>();
    m.height = j.at("height").get<int64_t>();
    m.width = j.at("width").get<int64_t>();
    m.count = j.at("count").get<int64_t>();
    m.mean = j.at("mean").get<double>();
    m.std = j.at("std").get<double>();
    m.source = j.value("source", "");
    for (const auto& s : j.at("shards")) m.shards.push_back(ShardInfoFromJson(s));
  } catch (const nlohmann::json::exception& e) {
    return bad(absl::StrCat("missing or mistyped field: ", e.what()));
  }
  int64_t total = 0;
  for (const ShardInfo& s : m.shards) {
    if (s.file.empty() || s.file.find('/') != std::string::npos || s.sha256.size() != 64 || s.count < 0) {
      return bad(absl::StrCat("bad shard entry '", s.file, "'"));
    }
    total += s.count;
  }
  if (total != m.count) return bad(absl::StrCat("count ", m.count, " != sum of shard counts ", total));
  if (m.height <= 0 || m.width <= 0) return bad("height and width must be positive");
  return m;
}

absl::StatusOr<DatasetManifest> DatasetManifest::Load(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / kFileName;
  RETURN_IF_ERROR(CheckRead(path.string(), path));  // a symlink out of the store is not read
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::NotFoundError(absl::StrCat(path.string(), ": no manifest (not a packed dataset, or packing "
                                              "did not finish; rerun retina-shard pack to resume)"));
    }
    return text.status();
  }
  return FromJson(*text, path.string());
}

absl::Status VerifyDatasetChecksums(const std::filesystem::path& dir, const DatasetManifest& m) {
  for (const ShardInfo& s : m.shards) {
    const std::filesystem::path path = dir / s.file;
    absl::StatusOr<FileDigest> d = Sha256File(path);
    if (!d.ok()) return absl::DataLossError(absl::StrCat(path.string(), ": unreadable: ", d.status().message()));
    if (d->size != s.bytes) {
      return absl::DataLossError(absl::StrCat(path.string(), ": size ", d->size, " != ", s.bytes, " in manifest"));
    }
    if (d->sha256 != s.sha256) return absl::DataLossError(absl::StrCat(path.string(), ": SHA-256 mismatch (damaged)"));
  }
  return absl::OkStatus();
}

}  // namespace retina
