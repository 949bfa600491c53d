// One input's prediction as an OME-Zarr image, written by any number of ranks
// (what an infer job runs; docs/evaluation.md "Infer jobs").
//
// Layout, for an input named <name> under the output directory:
//   <name>.ome.zarr/                labels, uint8, axes z, y, x with the
//     .zgroup .zattrs               input's spacing and unit; written LAST
//     0/ 1/ ...                     pyramid levels: 2x steps, labels by mode
//     .retina/job.json              owner job and the settings' fingerprint
//     .retina/done/<row>            completion marker of level-0 chunk row
//   <name>.probabilities.ome.zarr/  [c, z, y, x] per-class probabilities
//                                   (uint8 round(255 p), float16 or float32)
//   <name>.uncertainty.ome.zarr/    [z, y, x] float16 NormalisedEntropy of the
//                                   probabilities (infer.uncertainty: entropy),
//                                   the labels' level-0 chunks, spacing and unit
//
// Work: a chunk row is the level-0 planes [row * cz, (row + 1) * cz), every
// y/x chunk of them. Rows are dealt to ranks round-robin; a rank predicts its
// rows exactly as a whole-volume pass would (PredictVolumeStreaming over the
// row's planes), writes the row's chunks (each atomically), then commits the
// row's marker, so a killed attempt resumes at the first row without one.
// Pyramid levels follow, row by row from the level below, dealt the same way.
// The group metadata is written by one rank after every row of every level:
// a directory without it is not a finished image.
#pragma once

#include <array>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/zarr.h"
#include "trainer/prediction/inference.h"

namespace retina::trainer {

struct ZarrPredictionOptions {
  std::array<int64_t, 3> chunks{64, 256, 256};
  ZarrCompressor compressor = ZarrCompressor::kZlib;
  int level = 1;                 // compression level
  int levels = 0;                // pyramid levels incl. level 0; 0 = until y and x fit one chunk
  ProbabilityOutput probabilities = ProbabilityOutput::kNone;
  bool uncertainty = false;      // <name>.uncertainty.ome.zarr
};

// What a row's prediction needs besides the input.
struct RowPredictor {
  WindowForward forward;
  double mean = 0, std = 1;
  PredictionMode mode = PredictionMode::kStack;
  SlidingWindowOptions window;
  int64_t memory_bytes = int64_t{1} << 30;  // slab buffers of one rank
};

class ZarrPrediction {
 public:
  // Plans the output of an input of `shape` at `dir` (<name>.ome.zarr) and
  // checks what is there: nothing (fresh), or a directory this `job` wrote with
  // the same `fingerprint` (resume). FAILED_PRECONDITION naming the directory
  // when it exists and is not ours (another job's, other settings, or not an
  // infer job's at all). Writes nothing.
  static absl::StatusOr<std::unique_ptr<ZarrPrediction>> Plan(const std::filesystem::path& dir,
                                                              const std::array<int64_t, 3>& shape,
                                                              const std::array<double, 3>& spacing,
                                                              const std::string& unit, int classes,
                                                              const ZarrPredictionOptions& options,
                                                              const std::string& job, const std::string& fingerprint);

  // One rank: the directories, job.json and every array's .zarray. Idempotent.
  absl::Status Prepare() const;

  int64_t rows() const { return meta_[0].chunk_count(0); }
  int64_t RowVoxels(int64_t row) const;
  bool RowDone(int64_t row) const;
  int64_t RowsDone() const;  // markers present (any rank's)
  // Predicts a row from `in` and commits it (chunks, then the marker).
  absl::Status PredictRow(int64_t row, PlaneReader& in, const RowPredictor& p, VolumeStreamStats* stats) const;

  int levels() const { return static_cast<int>(meta_.size()); }
  int64_t LevelRows(int level) const { return meta_[level].chunk_count(0); }
  // Level `level` >= 1, row `row`, from level - 1.
  absl::Status DownsampleRow(int level, int64_t row) const;

  // One rank, after every row of every level: the group metadata (last).
  absl::Status Finish() const;
  bool finished() const;  // the labels' group metadata exists

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path probabilities_dir() const;
  std::filesystem::path uncertainty_dir() const;
  const std::vector<ZarrArrayMeta>& level_meta() const { return meta_; }

 private:
  ZarrPrediction() = default;
  std::filesystem::path dir_;
  std::array<double, 3> spacing_{1, 1, 1};
  std::string unit_;  // NGFF unit name, "" unknown
  int classes_ = 1;
  ZarrPredictionOptions options_;
  std::string job_, fingerprint_;
  std::vector<ZarrArrayMeta> meta_;            // labels, one per level
  std::vector<std::array<int, 3>> factors_;    // level l from l - 1 (factors_[0] = {1, 1, 1})
  ZarrArrayMeta probabilities_, uncertainty_;
};

// The levels' shapes and downsampling factors for a volume of `shape`:
// halving every axis longer than 1 until y and x fit one chunk (levels 0) or
// `levels` levels.
std::vector<std::pair<std::array<int64_t, 3>, std::array<int, 3>>> PyramidLevels(const std::array<int64_t, 3>& shape,
                                                                                  const std::array<int64_t, 3>& chunks,
                                                                                  int levels);

}  // namespace retina::trainer
