#include "trainer/eval/inference.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace retina::trainer {

std::vector<int64_t> WindowOrigins(int64_t extent, int64_t window, double overlap) {
  const int64_t interval = std::max<int64_t>(1, static_cast<int64_t>(std::floor(window * (1.0 - overlap))));
  std::vector<int64_t> out;
  for (int64_t o = 0;; o += interval) {
    if (o + window >= extent) {
      out.push_back(std::max<int64_t>(0, extent - window));
      break;
    }
    out.push_back(o);
  }
  return out;
}

WindowForward ModelForward(VisionTransformer& model) {
  model->eval();
  return [model](const torch::Tensor& x) mutable { return model(x); };
}

torch::Tensor SlidingWindowLogits(const WindowForward& forward, const torch::Tensor& image, const SlidingWindowOptions& o) {
  torch::NoGradGuard no_grad;
  const int64_t h = image.size(0), w = image.size(1), win = o.window;
  // Symmetric zero padding (normalised units) up to the window.
  const int64_t ph = std::max<int64_t>(0, win - h), pw = std::max<int64_t>(0, win - w);
  const torch::Tensor padded = torch::constant_pad_nd(image, {pw / 2, pw - pw / 2, ph / 2, ph - ph / 2}, 0.0);
  const int64_t H = padded.size(0), W = padded.size(1);
  const std::vector<int64_t> ys = WindowOrigins(H, win, o.overlap), xs = WindowOrigins(W, win, o.overlap);
  std::vector<std::pair<int64_t, int64_t>> origins;
  for (int64_t y : ys)
    for (int64_t x : xs) origins.emplace_back(y, x);
  torch::Tensor sum, count = torch::zeros({1, H, W});
  for (size_t first = 0; first < origins.size(); first += o.batch) {
    const size_t n = std::min<size_t>(o.batch, origins.size() - first);
    std::vector<torch::Tensor> crops;
    for (size_t k = 0; k < n; ++k) {
      const auto [y, x] = origins[first + k];
      crops.push_back(padded.slice(0, y, y + win).slice(1, x, x + win));
    }
    const torch::Tensor logits = forward(torch::stack(crops).unsqueeze(1).to(o.device)).to(torch::kCPU, torch::kFloat);
    if (!sum.defined()) sum = torch::zeros({logits.size(1), H, W});
    for (size_t k = 0; k < n; ++k) {
      const auto [y, x] = origins[first + k];
      sum.slice(1, y, y + win).slice(2, x, x + win).add_(logits[k]);
      count.slice(1, y, y + win).slice(2, x, x + win).add_(1);
    }
  }
  return (sum / count).slice(1, ph / 2, ph / 2 + h).slice(2, pw / 2, pw / 2 + w).contiguous();
}

torch::Tensor LogitsToProbabilities(const torch::Tensor& logits) {
  return logits.size(0) == 1 ? torch::sigmoid(logits) : torch::softmax(logits, 0);
}

absl::StatusOr<VolumePrediction> PredictVolume(const WindowForward& forward, const Volume& raw, double mean, double std,
                                               VolumeMode mode, const SlidingWindowOptions& o, bool keep_probabilities,
                                               const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t Z = raw.shape[0], Y = raw.shape[1], X = raw.shape[2];
  if (raw.numel() == 0) return absl::InvalidArgumentError("empty input volume");
  const torch::Tensor vol = torch::from_blob(const_cast<uint8_t*>(raw.data.data()), {Z, Y, X}, torch::kByte);
  auto plane_probs = [&](const torch::Tensor& plane_u8) {
    const torch::Tensor x = (plane_u8.to(torch::kFloat) / 255.0 - mean) / std;
    return LogitsToProbabilities(SlidingWindowLogits(forward, x, o));
  };
  VolumePrediction out;
  out.labels.shape = raw.shape;
  out.labels.spacing = raw.spacing;
  out.labels.data.assign(raw.numel(), 0);
  const std::vector<int> axes = mode == VolumeMode::kStack ? std::vector<int>{0} : std::vector<int>{0, 1, 2};
  const int64_t total = mode == VolumeMode::kStack ? Z : Z + Y + X;
  int64_t done = 0;
  torch::Tensor acc;  // [C, Z, Y, X] summed probabilities (orthoplane, or when kept)
  const bool accumulate = mode == VolumeMode::kOrthoplane || keep_probabilities;
  for (int axis : axes) {
    for (int64_t i = 0; i < raw.shape[axis]; ++i) {
      const torch::Tensor p = plane_probs(vol.select(axis, i));  // [C, a, b]
      if (!acc.defined() && accumulate) acc = torch::zeros({p.size(0), Z, Y, X});
      if (accumulate) acc.select(axis + 1, i).add_(p);
      if (!accumulate) {  // stack without probabilities: label this plane now
        const torch::Tensor lab = p.size(0) == 1 ? (p[0] > 0.5).to(torch::kByte) : p.argmax(0).to(torch::kByte);
        std::memcpy(out.labels.data.data() + i * Y * X, lab.contiguous().data_ptr<uint8_t>(), Y * X);
      }
      if (progress) progress(++done, total);
    }
  }
  if (accumulate) {
    acc.div_(static_cast<double>(axes.size()));
    const torch::Tensor lab = acc.size(0) == 1 ? (acc[0] > 0.5).to(torch::kByte) : acc.argmax(0).to(torch::kByte);
    std::memcpy(out.labels.data.data(), lab.contiguous().data_ptr<uint8_t>(), raw.numel());
    if (keep_probabilities) out.probabilities = acc;
  }
  return out;
}

}  // namespace retina::trainer
