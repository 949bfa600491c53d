#include "trainer/engine/losses.h"

namespace retina::trainer {

torch::Tensor BceDiceLoss(const torch::Tensor& logits, const torch::Tensor& target) {
  const torch::Tensor l = logits.dim() == 4 ? logits.squeeze(1) : logits;
  const torch::Tensor t = target.to(l.scalar_type());
  const torch::Tensor p = torch::sigmoid(l);
  const torch::Tensor dice = (2 * (p * t).sum() + 1e-5) / (p.sum() + t.sum() + 1e-5);
  return 0.5 * torch::binary_cross_entropy_with_logits(l, t) + 0.5 * (1 - dice);
}

torch::Tensor CeDiceLoss(const torch::Tensor& logits, const torch::Tensor& target, const std::vector<double>& weights) {
  namespace F = torch::nn::functional;
  const int64_t c = logits.size(1);
  F::CrossEntropyFuncOptions ce;
  if (!weights.empty()) ce.weight(torch::tensor(weights, logits.options()));
  const torch::Tensor p = torch::softmax(logits, 1);
  const torch::Tensor t = F::one_hot(target, c).permute({0, 3, 1, 2}).to(logits.scalar_type());
  const torch::Tensor inter = (p * t).sum({0, 2, 3});
  const torch::Tensor dice = (2 * inter + 1e-5) / ((p * p).sum({0, 2, 3}) + (t * t).sum({0, 2, 3}) + 1e-5);
  return 0.5 * F::cross_entropy(logits, target, ce) + 0.5 * (1 - dice).mean();
}

}  // namespace retina::trainer
