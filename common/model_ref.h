// Registered models in the shared store (docs/models.md). The coordinator's
// registry (services/coordinator/model_registry.h) is the only writer; every
// weights field reads them through a model reference:
//
//   <store>/models/<name>/v<N>/       a checkpoint directory (model.pt,
//                                      optimizer.pt, state.json, MANIFEST):
//                                      hard links of the job's checkpoint files,
//                                      so a job's retention never removes them
//   <store>/models/<name>/INDEX.json  {"name", "versions": [1, 2], "tags": {"prod": 2}},
//                                      replaced atomically after each change
//
// A reference is "model:NAME" (the newest version), "model:NAME:vN" or
// "model:NAME@TAG"; the registry's API also takes it without "model:".
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace retina {

inline constexpr absl::string_view kModelRefPrefix = "model:";

struct ModelRef {
  std::string name;
  int version = 0;  // 0: by tag, or the newest
  std::string tag;
};

// Whether a weights spec names a registered model ("model:...").
bool IsModelRef(absl::string_view spec);
// OK for a model name or tag: 1-64 characters of [a-z0-9._-], starting with
// a letter or digit. `what` names the field.
absl::Status ValidateModelName(absl::string_view name, absl::string_view what);
// NAME, NAME:vN or NAME@TAG, with or without "model:"; INVALID_ARGUMENT naming `what`.
absl::StatusOr<ModelRef> ParseModelRef(absl::string_view ref, absl::string_view what);
std::string ModelId(const std::string& name, int version);  // "NAME:vN"

struct ModelIndex {
  std::string name;
  std::vector<int> versions;         // ascending
  std::map<std::string, int> tags;   // tag -> version
};
std::string EncodeModelIndex(const ModelIndex& index);
// DATA_LOSS naming `where` for a damaged file.
absl::StatusOr<ModelIndex> DecodeModelIndex(absl::string_view text, const std::string& where);

std::filesystem::path ModelsDir(const std::filesystem::path& store);
std::filesystem::path ModelDir(const std::filesystem::path& store, const std::string& name);
std::filesystem::path ModelVersionDir(const std::filesystem::path& store, const std::string& name, int version);
std::filesystem::path ModelIndexPath(const std::filesystem::path& store, const std::string& name);

// The checkpoint directory `ref` names now, from the name's INDEX.json.
// NOT_FOUND naming `field` and the reference (and what the name has) when
// there is no such model, version or tag.
absl::StatusOr<std::filesystem::path> ResolveModelRef(const std::filesystem::path& store, absl::string_view ref,
                                                      absl::string_view field);

}  // namespace retina
