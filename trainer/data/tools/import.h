// retina-shard import: labelled EM benchmarks -> fine-tuning data in the store.
//
// Input layout (the CEM500K authors' preparation, METHOD.md section 5):
//   DIR/train/images/<name>, DIR/train/masks/<name>   (same names; 2D slices or 3D volumes)
//   DIR/test/images/<name>,  DIR/test/masks/<name>
// CREMI instead: DIR/train/*.h5 and DIR/test/*.h5 holding volumes/raw (uint8)
// and volumes/labels/clefts (uint64, background 0xFFFFFFFFFFFFFFFF).
//
// Output:
//   <out>/        labelled shards of size x size training tiles: every 2D
//                 slice (3D volumes sliced along xy, or xy+xz+yz for
//                 isotropic kinds) cut like `pack` (border-aligned tiles;
//                 smaller slices reflect-101 padded, centred).
//   <out>-val/    with val_fraction/val_items: labelled tiles of the last
//                 xy slices of the training split (items by name, z
//                 ascending), held out of training whole (isotropic
//                 volumes' xz/yz training planes are cut below them), with
//                 the training data's mean/std: a data.val_dataset.
//   <out>-test/   the held-out images/volumes unchanged, one HDF5 file each
//                 (image, mask: uint8 z,y,x; attribute spacing), listed with
//                 SHA-256 in test.json.
#pragma once

#include <filesystem>
#include <string>

#include "absl/status/statusor.h"
#include "common/dataset_manifest.h"
#include "trainer/data/formats/array.h"

namespace retina::trainer {

struct ImportKind {
  std::string name;
  MaskConvention labels = MaskConvention::kBinary;
  bool isotropic = false;  // slice training volumes along all three axes
  int classes = 2;         // incl. background; masks are checked against it
};

// cremi, guay, kasthuri, perez, urocell; "folder" needs labels/isotropic/classes from flags.
absl::StatusOr<ImportKind> LookupImportKind(const std::string& name);

struct ImportOptions {
  ImportKind kind;
  std::filesystem::path input;
  std::filesystem::path out;  // <store>/datasets/<name>
  int size = 256;
  int shard_images = 1024;
  IntensityScaling scaling = IntensityScaling::kRequireUInt8;
  double val_fraction = 0;  // of the training split's xy slices, in [0, 1)
  int64_t val_items = 0;    // or this many xy slices (not both)
};

struct ImportResult {
  DatasetManifest train;
  int64_t train_slices = 0;
  DatasetManifest val;  // count 0 without a validation split
  int64_t val_slices = 0;
  int64_t test_items = 0;
};

absl::StatusOr<ImportResult> ImportBenchmark(const ImportOptions& options);

}  // namespace retina::trainer
