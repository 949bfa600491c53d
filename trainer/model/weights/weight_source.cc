#include "trainer/model/weights/weight_source.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checkpoint_store.h"
#include "common/model_ref.h"
#include "trainer/model/weights/bioimageio.h"
#include "common/read_scope.h"
#include "common/status_macros.h"
#include "trainer/model/weights/vit_npz_import.h"

namespace retina::trainer {
namespace fs = std::filesystem;

namespace {

absl::StatusOr<WeightSource> Resolve(const std::string& spec, const fs::path& store, const std::string& field) {
  if (spec.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": no weights named"));
  fs::path p = spec;
  std::error_code ec;
  if (IsModelRef(spec)) {  // a registered model: its version's checkpoint directory
    ASSIGN_OR_RETURN(p, ResolveModelRef(store, spec, field));
  } else if (p.is_relative() && !fs::exists(p, ec) && !store.empty()) {
    p = store / p;
  }
  const std::string what = absl::StrCat(field, " '", spec, "'");
  WeightSource out;
  auto latest_of = [&](const fs::path& folder) -> absl::StatusOr<WeightSource> {
    ASSIGN_OR_RETURN(CheckpointInfo latest, CheckpointStore(folder).Latest(), what);
    out.checkpoint_dir = latest.dir;
    out.file = latest.dir / "model.pt";
    return out;
  };
  // A registered model imported from a package (models/<name>/v<N>/package.zip).
  if (fs::is_directory(p, ec) && fs::exists(p / "package.zip", ec)) p = p / "package.zip";
  if (absl::EndsWith(p.string(), ".zip") && IsBioImageIoPackage(p)) {
    RETURN_IF_ERROR(CheckRead(what, p));  // the package is what is read (its unpacked copy is ours)
    ASSIGN_OR_RETURN(ImportedPackage package, ImportBioImageIoPackage(p, field));
    out.package = p;
    out.unpacked = package.dir;
    out.checkpoint_dir = package.checkpoint_dir;
    out.file = package.checkpoint_dir / "model.pt";
    return out;
  }
  if (absl::EndsWith(p.string(), ".npz")) {
    if (!fs::exists(p, ec)) return absl::NotFoundError(absl::StrCat(what, ": ", p.string(), ": no such file"));
    out.format = WeightSource::Format::kNpz;
    out.file = p;
    return out;
  }
  if (p.filename() == "LATEST") return latest_of(p.parent_path());
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "MANIFEST", ec)) {
      ASSIGN_OR_RETURN(CheckpointInfo info, CheckpointStore::Verify(p), what);
      out.checkpoint_dir = info.dir;
      out.file = info.dir / "model.pt";
      return out;
    }
    if (fs::is_directory(p / "checkpoints", ec)) return latest_of(p / "checkpoints");
    return latest_of(p);
  }
  if (!fs::exists(p, ec)) {
    return absl::NotFoundError(absl::StrCat(what, ": no such file or checkpoint (looked for ", p.string(),
                                            "; relative names are tried from here, then from the store)"));
  }
  out.file = p;
  if (fs::exists(p.parent_path() / "MANIFEST", ec)) {
    ASSIGN_OR_RETURN(CheckpointInfo info, CheckpointStore::Verify(p.parent_path()), what);
    out.checkpoint_dir = info.dir;
  }
  return out;
}

}  // namespace

absl::StatusOr<WeightSource> ResolveWeights(const std::string& spec, const fs::path& store, const std::string& field) {
  ASSIGN_OR_RETURN(WeightSource out, Resolve(spec, store, field));
  // What a checkpoint's LATEST or a symlinked step directory leads to is
  // what is read: it goes through the read scope (common/read_scope.h).
  if (out.package.empty()) RETURN_IF_ERROR(CheckRead(absl::StrCat(field, " '", spec, "'"), out.file));
  return out;
}

absl::StatusOr<StateDict> ReadWeights(const WeightSource& source, const TransUNetConfig& model) {
  if (source.format == WeightSource::Format::kNpz) return ImportViTNpz(source.file, model);
  return ReadStateDictFile(source.file);
}

}  // namespace retina::trainer
