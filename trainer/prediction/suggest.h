// Where to label next (docs/evaluation.md "The annotation loop"): blocks of
// an xy plane ranked by the model's uncertainty, with a diversity rule, and
// the files a person labels from.
//
// Candidates: on every z plane, blocks `block` x `block` (clamped to a
// smaller plane) at origins WindowOrigins(extent, block, 0.5) in y and x (half
// a block apart, the last at the border). A candidate's score is the mean of
// the uncertainty map over its voxels. Candidates that overlap an already
// labelled block (same plane, rectangles intersecting) are never suggested.
//
// Strategies (common/job_config.h SelectionStrategy):
//  - uncertainty: by score, highest first (ties: lower z, y, x first); a
//    candidate is taken only if it overlaps no block taken before and its
//    centre is at least `min_distance` voxels (Euclidean over z, y, x) from
//    the centre of every block taken before and every block labelled
//    before: the diversity rule. The default, half the block side, keeps
//    blocks on one plane apart and never repeats a place within block/2
//    planes; blocks shifted by half a block may still sit on neighbouring
//    planes (min_distance = the block side spreads them further, at the
//    price of fewer blocks in a thin volume).
//  - uncertainty-nodiversity: by score alone (blocks may overlap and touch).
//  - random: candidates in a seeded uniform order, taken if they overlap no
//    block taken before (no distance rule).
// Fewer than `count` suggestions come back when the candidates run out.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "trainer/data/formats/array.h"

namespace retina::trainer {

// A block on plane z: rows [y, y + height), columns [x, x + width).
struct LabelBlock {
  int64_t z = 0, y = 0, x = 0, height = 0, width = 0;
  bool Overlaps(const LabelBlock& o) const {
    return z == o.z && y < o.y + o.height && o.y < y + height && x < o.x + o.width && o.x < x + width;
  }
  // Distance between the centres, voxels.
  double Distance(const LabelBlock& o) const;
};

struct Suggestion {
  int rank = 0;  // 1 = label first
  LabelBlock block;
  double score = 0;  // mean uncertainty in the block
};

struct SuggestOptions {
  int64_t block = 224;
  int count = 16;
  double min_distance = 0;  // 0 = block / 2
  SelectionStrategy strategy = SelectionStrategy::kUncertainty;
  uint64_t seed = 0;        // the random strategy's order
  std::vector<LabelBlock> labelled;  // never suggested again (nor anything overlapping them)
};

// `uncertainty`: z, y, x (row-major) of `shape`. INVALID_ARGUMENT for a size
// that does not match or a block below 1.
absl::StatusOr<std::vector<Suggestion>> SuggestBlocks(const std::vector<float>& uncertainty,
                                                      const std::array<int64_t, 3>& shape, const SuggestOptions& o);

// The uncertainty map of an infer output (<name>.uncertainty.ome.zarr, level 0)
// as floats, with its shape.
absl::StatusOr<std::pair<std::vector<float>, std::array<int64_t, 3>>> ReadUncertaintyMap(
    const std::filesystem::path& dir);

// Writes, under `dir` (created): suggestions.csv (rank, z, y, x, height,
// width, score), crops/rank-NNN.tif (the image under each block, uint8, with
// the image's spacing), suggestions.napari.csv (a napari shapes layer: one
// rectangle per block, axes z, y, x) and suggestions.neuroglancer.json (an
// annotation layer of axis-aligned boxes in x, y, z with `spacing` and
// `unit`). `image` is the volume the blocks are on.
absl::Status WriteSuggestions(const std::filesystem::path& dir, const std::vector<Suggestion>& suggestions,
                              const Volume& image, const std::string& unit);

// The blocks of a suggestions.csv (what --labelled reads back).
absl::StatusOr<std::vector<LabelBlock>> ReadSuggestionBlocks(const std::filesystem::path& csv);

}  // namespace retina::trainer
