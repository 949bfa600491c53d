// retina-shard: pack EM images into sharded datasets and check them.
//
//   retina-shard pack --input DIR_OR_GLOB --out STORE/datasets/NAME [--size 224]
//                     [--shard-images 4096] [--threads T] [--scale minmax] [--skip-bad]
//   retina-shard verify DIR_OR_NAME [--store STORE]
//   retina-shard info DIR_OR_NAME [--store STORE]
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/dataset_manifest.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "common/thread_plan.h"
#include "trainer/data/import.h"
#include "trainer/data/pack.h"
#include "trainer/data/shards.h"

namespace retina::trainer {
namespace {

constexpr char kUsage[] =
    "usage: retina-shard pack --input DIR_OR_GLOB --out STORE/datasets/NAME [--size 224]\n"
    "                         [--shard-images 4096] [--threads T] [--scale minmax] [--skip-bad]\n"
    "       retina-shard import --kind cremi|guay|kasthuri|perez|urocell|folder --input DIR\n"
    "                           --out STORE/datasets/NAME [--size 256] [--shard-images 1024] [--scale minmax]\n"
    "                           [--val-fraction F | --val-items N]   (validation slices -> NAME-val)\n"
    "                           [--labels binary|index --classes N --isotropic]   (folder only)\n"
    "       retina-shard verify DATASET [--store STORE]   (DATASET: a directory, or a name in STORE/datasets)\n"
    "       retina-shard info DATASET [--store STORE]\n";

absl::Status Pack(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(CliFlags f, ParseCliFlags(args, {"--input", "--out", "--size", "--shard-images", "--threads", "--scale"},
                                  {"--skip-bad"}));
  PackOptions o;
  if (!f.values.count("--input") || !f.values.count("--out")) {
    return absl::InvalidArgumentError("--input and --out are required");
  }
  o.input = f.values["--input"];
  o.out = f.values["--out"];
  RETURN_IF_ERROR(StoreLayout::ValidateName(o.out.filename().string(), "--out (dataset name)"));
  o.threads = AvailableCores();
  RETURN_IF_ERROR(f.GetInt("--size", &o.size));
  RETURN_IF_ERROR(f.GetInt("--shard-images", &o.shard_images));
  RETURN_IF_ERROR(f.GetInt("--threads", &o.threads));
  if (f.values.count("--scale")) {
    if (f.values["--scale"] != "minmax") return absl::InvalidArgumentError("--scale: only 'minmax' is known");
    o.scaling = IntensityScaling::kMinMax;
  }
  o.skip_bad = f.values.count("--skip-bad") > 0;
  ASSIGN_OR_RETURN(PackResult r, PackImages(o));
  std::printf("packed %lld images from %lld files (%lld skipped) into %zu shards in %.1f s (%.0f images/s)%s\n"
              "mean %.6f std %.6f -> %s\n",
              static_cast<long long>(r.manifest.count), static_cast<long long>(r.files),
              static_cast<long long>(r.skipped), r.manifest.shards.size(), r.seconds,
              r.seconds > 0 ? r.manifest.count / r.seconds : 0.0,
              r.resumed_shards > 0 ? absl::StrCat(" (resumed after ", r.resumed_shards, " shards)").c_str() : "",
              r.manifest.mean, r.manifest.std, o.out.c_str());
  return absl::OkStatus();
}

absl::Status Import(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(CliFlags f, ParseCliFlags(args, {"--kind", "--input", "--out", "--size", "--shard-images", "--scale", "--labels",
                                         "--classes", "--val-fraction", "--val-items"},
                                  {"--isotropic"}));
  for (const char* required : {"--kind", "--input", "--out"}) {
    if (!f.values.count(required)) return absl::InvalidArgumentError(std::string(required) + " is required");
  }
  ImportOptions o;
  ASSIGN_OR_RETURN(o.kind, LookupImportKind(f.values["--kind"]));
  const bool folder = o.kind.name == "folder";
  for (const char* only : {"--labels", "--classes", "--isotropic"}) {
    if (f.values.count(only) && !folder) return absl::InvalidArgumentError(std::string(only) + " is for --kind folder only");
  }
  if (f.values.count("--labels")) {
    const std::string& l = f.values["--labels"];
    if (l == "index") o.kind.labels = MaskConvention::kClassIndex;
    else if (l != "binary") return absl::InvalidArgumentError("--labels: binary or index, got '" + l + "'");
  }
  RETURN_IF_ERROR(f.GetInt("--classes", &o.kind.classes));
  o.kind.isotropic = o.kind.isotropic || f.values.count("--isotropic") > 0;
  o.input = f.values["--input"];
  o.out = f.values["--out"];
  RETURN_IF_ERROR(StoreLayout::ValidateName(o.out.filename().string(), "--out (dataset name)"));
  RETURN_IF_ERROR(f.GetInt("--size", &o.size));
  RETURN_IF_ERROR(f.GetInt("--shard-images", &o.shard_images));
  if (f.values.count("--scale")) o.scaling = IntensityScaling::kMinMax;
  RETURN_IF_ERROR(f.GetDouble("--val-fraction", &o.val_fraction));
  RETURN_IF_ERROR(f.GetInt64("--val-items", &o.val_items));
  ASSIGN_OR_RETURN(ImportResult r, ImportBenchmark(o));
  std::printf("imported %s: %lld training slices -> %lld tiles of %dx%d in %zu shards (mean %.4f std %.4f); "
              "%lld test items in %s-test\n",
              o.kind.name.c_str(), static_cast<long long>(r.train_slices), static_cast<long long>(r.train.count), o.size,
              o.size, r.train.shards.size(), r.train.mean, r.train.std, static_cast<long long>(r.test_items),
              o.out.c_str());
  if (r.val_slices > 0) {
    std::printf("validation: %lld slices held out -> %lld tiles in %s-val\n", static_cast<long long>(r.val_slices),
                static_cast<long long>(r.val.count), o.out.c_str());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::filesystem::path> DatasetDir(const CliFlags& f) {
  if (f.positional.size() != 1) return absl::InvalidArgumentError("name one dataset");
  const std::string& d = f.positional[0];
  if (f.HasStore() && d.find('/') == std::string::npos) {
    RETURN_IF_ERROR(StoreLayout::ValidateName(d, "dataset name"));
    return StoreLayout(f.Store()).DatasetDir(d);
  }
  return std::filesystem::path(d);
}

absl::Status Verify(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(CliFlags f, ParseCliFlags(args, {"--store"}, {}));
  ASSIGN_OR_RETURN(std::filesystem::path dir, DatasetDir(f));
  ASSIGN_OR_RETURN(DatasetManifest m, DatasetManifest::Load(dir));
  RETURN_IF_ERROR(VerifyDatasetChecksums(dir, m));
  ASSIGN_OR_RETURN(auto ds, ShardedDataset::Open(dir, /*verify=*/false));  // structure: shapes, layout
  std::printf("%s: OK (%zu shards, %lld images, checksums and structure verified)\n", dir.c_str(), m.shards.size(),
              static_cast<long long>(ds->size()));
  return absl::OkStatus();
}

absl::Status Info(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(CliFlags f, ParseCliFlags(args, {"--store"}, {}));
  ASSIGN_OR_RETURN(std::filesystem::path dir, DatasetDir(f));
  ASSIGN_OR_RETURN(DatasetManifest m, DatasetManifest::Load(dir));
  std::cout << m.ToJson();
  return absl::OkStatus();
}

int Main(const std::vector<std::string>& args) {
  return RunSubcommands("retina-shard", kUsage, args, {{"pack", Pack}, {"import", Import}, {"verify", Verify}, {"info", Info}});
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) { return retina::trainer::Main({argv + 1, argv + argc}); }
