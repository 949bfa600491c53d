#include "trainer/prediction/inference.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/runtime/device.h"

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

WindowForward ModelForward(VisionTransformer& model, bool bf16) {
  model->eval();
  if (!bf16) return [model](const torch::Tensor& x) mutable { return model(x); };
  return [model](const torch::Tensor& x) mutable {
    Autocast autocast(x.device().type(), true);
    return model(x).to(torch::kFloat);
  };
}

std::pair<int64_t, int64_t> SlidingWindowRowsNeeded(int64_t full_h, int64_t r0, int64_t r1, const SlidingWindowOptions& o) {
  if (full_h < o.window) return {0, full_h};  // padded: one window row, all of the plane
  int64_t lo = full_h, hi = 0;
  for (int64_t y : WindowOrigins(full_h, o.window, o.overlap)) {
    if (y < r1 && y + o.window > r0) {
      lo = std::min(lo, y);
      hi = std::max(hi, y + o.window);
    }
  }
  return {lo, hi};
}

torch::Tensor SlidingWindowRows(const WindowForward& forward, const torch::Tensor& rows, int64_t row0, int64_t full_h,
                                int64_t r0, int64_t r1, const SlidingWindowOptions& o, int64_t* windows) {
  torch::NoGradGuard no_grad;
  const int64_t w = rows.size(1), win = o.window;
  // Symmetric zero padding (normalised units) up to the window. Padded
  // coordinates: plane row r is padded row r + top; rows[i] is padded row
  // row0 + top + i.
  const int64_t ph = std::max<int64_t>(0, win - full_h), pw = std::max<int64_t>(0, win - w);
  const int64_t top = ph / 2, left = pw / 2;
  TORCH_CHECK(ph == 0 || (row0 == 0 && rows.size(0) == full_h), "a padded plane must be given whole");
  const torch::Tensor padded = torch::constant_pad_nd(rows, {left, pw - left, top, ph - top}, 0.0);
  const int64_t base = row0;  // padded coordinate of padded[0]
  const int64_t t0 = r0 + top, t1 = r1 + top;  // target rows, padded coordinates
  std::vector<std::pair<int64_t, int64_t>> origins;
  for (int64_t y : WindowOrigins(full_h + ph, win, o.overlap)) {
    if (y >= t1 || y + win <= t0) continue;
    TORCH_CHECK(y >= base && y + win <= base + padded.size(0), "rows ", y - top, "..", y - top + win - 1,
                " of the plane are needed but not given");
    for (int64_t x : WindowOrigins(w + pw, win, o.overlap)) origins.emplace_back(y, x);
  }
  if (windows != nullptr) *windows += static_cast<int64_t>(origins.size());
  torch::Tensor sum, count = torch::zeros({1, t1 - t0, w + pw});
  for (size_t first = 0; first < origins.size(); first += o.batch) {
    const size_t n = std::min<size_t>(o.batch, origins.size() - first);
    std::vector<torch::Tensor> crops;
    for (size_t k = 0; k < n; ++k) {
      const auto [y, x] = origins[first + k];
      crops.push_back(padded.slice(0, y - base, y - base + win).slice(1, x, x + win));
    }
    const torch::Tensor logits = forward(torch::stack(crops).unsqueeze(1).to(o.device)).to(torch::kCPU, torch::kFloat);
    if (!sum.defined()) sum = torch::zeros({logits.size(1), t1 - t0, w + pw});
    for (size_t k = 0; k < n; ++k) {
      const auto [y, x] = origins[first + k];
      const int64_t a = std::max(y, t0), b = std::min(y + win, t1);
      sum.slice(1, a - t0, b - t0).slice(2, x, x + win).add_(logits[k].slice(1, a - y, b - y));
      count.slice(1, a - t0, b - t0).slice(2, x, x + win).add_(1);
    }
  }
  return (sum / count).slice(2, left, left + w).contiguous();
}

torch::Tensor SlidingWindowLogits(const WindowForward& forward, const torch::Tensor& image, const SlidingWindowOptions& o,
                                  int64_t* windows) {
  return SlidingWindowRows(forward, image, 0, image.size(0), 0, image.size(0), o, windows);
}

torch::Tensor LogitsToProbabilities(const torch::Tensor& logits) {
  return logits.size(0) == 1 ? torch::sigmoid(logits) : torch::softmax(logits, 0);
}

torch::Tensor NormalisedEntropy(const torch::Tensor& probabilities) {
  // Class by class (the working set is a few copies of one class, not of all);
  // a voxel with a NaN probability is as uncertain as it gets (1), never "certain".
  const auto term = [](const torch::Tensor& p) { return torch::where(p > 0, p * torch::log(p), torch::zeros_like(p)); };
  torch::Tensor h, unknown;
  int64_t classes = probabilities.size(0);
  if (classes == 1) {
    const torch::Tensor p = probabilities[0];
    h = term(p).add_(term(1.0 - p));
    unknown = p.isnan();
    classes = 2;
  } else {
    for (int64_t c = 0; c < classes; ++c) {
      const torch::Tensor p = probabilities[c];
      if (!h.defined()) {
        h = term(p);
        unknown = p.isnan();
      } else {
        h.add_(term(p));
        unknown.logical_or_(p.isnan());
      }
    }
  }
  return h.div_(-std::log(static_cast<double>(classes))).clamp_(0.0, 1.0).masked_fill_(unknown, 1.0);
}

namespace {

torch::Tensor Labels(const torch::Tensor& probs) {  // [C, ...] -> uint8 [...]
  return (probs.size(0) == 1 ? (probs[0] > 0.5) : probs.argmax(0)).to(torch::kByte).contiguous();
}

}  // namespace

int64_t SlabPlanesForBudget(const std::array<int64_t, 3>& shape, int64_t classes, VolumeMode mode,
                            const SlidingWindowOptions& o, int64_t budget_bytes) {
  const int64_t Z = shape[0], plane = shape[1] * shape[2];
  const int64_t c = std::max<int64_t>(1, classes);
  // One xy plane in flight: normalised input, logit sum and count, probabilities.
  const int64_t working = plane * 4 * (2 * c + 3);
  int64_t per_plane, fixed;
  if (mode == VolumeMode::kStack) {
    per_plane = plane * (1 + 1);  // input, labels (probabilities come per plane)
    fixed = working;
  } else {
    per_plane = plane * (1 + 4 * c + 1);    // input, accumulator, labels
    fixed = working + plane * std::min<int64_t>(2 * o.window, Z);  // the halo either side
  }
  const int64_t planes = (budget_bytes - fixed) / std::max<int64_t>(1, per_plane);
  return std::clamp<int64_t>(planes, 1, std::max<int64_t>(1, Z));
}

absl::StatusOr<VolumeStreamStats> PredictVolumeStreaming(const WindowForward& forward, PlaneReader& in, double mean,
                                                         double std, VolumeMode mode, const SlidingWindowOptions& o,
                                                         int64_t slab_planes, bool keep_probabilities, PlaneWriter& out,
                                                         const std::function<void(int64_t, int64_t)>& progress,
                                                         std::pair<int64_t, int64_t> z_range) {
  const auto [Z, Y, X] = in.shape();
  if (Z * Y * X == 0) return absl::InvalidArgumentError(in.source() + ": empty input volume");
  const int64_t zb = z_range.first, ze = z_range.second < 0 ? Z : z_range.second;
  if (zb < 0 || zb >= ze || ze > Z) {
    return absl::InvalidArgumentError(absl::StrCat(in.source(), ": planes [", zb, ", ", ze, ") outside 0..", Z));
  }
  const bool ortho = mode == VolumeMode::kOrthoplane;
  // A volume thinner than the window is padded along z: its xz/yz planes need all of it.
  const int64_t S = ortho && Z < o.window ? ze - zb : std::clamp<int64_t>(slab_planes, 1, ze - zb);
  VolumeStreamStats stats;
  stats.slab_planes = S;
  stats.slabs = (ze - zb + S - 1) / S;
  const int64_t total = ortho ? (ze - zb) + stats.slabs * (Y + X) : ze - zb;
  const auto normalise = [&](const torch::Tensor& u8) { return (u8.to(torch::kFloat) / 255.0 - mean) / std; };
  std::vector<uint8_t> block;
  for (int64_t z0 = zb; z0 < ze; z0 += S) {
    const int64_t z1 = std::min(ze, z0 + S), n = z1 - z0;
    const auto [lo, hi] = ortho ? SlidingWindowRowsNeeded(Z, z0, z1, o) : std::pair<int64_t, int64_t>{z0, z1};
    block.resize(static_cast<size_t>((hi - lo) * Y * X));
    RETURN_IF_ERROR(in.Read(lo, hi, block.data()), in.source());
    const torch::Tensor vol = torch::from_blob(block.data(), {hi - lo, Y, X}, torch::kByte);
    torch::Tensor acc;  // [C, n, Y, X]: summed probabilities (orthoplane, or when kept)
    torch::Tensor labels = torch::empty({n, Y, X}, torch::kByte);
    const bool accumulate = ortho || keep_probabilities;
    // xy planes.
    for (int64_t z = z0; z < z1; ++z) {
      const torch::Tensor p =
          LogitsToProbabilities(SlidingWindowLogits(forward, normalise(vol[z - lo]), o, &stats.windows));
      if (!accumulate) {
        labels[z - z0].copy_(Labels(p));
      } else {
        if (!acc.defined()) acc = torch::zeros({p.size(0), n, Y, X});  // the class count is known now
        acc.select(1, z - z0).copy_(p);
      }
      if (progress) progress(++stats.planes_predicted, total);
    }
    if (ortho) {
      // xz planes (fixed y), then yz planes (fixed x), rows z0..z1 of each.
      for (int axis : {1, 2}) {
        for (int64_t i = 0; i < (axis == 1 ? Y : X); ++i) {
          const torch::Tensor plane = normalise(vol.select(axis, i));  // [hi - lo, X or Y]
          const torch::Tensor p =
              LogitsToProbabilities(SlidingWindowRows(forward, plane, lo, Z, z0, z1, o, &stats.windows));
          acc.select(axis + 1, i).add_(p);
          if (progress) progress(++stats.planes_predicted, total);
        }
      }
      acc.div_(3.0);
    }
    if (accumulate) labels = Labels(acc);
    RETURN_IF_ERROR(out.Append(n, labels.data_ptr<uint8_t>(), keep_probabilities ? acc.data_ptr<float>() : nullptr,
                               keep_probabilities ? acc.size(0) : 0));
  }
  return stats;
}

namespace {

// Collects appended planes in memory (PredictVolume).
class VolumeSink : public PlaneWriter {
 public:
  explicit VolumeSink(VolumePrediction* out) : out_(out) {}
  absl::Status Append(int64_t n, const uint8_t* labels, const float* probabilities, int64_t channels) override {
    const auto& s = out_->labels.shape;
    std::memcpy(out_->labels.data.data() + z_ * s[1] * s[2], labels, static_cast<size_t>(n * s[1] * s[2]));
    if (probabilities != nullptr) {
      const torch::Tensor p = torch::from_blob(const_cast<float*>(probabilities), {channels, n, s[1], s[2]});
      if (!out_->probabilities.defined()) out_->probabilities = torch::empty({channels, s[0], s[1], s[2]});
      out_->probabilities.slice(1, z_, z_ + n).copy_(p);
    }
    z_ += n;
    return absl::OkStatus();
  }
  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  VolumePrediction* out_;
  int64_t z_ = 0;
};

}  // namespace

absl::StatusOr<VolumePrediction> PredictVolume(const WindowForward& forward, const Volume& raw, double mean, double std,
                                               VolumeMode mode, const SlidingWindowOptions& o, bool keep_probabilities,
                                               const std::function<void(int64_t, int64_t)>& progress) {
  VolumePrediction out;
  out.labels.shape = raw.shape;
  out.labels.spacing = raw.spacing;
  out.labels.data.assign(raw.numel(), 0);
  std::unique_ptr<PlaneReader> in = VolumePlaneReader(raw);
  VolumeSink sink(&out);
  RETURN_IF_ERROR(PredictVolumeStreaming(forward, *in, mean, std, mode, o, raw.shape[0], keep_probabilities, sink,
                                         progress)
                      .status());
  return out;
}

}  // namespace retina::trainer
