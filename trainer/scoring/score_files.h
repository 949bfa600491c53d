// `retina-eval`: score a segmentation file against a ground-truth file with
// the paper's metrics (METHOD.md section 4). The library half of the program:
// reading both files, the label conventions, the checks, the table and the
// JSON report.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "trainer/data/formats/array.h"
#include "trainer/scoring/metrics.h"

namespace retina::trainer {

struct ScoreFilesOptions {
  std::string pred, gt;  // anything ReadArray reads (file.h5:/path for HDF5)
  // How the prediction was made, in the job file's words: 2d scores IoU per
  // plane (image) with 1e-5 smoothing, averaged; stack and orthoplane score
  // each volume as a whole.
  PredictionMode mode = PredictionMode::kStack;
  MaskConvention gt_labels = MaskConvention::kClassIndex;  // the prediction holds class indices
  std::optional<std::array<double, 3>> spacing;            // z,y,x; else the ground truth's, else 1,1,1
  int num_classes = 0;                                     // > 0: both files must hold classes below it
  MetricOptions metrics;                                   // classes, cremi, touching_only
};

struct ScoredFiles {
  ScoreFilesOptions options;
  std::array<double, 3> spacing{1, 1, 1};  // as used
  std::vector<ClassMetrics> classes;
  double mean_iou = 0;
};

// INVALID_ARGUMENT naming --pred/--gt for unreadable files, shape mismatches
// and classes at or above num_classes.
absl::StatusOr<ScoredFiles> ScoreFiles(const ScoreFilesOptions& options);

// The per-class table retina-eval prints, and its --json document
// {pred, gt, mode, spacing, classes: [{class, iou, f1, precision, recall, mfd,
// pred_voxels, gt_voxels[, CREMI keys]}], mean_iou}; undefined values are null.
std::string ScoreTable(const ScoredFiles& scored);
std::string ScoreJson(const ScoredFiles& scored);

}  // namespace retina::trainer
