#include "common/model_ref.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace retina {
namespace fs = std::filesystem;

bool IsModelRef(absl::string_view spec) { return absl::StartsWith(spec, kModelRefPrefix); }

absl::Status ValidateModelName(absl::string_view name, absl::string_view what) {
  const auto ok_char = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'; };
  if (name.empty() || name.size() > 64 || !std::all_of(name.begin(), name.end(), ok_char) || name[0] == '.' ||
      name[0] == '_' || name[0] == '-') {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", name.substr(0, 80),
                                                   "' is not a model name (1-64 characters of a-z 0-9 . _ -, "
                                                   "starting with a letter or digit)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelRef> ParseModelRef(absl::string_view ref, absl::string_view what) {
  absl::string_view rest = ref;
  absl::ConsumePrefix(&rest, kModelRefPrefix);
  ModelRef out;
  if (const size_t at = rest.find('@'); at != absl::string_view::npos) {
    out.name = std::string(rest.substr(0, at));
    out.tag = std::string(rest.substr(at + 1));
    RETURN_IF_ERROR(ValidateModelName(out.tag, absl::StrCat(what, " (the tag of '", ref.substr(0, 80), "')")));
  } else if (const size_t colon = rest.find(':'); colon != absl::string_view::npos) {
    out.name = std::string(rest.substr(0, colon));
    absl::string_view v = rest.substr(colon + 1);
    if (!absl::ConsumePrefix(&v, "v") || !absl::SimpleAtoi(v, &out.version) || out.version < 1) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": '", ref.substr(0, 80),
                                                     "': a version is written NAME:vN with N >= 1"));
    }
  } else {
    out.name = std::string(rest);
  }
  RETURN_IF_ERROR(ValidateModelName(out.name, absl::StrCat(what, " (the name of '", ref.substr(0, 80), "')")));
  return out;
}

std::string ModelId(const std::string& name, int version) { return absl::StrCat(name, ":v", version); }

std::string EncodeModelIndex(const ModelIndex& index) {
  nlohmann::json j = {{"v", 1}, {"name", index.name}, {"versions", index.versions}, {"tags", index.tags}};
  return j.dump(2) + "\n";
}

absl::StatusOr<ModelIndex> DecodeModelIndex(absl::string_view text, const std::string& where) {
  ModelIndex out;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    out.name = j.at("name").get<std::string>();
    out.versions = j.at("versions").get<std::vector<int>>();
    out.tags = j.at("tags").get<std::map<std::string, int>>();
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(where, ": not a model index: ", e.what()));
  }
  std::sort(out.versions.begin(), out.versions.end());
  return out;
}

fs::path ModelsDir(const fs::path& store) { return store / "models"; }
fs::path ModelDir(const fs::path& store, const std::string& name) { return ModelsDir(store) / name; }
fs::path ModelVersionDir(const fs::path& store, const std::string& name, int version) {
  return ModelDir(store, name) / absl::StrCat("v", version);
}
fs::path ModelIndexPath(const fs::path& store, const std::string& name) { return ModelDir(store, name) / "INDEX.json"; }

absl::StatusOr<fs::path> ResolveModelRef(const fs::path& store, absl::string_view ref, absl::string_view field) {
  ASSIGN_OR_RETURN(ModelRef r, ParseModelRef(ref, field));
  const fs::path index_path = ModelIndexPath(store, r.name);
  absl::StatusOr<std::string> text = ReadFile(index_path);
  if (!text.ok()) {
    return absl::NotFoundError(absl::StrCat(field, ": ", ref, ": no registered model '", r.name, "' (",
                                            index_path.string(), " is absent; `retina models list` shows the models)"));
  }
  ASSIGN_OR_RETURN(ModelIndex index, DecodeModelIndex(*text, index_path.string()));
  int version = r.version;
  if (!r.tag.empty()) {
    auto it = index.tags.find(r.tag);
    if (it == index.tags.end()) {
      std::vector<std::string> tags;
      for (const auto& [t, v] : index.tags) tags.push_back(absl::StrCat(t, "->v", v));
      return absl::NotFoundError(absl::StrCat(field, ": ", ref, ": model '", r.name, "' has no tag '", r.tag,
                                              "' (tags: ", tags.empty() ? "none" : absl::StrJoin(tags, ", "), ")"));
    }
    version = it->second;
  } else if (version == 0) {
    if (index.versions.empty()) {
      return absl::NotFoundError(absl::StrCat(field, ": ", ref, ": model '", r.name, "' has no versions left"));
    }
    version = index.versions.back();
  }
  if (std::find(index.versions.begin(), index.versions.end(), version) == index.versions.end()) {
    return absl::NotFoundError(absl::StrCat(field, ": ", ref, ": model '", r.name, "' has no version v", version,
                                            " (versions: ", absl::StrJoin(index.versions, ", "), ")"));
  }
  return ModelVersionDir(store, r.name, version);
}

}  // namespace retina
