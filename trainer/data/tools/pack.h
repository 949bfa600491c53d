// retina-shard pack: flat folders of 2D EM images (CEM500K-style) -> a sharded
// dataset in the store.
//
// Inputs are listed and sorted (a directory, searched recursively, or a
// glob), read in parallel, converted to uint8 and cut into size x size
// patches in raster order (the last row/column of patches is aligned to the
// image border, so no pixel is lost and patches overlap a little there;
// images of exactly size x size give one patch). Shards close at file
// boundaries once they hold >= shard_images patches.
//
// Resumable: after every shard, .pack-state.json (atomic) records the shards
// written, the next input file and the exact integer pixel sums; a rerun with
// the same inputs and options continues from there. manifest.json is written
// last, so an unfinished dataset is never mistaken for a finished one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/status/statusor.h"
#include "common/dataset_manifest.h"
#include "trainer/data/formats/array.h"

namespace retina::trainer {

struct PackOptions {
  std::string input;            // directory or glob pattern
  std::filesystem::path out;    // <store>/datasets/<name>
  int size = 224;               // patch side, pixels
  int shard_images = 4096;      // patches per shard (at least)
  int threads = 2;              // decoding threads
  IntensityScaling scaling = IntensityScaling::kRequireUInt8;
  bool skip_bad = false;        // skip unreadable/too-small files (logged) instead of failing
  int64_t stop_after_shards = -1;  // for tests: stop (as if interrupted) after this many shards
};

struct PackResult {
  DatasetManifest manifest;
  int64_t files = 0;
  int64_t skipped = 0;
  int64_t resumed_shards = 0;  // shards found from an interrupted earlier run
  double seconds = 0;
  bool finished = true;        // false when stopped by stop_after_shards
};

absl::StatusOr<PackResult> PackImages(const PackOptions& options);

// The patch origins (y or x) covering `extent` with tiles of `size`.
std::vector<int64_t> PatchOrigins(int64_t extent, int64_t size);

// Lists the input files of a directory (recursive) or glob, sorted.
absl::StatusOr<std::vector<std::string>> ListInputs(const std::string& input);

}  // namespace retina::trainer
