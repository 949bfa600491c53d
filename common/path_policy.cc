#include "common/path_policy.h"

#include "common/model_ref.h"

#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dataset_manifest.h"
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

// A weights spec that names a regular file (not a LATEST file) must be a
// zip archive, as torch.save .pt files and .npz files are: an image or any
// other file is refused at submit, naming the field, instead of failing in
// every rank that tries to load it.
absl::Status CheckWeightsFile(const std::string& field, const fs::path& path) {
  std::error_code ec;
  if (path.filename() == "LATEST" || !fs::is_regular_file(path, ec)) return absl::OkStatus();
  char magic[4] = {};
  std::ifstream in(path, std::ios::binary);
  in.read(magic, sizeof magic);
  const bool read = in.gcount() == sizeof magic;
  if (read && std::memcmp(magic, "PK\x03\x04", 4) == 0) return absl::OkStatus();
  const bool tiff = read && (std::memcmp(magic, "II*\0", 4) == 0 || std::memcmp(magic, "MM\0*", 4) == 0);
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": ", path.string(), " is not a weights file (",
      tiff ? "a TIFF image" : "not a zip archive",
      "): name a checkpoint (a job, its checkpoints/ or LATEST, a step directory), a torch.save .pt or an "
      "ImageNet .npz"));
}

}  // namespace

PathPolicy::PathPolicy(fs::path store, std::vector<fs::path> allowed_roots, std::vector<fs::path> output_roots)
    : store_(std::move(store)) {
  roots_.push_back(Canonical(store_));
  for (const fs::path& r : allowed_roots) roots_.push_back(Canonical(r));
  for (const fs::path& r : output_roots) output_roots_.push_back(Canonical(r));
}

fs::path PathPolicy::DatasetPath(const std::string& value) const {
  if (value.find('/') == std::string::npos) return store_ / "datasets" / value;
  return WeightsPath(value);
}

fs::path PathPolicy::WeightsPath(const std::string& value) const {
  if (IsModelRef(value)) return value;  // resolved where it is read (common/model_ref.h)
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

absl::Status PathPolicy::CheckConfig(const JobConfig& c, const std::string& job_id) const {
  if (!c.data.dataset.empty()) {
    ASSIGN_OR_RETURN(const auto ref, SplitDatasetVersion(c.data.dataset, "data.dataset"));  // NAME@k: NAME's folder
    RETURN_IF_ERROR(Check("data.dataset", DatasetPath(ref.first)));
  }
  if (!c.data.val_dataset.empty()) RETURN_IF_ERROR(Check("data.val_dataset", DatasetPath(c.data.val_dataset)));
  if (!c.data.test_dataset.empty()) RETURN_IF_ERROR(Check("data.test_dataset", DatasetPath(c.data.test_dataset)));
  auto weights = [&](const std::string& field, const std::string& value) -> absl::Status {
    if (IsModelRef(value)) {  // a registered model: it must exist, under the store
      ASSIGN_OR_RETURN(const fs::path dir, ResolveModelRef(store_, value, field));
      return Check(field, dir);
    }
    RETURN_IF_ERROR(Check(field, WeightsPath(value)));
    return CheckWeightsFile(field, WeightsPath(value));
  };
  if ((c.kind == JobKind::kFinetune || c.kind == JobKind::kLoop) && c.finetune.init != "random") {
    RETURN_IF_ERROR(weights("finetune.init", c.finetune.init));
  }
  if (c.kind == JobKind::kLoop) {
    RETURN_IF_ERROR(Check("loop.pool", WeightsPath(c.loop.pool)));
    RETURN_IF_ERROR(Check("loop.pool_labels", WeightsPath(c.loop.pool_labels)));
  }
  if (c.kind == JobKind::kEvaluate && !c.evaluate.checkpoint.empty()) {
    RETURN_IF_ERROR(weights("evaluate.checkpoint", c.evaluate.checkpoint));
  }
  if (c.kind == JobKind::kServe) {
    for (size_t i = 0; i < c.serve.models.size(); ++i) {
      const size_t eq = c.serve.models[i].find('=');
      if (eq == std::string::npos) continue;  // the config's own check names it
      RETURN_IF_ERROR(weights(absl::StrCat("serve.models[", i, "]"), c.serve.models[i].substr(eq + 1)));
    }
  }
  if (c.kind == JobKind::kInfer) {
    if (!c.infer.weights.empty()) RETURN_IF_ERROR(weights("infer.weights", c.infer.weights));
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
    if (!c.infer.output.empty()) RETURN_IF_ERROR(CheckOutput("infer.output", WeightsPath(c.infer.output), job_id));
  }
  return absl::OkStatus();
}

absl::Status PathPolicy::CheckOutput(const std::string& field, const fs::path& path, const std::string& job_id) const {
  const fs::path resolved = Canonical(path);
  const fs::path& store = roots_.front();
  const fs::path jobs = store / "jobs", datasets = store / "datasets";
  const fs::path own = job_id.empty() ? fs::path() : jobs / job_id;
  const auto deny = [&](const std::string& why) {
    std::vector<std::string> names;
    for (const fs::path& r : output_roots_) names.push_back(r.string());
    return absl::PermissionDeniedError(absl::StrCat(
        field, ": ", path.string(), (resolved != path ? absl::StrCat(" (resolves to ", resolved.string(), ")") : ""),
        " ", why, "; service jobs write only inside their own job directory (leave it empty: jobs/<id>/predictions)",
        names.empty() ? " (this service has no --output-root)" : absl::StrCat(" or under an --output-root (", absl::StrJoin(names, ", "), ")")));
  };
  if (resolved == store || resolved == jobs || resolved == datasets) return deny("is the store's top level");
  if (Under(resolved, datasets)) return deny("is inside a dataset");
  if (Under(resolved, jobs)) {
    if (own.empty() || !Under(resolved, own)) return deny("is inside another job's directory");
    if (resolved == own || Under(resolved, own / "checkpoints")) return deny("is this job's directory or its checkpoints");
    return absl::OkStatus();
  }
  for (const fs::path& r : output_roots_) {
    if (Under(resolved, r)) return absl::OkStatus();
  }
  return deny("is not inside this job's directory or an output root");
}

}  // namespace retina
