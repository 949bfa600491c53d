// Inference (METHOD.md section 4): sliding windows over 2D images and planes
// of volumes, xy-stack and orthoplane prediction.
//
// Sliding window: window = the model's image size, interval
// floor(window (1 - overlap)), the last window clamped to the border, windows
// run in batches, logits averaged uniformly over overlapping windows;
// dimensions smaller than the window are padded symmetrically with 0 in
// normalised units.
// Volumes are processed in z-slabs read from a PlaneReader and written to a
// PlaneWriter in z order, so memory is bounded by the slab, not the volume.
// Orthoplane averages the per-voxel probabilities of the xy, xz and yz
// predictions in float (the reference summed uint8-truncated ones); for a
// slab [z0, z1) it holds one float accumulator per class for the slab's voxels
// and the input rows that the xz/yz windows touching the slab read (the slab
// plus up to window - 1 planes either side). Those windows are exactly the ones
// a whole-volume pass uses for the slab's voxels, so the result does not depend
// on the slab size; windows that straddle two slabs run once for each (the
// price of the bound, reported in VolumeStreamStats).
#pragma once

#include <torch/torch.h>

#include <functional>

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "trainer/data/formats/array.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"
#include "trainer/model/transunet.h"

namespace retina::trainer {

struct SlidingWindowOptions {
  int64_t window = 224;
  double overlap = 0.5;
  int64_t batch = 4;
  torch::Device device = torch::kCPU;
  bool bf16 = false;  // the model under bf16 autocast (ModelForward's), fp32 logits
};

// Window origins along an axis of `extent` (>= window): 0, step, ..., with the
// last clamped to extent - window.
std::vector<int64_t> WindowOrigins(int64_t extent, int64_t window, double overlap);

// A batch of windows [N, 1, win, win] -> logits [N, C, win, win].
using WindowForward = std::function<torch::Tensor(const torch::Tensor&)>;
// The model in eval mode as a WindowForward; with `bf16`, under bf16
// autocast on the input's device, returning fp32 logits.
WindowForward ModelForward(VisionTransformer& model, bool bf16 = false);

// image: normalised [H, W] float; returns averaged logits [C, H, W] (CPU).
// `windows`, when given, is increased by the number of windows run.
torch::Tensor SlidingWindowLogits(const WindowForward& forward, const torch::Tensor& image, const SlidingWindowOptions& o,
                                  int64_t* windows = nullptr);

// Rows [r0, r1) of the averaged logits of a plane `full_h` rows high:
// [C, r1 - r0, W]. `rows` [n, W] holds the plane's rows [row0, row0 + n), which
// must include SlidingWindowRowsNeeded(full_h, r0, r1). A plane lower than the
// window is padded, and then `rows` must be all of it.
torch::Tensor SlidingWindowRows(const WindowForward& forward, const torch::Tensor& rows, int64_t row0, int64_t full_h,
                                int64_t r0, int64_t r1, const SlidingWindowOptions& o, int64_t* windows = nullptr);
// The rows [lo, hi) of a plane `full_h` high that the windows covering rows
// [r0, r1) read.
std::pair<int64_t, int64_t> SlidingWindowRowsNeeded(int64_t full_h, int64_t r0, int64_t r1, const SlidingWindowOptions& o);

// Sigmoid for one channel, softmax otherwise.
torch::Tensor LogitsToProbabilities(const torch::Tensor& logits);

// The uncertainty map (infer.uncertainty: entropy): probabilities [C, ...]
// -> [...] float, H(p) / log(C) with H(p) = -sum_c p_c log p_c (0 log 0 = 0);
// one sigmoid channel p counts as the two classes (1 - p, p), divided by
// log 2. 0 where the model is certain, 1 where every class is equally likely
// (and where a probability is NaN).
torch::Tensor NormalisedEntropy(const torch::Tensor& probabilities);

// The job file's prediction mode (common/job_config.h). 2d predicts as a
// stack, plane by plane; only its scoring differs (IoU per plane).
using VolumeMode = PredictionMode;

struct VolumePrediction {
  Volume labels;                 // class indices (binary: probability > 0.5)
  torch::Tensor probabilities;   // [C, Z, Y, X] float, when requested
};

struct VolumeStreamStats {
  int64_t slabs = 0;
  int64_t slab_planes = 0;       // planes per slab (the last may be thinner)
  int64_t planes_predicted = 0;  // xy + per-slab xz and yz planes
  int64_t windows = 0;           // model windows run (including repeats at slab borders)
};

// The thickest slab whose buffers (input with its halo, accumulators, labels
// and one plane's working set) fit `budget_bytes`; at least 1, at most Z.
int64_t SlabPlanesForBudget(const std::array<int64_t, 3>& shape, int64_t classes, VolumeMode mode,
                            const SlidingWindowOptions& o, int64_t budget_bytes);

// Predicts `in` slab by slab and appends labels (and, when `keep_probabilities`,
// [C, n, Y, X] probabilities) to `out` in z order; `progress(done, total)`
// counts planes predicted. `out` is not finished here. `z_range` [z0, z1)
// (z1 = -1: to the end) predicts only those planes, exactly as a whole-volume
// pass would (what a rank of an infer job runs for its chunks).
absl::StatusOr<VolumeStreamStats> PredictVolumeStreaming(const WindowForward& forward, PlaneReader& in, double mean,
                                                         double std, VolumeMode mode, const SlidingWindowOptions& o,
                                                         int64_t slab_planes, bool keep_probabilities, PlaneWriter& out,
                                                         const std::function<void(int64_t, int64_t)>& progress,
                                                         std::pair<int64_t, int64_t> z_range = {0, -1});

// In memory, one slab. raw: uint8 z, y, x; normalisation (v/255 - mean) / std. `progress(done,
// total)` is called after each plane.
absl::StatusOr<VolumePrediction> PredictVolume(const WindowForward& forward, const Volume& raw, double mean, double std,
                                               VolumeMode mode, const SlidingWindowOptions& o, bool keep_probabilities,
                                               const std::function<void(int64_t, int64_t)>& progress);

}  // namespace retina::trainer
