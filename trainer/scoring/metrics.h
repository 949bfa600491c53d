// The paper's segmentation metrics (METHOD.md section 4), per class, on
// label volumes (z, y, x; a 2D image is z = 1). Torch-free.
//
//   IoU        2D: (|P and G| + 1e-5) / (|P or G| + 1e-5) per image (plane);
//              3D: |P and G| / |P or G| per volume, both empty = 1.
//   precision  TP / (TP + FP); recall TP / (TP + FN); F = 2TP / (2TP + FP + FN)
//              (pixel/voxel level; both empty = 1, otherwise an empty
//              denominator gives 0).
//   MFD        mean of the two directed Hausdorff distances between P and G,
//              in spacing units (exact EDT); NaN when either set is empty.
//   CREMI      ADGT = mean distance from each predicted voxel to the nearest
//              ground-truth voxel; ADF = mean distance from each ground-truth
//              voxel to the nearest prediction; score = (ADGT + ADF) / 2;
//              FP / FN = voxels farther than `tolerance` (200 nm) from the
//              other set; tolerant F from those counts.
// With `touching_only` (the Perez rule), predicted connected components that
// touch no ground-truth component are removed before scoring.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/data/formats/array.h"

namespace retina::trainer {

struct ClassMetrics {
  int cls = 0;
  double iou = 0, precision = 0, recall = 0, f1 = 0;
  double mfd = 0;  // NaN when undefined
  // CREMI cleft metrics (filled when requested).
  double adgt = 0, adf = 0, cremi_score = 0;
  int64_t fp = 0, fn = 0;
  double tolerant_f1 = 0;
  int64_t pred_voxels = 0, gt_voxels = 0;
};

struct MetricOptions {
  std::vector<int> classes;        // empty: every class present in either volume except 0
  bool per_plane_iou = false;      // 2D protocol: IoU per plane, averaged
  bool touching_only = false;      // the Perez rule
  bool distances = true;           // MFD
  bool cremi = false;              // ADGT, ADF, FP/FN at `tolerance`
  double tolerance = 200.0;        // spacing units (nm for CREMI's 40x4x4)
};

// Both volumes must have equal shapes (INVALID_ARGUMENT naming both otherwise).
absl::StatusOr<std::vector<ClassMetrics>> ComputeMetrics(const Volume& pred, const Volume& gt,
                                                         const MetricOptions& options);

// Removes predicted components (26-connected in 3D, 8 in 2D) that share no voxel
// with `truth`. Returns the filtered binary mask.
std::vector<uint8_t> KeepTouchingComponents(const std::vector<uint8_t>& pred, const std::vector<uint8_t>& truth,
                                            const std::array<int64_t, 3>& shape);

}  // namespace retina::trainer
