#include "common/path_policy.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace retina {
namespace fs = std::filesystem;
namespace {

fs::path Canonical(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(fs::absolute(p, ec), ec);
  return ec ? fs::absolute(p, ec).lexically_normal() : c;
}

bool Under(const fs::path& path, const fs::path& root) {
  auto r = root.begin(), p = path.begin();
  for (; r != root.end(); ++r, ++p) {
    if (r->empty() && std::next(r) == root.end()) return true;  // trailing separator
    if (p == path.end() || *p != *r) return false;
  }
  return true;
}

}  // namespace

PathPolicy::PathPolicy(fs::path store, std::vector<fs::path> allowed_roots) : store_(std::move(store)) {
  roots_.push_back(Canonical(store_));
  for (const fs::path& r : allowed_roots) roots_.push_back(Canonical(r));
}

fs::path PathPolicy::DatasetPath(const std::string& value) const {
  if (value.find('/') == std::string::npos) return store_ / "datasets" / value;
  return WeightsPath(value);
}

fs::path PathPolicy::WeightsPath(const std::string& value) const {
  const fs::path p = value;
  return p.is_absolute() ? p : store_ / p;
}

absl::Status PathPolicy::Check(const std::string& field, const fs::path& path) const {
  const fs::path resolved = Canonical(path);
  for (const fs::path& root : roots_) {
    if (Under(resolved, root)) return absl::OkStatus();
  }
  std::vector<std::string> names;
  for (const fs::path& r : roots_) names.push_back(r.string());
  return absl::PermissionDeniedError(absl::StrCat(
      field, ": ", path.string(), (resolved != path ? absl::StrCat(" (resolves to ", resolved.string(), ")") : ""),
      " is outside the store and the allowed roots (", absl::StrJoin(names, ", "),
      "): service jobs read only there; put the data in the store or ask the operator for --allowed-root"));
}

absl::Status PathPolicy::CheckConfig(const JobConfig& c) const {
  if (!c.data.dataset.empty()) RETURN_IF_ERROR(Check("data.dataset", DatasetPath(c.data.dataset)));
  if (!c.data.val_dataset.empty()) RETURN_IF_ERROR(Check("data.val_dataset", DatasetPath(c.data.val_dataset)));
  if (!c.data.test_dataset.empty()) RETURN_IF_ERROR(Check("data.test_dataset", DatasetPath(c.data.test_dataset)));
  if (c.kind == JobKind::kFinetune && c.finetune.init != "random") {
    RETURN_IF_ERROR(Check("finetune.init", WeightsPath(c.finetune.init)));
  }
  if (c.kind == JobKind::kEvaluate && !c.evaluate.checkpoint.empty()) {
    RETURN_IF_ERROR(Check("evaluate.checkpoint", WeightsPath(c.evaluate.checkpoint)));
  }
  if (c.kind == JobKind::kInfer) {
    if (!c.infer.weights.empty()) RETURN_IF_ERROR(Check("infer.weights", WeightsPath(c.infer.weights)));
    for (size_t i = 0; i < c.infer.inputs.size(); ++i) {
      // A glob is checked by the directory before its first wildcard (and
      // every match again when the rank expands it).
      std::string input = c.infer.inputs[i];
      if (const size_t wild = input.find_first_of("*?["); wild != std::string::npos) {
        const size_t slash = input.rfind('/', wild);
        input = slash == std::string::npos ? "." : input.substr(0, slash + 1);
      }
      RETURN_IF_ERROR(Check(absl::StrCat("infer.inputs[", i, "]"), WeightsPath(input)));
    }
    if (!c.infer.output.empty()) RETURN_IF_ERROR(CheckWritable("infer.output", WeightsPath(c.infer.output)));
  }
  return absl::OkStatus();
}

absl::Status PathPolicy::CheckWritable(const std::string& field, const fs::path& path) const {
  const fs::path resolved = Canonical(path);
  if (Under(resolved, roots_.front())) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(field, ": ", path.string(), " is outside the store (",
                                                  roots_.front().string(), "): service jobs write only there"));
}

}  // namespace retina
