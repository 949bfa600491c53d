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

// retina-shard import --add: a person's labelled blocks appended to a
// labelled dataset as a new version (common/dataset_manifest.h "Versions").
//
// Input: DIR/images/<name>, DIR/masks/<name> (same names): 2D blocks, or
// stacks of xy blocks, cut into the dataset's tiles like `import`. Every pair
// is checked before anything is written, and refused naming its file when
// the mask's shape differs from the image's, the image is not 8-bit (without
// minmax scaling), the mask is not integer or holds a class the dataset does
// not have, or the block is smaller than the dataset's tiles in y or x. New
// tiles go to new shard files; no earlier shard is touched, and the
// manifest (the new version last) is replaced atomically. The normalisation
// stays the first version's, so a model continued on a later version sees
// inputs scaled as before. A dataset that does not exist is created, its
// version 1 the blocks (then `size` and `classes` are required). Adds to one
// dataset are serialised by an flock on <dataset>/.add.lock; a shard file the
// manifest does not list (an add killed before its manifest) is refused, not
// overwritten.
struct AddBlocksOptions {
  std::filesystem::path dataset;
  std::filesystem::path input;
  int size = 0;     // a new dataset's tile side (an existing one's must match or be 0)
  int classes = 0;  // incl. background: a new dataset's; 0 = the manifest's
  MaskConvention labels = MaskConvention::kClassIndex;
  IntensityScaling scaling = IntensityScaling::kRequireUInt8;
  int shard_images = 1024;
};
struct AddBlocksResult {
  DatasetManifest manifest;  // the whole dataset after the addition
  int version = 0;
  int64_t blocks = 0, tiles = 0;
};
absl::StatusOr<AddBlocksResult> AddLabelledBlocks(const AddBlocksOptions& options);

}  // namespace retina::trainer
