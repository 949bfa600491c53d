#include "common/dataset_manifest.h"

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
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
  if (classes > 0) j["classes"] = classes;
  if (!versions.empty()) {
    j["versions"] = nlohmann::ordered_json::array();
    for (const Version& v : versions) {
      j["versions"].push_back({{"version", v.version}, {"shards", v.shards}, {"count", v.count}, {"mean", v.mean},
                               {"std", v.std}, {"digest", v.digest}, {"added", v.added}});
    }
  }
  return j.dump(2) + "\n";
}

std::string DatasetManifest::VersionDigest(int64_t n) const {
  std::string entries;
  for (int64_t i = 0; i < n && i < static_cast<int64_t>(shards.size()); ++i) {
    entries += ShardInfoToJson(shards[i]).dump() + "\n";
  }
  return Sha256Hex(entries);
}

absl::StatusOr<DatasetManifest> DatasetManifest::AtVersion(int version) const {
  if (version == 0 || (versions.empty() && version == 1)) return *this;
  for (const Version& v : versions) {
    if (v.version != version) continue;
    DatasetManifest m = *this;
    m.shards.resize(static_cast<size_t>(v.shards));
    m.count = v.count;
    m.mean = v.mean;
    m.std = v.std;
    m.versions.resize(static_cast<size_t>(&v - versions.data()) + 1);
    return m;
  }
  return absl::NotFoundError(absl::StrCat("dataset '", name, "' has no version ", version, " (versions 1..",
                                          latest_version(), ")"));
}

absl::StatusOr<std::pair<std::string, int>> SplitDatasetVersion(const std::string& ref, const std::string& key) {
  const size_t at = ref.rfind('@');
  if (at == std::string::npos || ref.find('/', at) != std::string::npos) return std::make_pair(ref, 0);
  int v = 0;
  if (!absl::SimpleAtoi(ref.substr(at + 1), &v) || v < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, ": '", ref, "': a version is @k with k a positive number (NAME@2)"));
  }
  return std::make_pair(ref.substr(0, at), v);
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
    m.classes = j.value("classes", 0);
    if (j.contains("versions")) {
      for (const auto& v : j.at("versions")) {
        m.versions.push_back({v.at("version").get<int>(), v.at("shards").get<int64_t>(), v.at("count").get<int64_t>(),
                              v.at("mean").get<double>(), v.at("std").get<double>(), v.at("digest").get<std::string>(),
                              v.value("added", "")});
      }
    }
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
  int64_t prev_shards = 0;
  for (size_t i = 0; i < m.versions.size(); ++i) {
    const Version& v = m.versions[i];
    int64_t n = 0;
    for (int64_t k = 0; k < v.shards && k < static_cast<int64_t>(m.shards.size()); ++k) n += m.shards[k].count;
    if (v.version != static_cast<int>(i) + 1 || v.shards <= prev_shards ||
        v.shards > static_cast<int64_t>(m.shards.size()) || n != v.count) {
      return bad(absl::StrCat("versions[", i, "]: version ", v.version, " with ", v.shards, " shard(s) and count ",
                              v.count, " does not fit the shards (versions count 1, 2, ... and only add shards)"));
    }
    if (v.digest != m.VersionDigest(v.shards)) {
      return bad(absl::StrCat("versions[", i, "]: digest does not match its shard entries (version ", v.version,
                              " was altered)"));
    }
    prev_shards = v.shards;
  }
  if (!m.versions.empty() && m.versions.back().shards != static_cast<int64_t>(m.shards.size())) {
    return bad("the last version does not hold every shard");
  }
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
