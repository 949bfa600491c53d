// Test models whose labels are mixed on a given volume: a randomly
// initialised 2-class segmentation model predicts one class almost
// everywhere, so comparisons of its labels could not fail. Shared by the
// infer and serve tests.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "trainer/model/transunet.h"
#include "trainer/prediction/inference.h"

namespace retina::testing {

// Shifts class 1's bias of `seg` (2 classes) by the median logit of its
// stack prediction of `volume` (window `window`, normalisation mean/std),
// so that about half the voxels become class 1.
inline void MixLabels(trainer::VisionTransformer& seg, const trainer::Volume& volume, int64_t window, double mean,
                      double std) {
  trainer::SlidingWindowOptions so;
  so.window = window;
  absl::StatusOr<trainer::VolumePrediction> p = trainer::PredictVolume(
      trainer::ModelForward(seg), volume, mean, std, PredictionMode::kStack, so, true, nullptr);
  ASSERT_TRUE(p.ok()) << p.status();
  const torch::Tensor p1 = p->probabilities[1].clamp(1e-6, 1 - 1e-6);
  const double median = torch::log(p1 / (1 - p1)).median().item<double>();
  torch::NoGradGuard no_grad;
  for (auto& item : seg->named_parameters()) {
    if (item.key() == "segmentation_head.0.bias") item.value()[1].sub_(median);
  }
}

}  // namespace retina::testing
