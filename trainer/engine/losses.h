// Losses of RETINA (METHOD.md sections 2-3); the schedule is in schedule.h.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace retina::trainer {

// Binary: 0.5 BCE-with-logits + 0.5 (1 - (2 sum p t + 1e-5) / (sum p + sum t + 1e-5)).
// logits [B, 1, H, W] (or [B, H, W]), target [B, H, W] in {0, 1}.
torch::Tensor BceDiceLoss(const torch::Tensor& logits, const torch::Tensor& target);

// Multi-class: 0.5 weighted CE + 0.5 mean over all classes (background
// included) of 1 - (2 sum p t + 1e-5) / (sum p^2 + sum t^2 + 1e-5), softmax p,
// sums over the whole batch; weights not applied to Dice.
// logits [B, C, H, W], target [B, H, W] int64; weights empty or C values.
torch::Tensor CeDiceLoss(const torch::Tensor& logits, const torch::Tensor& target, const std::vector<double>& weights);

}  // namespace retina::trainer
