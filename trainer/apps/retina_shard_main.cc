// retina-shard: pack EM images into sharded datasets and check them.
//
//   retina-shard pack --input DIR_OR_GLOB --out STORE/datasets/NAME [--size 224] ...
//   retina-shard import --kind cremi|guay|kasthuri|perez|urocell|folder --input DIR --out ...
//   retina-shard import --add --input BLOCKS --out STORE/datasets/NAME   (a new version of NAME)
//   retina-shard verify|info DIR_OR_NAME [--store STORE]
// (`retina-shard CMD --help` lists every flag.)
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/dataset_manifest.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "common/thread_plan.h"
#include "trainer/data/tools/import.h"
#include "trainer/data/tools/pack.h"
#include "trainer/data/shards.h"

namespace retina::trainer {
namespace {

struct PackFlags {
  PackOptions pack;
  std::string out;
  std::string scale;  // "" or minmax
};

IntensityScaling ScalingOf(const std::string& scale) {
  return scale.empty() ? IntensityScaling::kRequireUInt8 : IntensityScaling::kMinMax;  // CLI11 checked the name
}

absl::Status Pack(PackFlags f) {
  PackOptions& o = f.pack;
  o.out = f.out;
  RETURN_IF_ERROR(StoreLayout::ValidateName(o.out.filename().string(), "--out (dataset name)"));
  o.scaling = ScalingOf(f.scale);
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

void AddPackFlags(CLI::App* cmd, PackFlags* f) {
  f->pack.threads = AvailableCores();
  cmd->add_option("--input", f->pack.input, "a directory or a glob of images (TIFF, PNG, HDF5, MRC, NIfTI, NRRD)")
      ->required();
  cmd->add_option("--out", f->out, "the dataset directory, STORE/datasets/NAME")->required();
  cmd->add_option("--size", f->pack.size, "patch side, pixels")->check(kPositiveInt);
  cmd->add_option("--shard-images", f->pack.shard_images, "patches per shard (at least)")->check(kPositiveInt);
  cmd->add_option("--threads", f->pack.threads, "decoding threads (default: the cores this process may use)")
      ->check(kPositiveInt);
  cmd->add_option("--scale", f->scale, "minmax: rescale non-8-bit images (else they are refused)")
      ->check(CLI::IsMember({"minmax"}));
  cmd->add_flag("--skip-bad", f->pack.skip_bad, "skip unreadable or too-small files (logged) instead of failing");
}

struct ImportFlags {
  ImportOptions import;
  std::string kind, input, out, scale, labels;
  std::optional<int> classes;
  bool isotropic = false;
  bool add = false;
  bool size_given = false;
};

// --add: labelled blocks as a new version of an existing dataset.
absl::Status AddBlocks(const ImportFlags& f) {
  if (!f.kind.empty() || f.isotropic || f.import.val_fraction > 0 || f.import.val_items > 0) {
    return absl::InvalidArgumentError("--add takes --input, --out, --labels, --classes, --size, --scale only");
  }
  AddBlocksOptions a;
  a.dataset = f.out;
  a.input = f.input;
  a.size = f.size_given ? f.import.size : 0;
  a.classes = f.classes.value_or(0);
  a.labels = f.labels == "binary" ? MaskConvention::kBinary : MaskConvention::kClassIndex;
  a.scaling = ScalingOf(f.scale);
  a.shard_images = f.import.shard_images;
  ASSIGN_OR_RETURN(AddBlocksResult r, AddLabelledBlocks(a));
  std::printf("added %lld blocks -> %lld tiles to %s: version %d, %lld tiles in all (digest %s)\n",
              static_cast<long long>(r.blocks), static_cast<long long>(r.tiles), f.out.c_str(), r.version,
              static_cast<long long>(r.manifest.count), r.manifest.versions.back().digest.substr(0, 12).c_str());
  return absl::OkStatus();
}

absl::Status Import(ImportFlags f) {
  if (f.add) return AddBlocks(f);
  if (f.kind.empty()) return absl::InvalidArgumentError("--kind is required (or --add)");
  ImportOptions& o = f.import;
  ASSIGN_OR_RETURN(o.kind, LookupImportKind(f.kind));
  const bool folder = o.kind.name == "folder";
  if (!folder && (!f.labels.empty() || f.classes || f.isotropic)) {
    return absl::InvalidArgumentError("--labels, --classes and --isotropic are for --kind folder only");
  }
  if (f.labels == "index") o.kind.labels = MaskConvention::kClassIndex;
  if (f.classes) o.kind.classes = *f.classes;
  o.kind.isotropic = o.kind.isotropic || f.isotropic;
  o.input = f.input;
  o.out = f.out;
  RETURN_IF_ERROR(StoreLayout::ValidateName(o.out.filename().string(), "--out (dataset name)"));
  o.scaling = ScalingOf(f.scale);
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

void AddImportFlags(CLI::App* cmd, ImportFlags* f) {
  cmd->add_option("--kind", f->kind, "the benchmark's layout")
      ->check(CLI::IsMember({"cremi", "guay", "kasthuri", "perez", "urocell", "folder"}));
  cmd->add_option("--input", f->input, "the benchmark's directory (--add: BLOCKS/images, BLOCKS/masks)")->required();
  cmd->add_option("--out", f->out, "STORE/datasets/NAME (also NAME-test, and NAME-val with a validation split)")
      ->required();
  cmd->add_flag("--add", f->add,
                "append labelled blocks to the dataset --out as a new version (created when absent; earlier versions "
                "are never changed)");
  cmd->add_option("--size", f->import.size, "tile side, pixels")->check(kPositiveInt)->each([f](const std::string&) {
    f->size_given = true;
  });
  cmd->add_option("--shard-images", f->import.shard_images, "tiles per shard (at least)")->check(kPositiveInt);
  cmd->add_option("--scale", f->scale, "minmax: rescale non-8-bit images")->check(CLI::IsMember({"minmax"}));
  cmd->add_option("--val-fraction", f->import.val_fraction, "of the training xy slices, held out as NAME-val")
      ->check(CLI::Range(0.0, 0.999999));
  cmd->add_option("--val-items", f->import.val_items, "or this many xy slices (not both)")->check(kNonNegativeInt);
  cmd->add_option("--labels", f->labels, "folder and --add: binary masks, or class indices (--add's default)")
      ->check(CLI::IsMember({"binary", "index"}));
  cmd->add_option("--classes", f->classes, "folder and --add: classes incl. background")->check(CLI::Range(2, 255));
  cmd->add_flag("--isotropic", f->isotropic, "folder only: slice training volumes along all three axes");
}

struct DatasetFlags {
  std::string dataset;
  std::optional<std::string> store;  // --store or $RETINA_STORE
};

// A dataset named by a directory, or by a name in STORE/datasets.
absl::StatusOr<std::filesystem::path> DatasetDir(const DatasetFlags& f) {
  if (f.store && f.dataset.find('/') == std::string::npos) {
    RETURN_IF_ERROR(StoreLayout::ValidateName(f.dataset, "dataset name"));
    return StoreLayout(*f.store).DatasetDir(f.dataset);
  }
  return std::filesystem::path(f.dataset);
}

void AddDatasetFlags(CLI::App* cmd, DatasetFlags* f) {
  cmd->add_option("dataset", f->dataset, "a dataset directory, or a name in STORE/datasets")->required();
  cmd->add_option("--store", f->store, "the shared store (else $RETINA_STORE)")->envname("RETINA_STORE");
}

absl::Status Verify(const DatasetFlags& f) {
  ASSIGN_OR_RETURN(std::filesystem::path dir, DatasetDir(f));
  ASSIGN_OR_RETURN(DatasetManifest m, DatasetManifest::Load(dir));
  RETURN_IF_ERROR(VerifyDatasetChecksums(dir, m));
  ASSIGN_OR_RETURN(auto ds, ShardedDataset::Open(dir, /*verify=*/false));  // structure: shapes, layout
  // The manifest's SHA-256 can be recomputed by whoever changed a shard; each
  // sample's CRC-32 inside the shard is checked as well.
  int64_t with_crc = 0;
  RETURN_IF_ERROR(ds->CheckAllSamples(&with_crc));
  std::printf("%s: OK (%zu shards, %lld images, %d version(s), SHA-256 of every shard, CRC-32 of %lld samples%s, "
              "and structure verified)\n",
              dir.c_str(), m.shards.size(), static_cast<long long>(ds->size()), m.latest_version(),
              static_cast<long long>(with_crc),
              with_crc < ds->size() ? " (older shards carry none)" : "");
  return absl::OkStatus();
}

absl::Status Info(const DatasetFlags& f) {
  ASSIGN_OR_RETURN(std::filesystem::path dir, DatasetDir(f));
  ASSIGN_OR_RETURN(DatasetManifest m, DatasetManifest::Load(dir));
  std::cout << m.ToJson();
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  Cli cli("retina-shard", "Packs EM images and labelled benchmarks into sharded datasets, and checks them.");
  PackFlags pack;
  AddPackFlags(cli.Command("pack", "Pack unlabelled images into 224x224 patches (pre-training)", [&] { return Pack(pack); }),
               &pack);
  ImportFlags import;
  AddImportFlags(cli.Command("import", "Import a labelled benchmark (train, test, validation splits)",
                             [&] { return Import(import); }),
                 &import);
  DatasetFlags verify, info;
  AddDatasetFlags(cli.Command("verify", "Check a dataset's checksums and structure", [&] { return Verify(verify); }),
                  &verify);
  AddDatasetFlags(cli.Command("info", "Print a dataset's manifest", [&] { return Info(info); }), &info);
  return cli.Run(argc, argv);
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) { return retina::trainer::Main(argc, argv); }
