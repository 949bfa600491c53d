// Inference (METHOD.md section 4): sliding windows over 2D images and planes
// of volumes, xy-stack and orthoplane prediction.
//
// Sliding window: window = the model's image size, interval
// floor(window (1 - overlap)), the last window clamped to the border, windows
// run in batches, logits averaged uniformly over overlapping windows;
// dimensions smaller than the window are padded symmetrically with 0 in
// normalised units.
// Volumes are streamed plane by plane: memory is the uint8 input plus one
// float accumulator per class and voxel (orthoplane) or per plane (stack).
// Orthoplane averages the per-voxel probabilities of the xy, xz and yz
// predictions in float (the reference summed uint8-truncated ones).
#pragma once

#include <torch/torch.h>

#include <functional>

#include "absl/status/statusor.h"
#include "trainer/data/array.h"
#include "trainer/model/transunet.h"

namespace retina::trainer {

struct SlidingWindowOptions {
  int64_t window = 224;
  double overlap = 0.5;
  int64_t batch = 4;
  torch::Device device = torch::kCPU;
};

// Window origins along an axis of `extent` (>= window): 0, step, ..., with the
// last clamped to extent - window.
std::vector<int64_t> WindowOrigins(int64_t extent, int64_t window, double overlap);

// A batch of windows [N, 1, win, win] -> logits [N, C, win, win].
using WindowForward = std::function<torch::Tensor(const torch::Tensor&)>;
WindowForward ModelForward(VisionTransformer& model);

// image: normalised [H, W] float; returns averaged logits [C, H, W] (CPU).
torch::Tensor SlidingWindowLogits(const WindowForward& forward, const torch::Tensor& image, const SlidingWindowOptions& o);

// Sigmoid for one channel, softmax otherwise.
torch::Tensor LogitsToProbabilities(const torch::Tensor& logits);

enum class VolumeMode { kStack, kOrthoplane };

struct VolumePrediction {
  Volume labels;                 // class indices (binary: probability > 0.5)
  torch::Tensor probabilities;   // [C, Z, Y, X] float, when requested
};

// raw: uint8 z, y, x; normalisation (v/255 - mean) / std. `progress(done,
// total)` is called after each plane.
absl::StatusOr<VolumePrediction> PredictVolume(const WindowForward& forward, const Volume& raw, double mean, double std,
                                               VolumeMode mode, const SlidingWindowOptions& o, bool keep_probabilities,
                                               const std::function<void(int64_t, int64_t)>& progress);

}  // namespace retina::trainer
