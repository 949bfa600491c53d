#include "trainer/data/augment.h"

#include <cmath>

namespace retina::trainer {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Uniform [0, 1) doubles from a torch generator, fetched in blocks.
class Uniforms {
 public:
  explicit Uniforms(torch::Generator& gen) : gen_(gen) {}
  double Next() {
    if (pos_ >= block_.size(0)) {
      block_ = torch::rand({4096}, gen_, torch::TensorOptions().dtype(torch::kDouble));
      data_ = block_.data_ptr<double>();
      pos_ = 0;
    }
    return data_[pos_++];
  }
  double Between(double lo, double hi) { return lo + (hi - lo) * Next(); }
  // Integer in [lo, hi] inclusive.
  int64_t Int(int64_t lo, int64_t hi) {
    return std::min(hi, lo + static_cast<int64_t>(Next() * static_cast<double>(hi - lo + 1)));
  }
  bool Chance(double p) { return Next() < p; }

 private:
  torch::Generator& gen_;
  torch::Tensor block_ = torch::empty({0}, torch::kDouble);
  const double* data_ = nullptr;
  int64_t pos_ = 0;
};

// Gaussian blur kernel size: 3, 5 or 7 with probabilities 1/5, 2/5, 2/5 (METHOD.md section 2).
int64_t SampleBlurKernel(Uniforms& u) {
  const double which = u.Next();
  return which < 0.2 ? 3 : (which < 0.6 ? 5 : 7);
}

// A kernel k ~ U{3..limit}, an even k taken as k + 1 (albumentations); for
// limit 7 the same distribution as SampleBlurKernel, from one draw.
int64_t SampleBlurKernel(Uniforms& u, int limit) {
  if (limit == 7) return SampleBlurKernel(u);
  const int64_t n = std::max(1, limit - 2);
  const int64_t k = 3 + std::min<int64_t>(n - 1, static_cast<int64_t>(u.Next() * n));
  return k % 2 == 0 ? k + 1 : k;
}

// Row-major 3x3 in double.
using Mat3 = std::array<double, 9>;
Mat3 Mul(const Mat3& a, const Mat3& b) {
  Mat3 c{};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 3; ++k) c[i * 3 + j] += a[i * 3 + k] * b[k * 3 + j];
  return c;
}

}  // namespace

std::array<double, 4> SampleResizedCrop(int64_t h, int64_t w, const std::vector<double>& scale,
                                        const std::vector<double>& ratio, torch::Generator& gen) {
  Uniforms u(gen);
  const double area = static_cast<double>(h * w);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = u.Between(scale[0], scale[1]) * area;
    const double aspect = std::exp(u.Between(std::log(ratio[0]), std::log(ratio[1])));
    const auto cw = static_cast<int64_t>(std::lround(std::sqrt(target * aspect)));
    const auto ch = static_cast<int64_t>(std::lround(std::sqrt(target / aspect)));
    if (cw > 0 && cw <= w && ch > 0 && ch <= h) {
      const int64_t y0 = u.Int(0, h - ch), x0 = u.Int(0, w - cw);
      return {static_cast<double>(x0), static_cast<double>(y0), static_cast<double>(cw), static_cast<double>(ch)};
    }
  }
  // Fallback: the centre crop with the aspect clamped to the range.
  const double in_ratio = static_cast<double>(w) / h;
  int64_t cw = w, ch = h;
  if (in_ratio < ratio[0]) ch = std::lround(w / ratio[0]);
  else if (in_ratio > ratio[1]) cw = std::lround(h * ratio[1]);
  return {static_cast<double>((w - cw) / 2), static_cast<double>((h - ch) / 2), static_cast<double>(cw),
          static_cast<double>(ch)};
}

torch::Tensor GeometryMatrices(const GeometryParams& p, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                               GeometryOrder order) {
  const int64_t b = p.hflip.size(0);
  torch::Tensor theta = torch::empty({b, 2, 3}, torch::kDouble);
  auto t = theta.accessor<double, 3>();
  const auto hf = p.hflip.accessor<bool, 1>(), vf = p.vflip.accessor<bool, 1>();
  const auto ang = p.angle_deg.accessor<float, 1>();
  const auto crop = p.crop.accessor<float, 2>();
  // Flips and rotation act on the input (pre-training) or on the output (fine-tuning).
  const bool crop_first = order == GeometryOrder::kCropRotateFlip;
  const int64_t rot_h = crop_first ? out_h : in_h, rot_w = crop_first ? out_w : in_w;
  const double cx = rot_w / 2.0 - 0.5, cy = rot_h / 2.0 - 0.5;  // cv2.getRotationMatrix2D centre
  // Normalised <-> pixel coordinates (align_corners = true).
  const Mat3 out_from_norm = {(out_w - 1) / 2.0, 0, (out_w - 1) / 2.0, 0, (out_h - 1) / 2.0, (out_h - 1) / 2.0, 0, 0, 1};
  const Mat3 norm_from_in = {2.0 / (in_w - 1), 0, -1, 0, 2.0 / (in_h - 1), -1, 0, 0, 1};
  for (int64_t i = 0; i < b; ++i) {
    // Output pixel -> crop in the rotated image (cv2.resize pixel-centre mapping).
    const double sx = crop[i][2] / out_w, sy = crop[i][3] / out_h;
    const Mat3 from_crop = {sx, 0, crop[i][0] + 0.5 * sx - 0.5, 0, sy, crop[i][1] + 0.5 * sy - 0.5, 0, 0, 1};
    // Rotated image -> flipped image: the inverse of cv2's rotation about the centre.
    const double a = ang[i] * kPi / 180.0, c = std::cos(a), s = std::sin(a);
    const Mat3 unrotate = {c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0, 0, 1};
    // Flipped image -> input.
    const Mat3 unflip = {hf[i] ? -1.0 : 1.0, 0, hf[i] ? rot_w - 1.0 : 0.0, 0, vf[i] ? -1.0 : 1.0, vf[i] ? rot_h - 1.0 : 0.0, 0, 0, 1};
    const Mat3 m = crop_first ? Mul(norm_from_in, Mul(from_crop, Mul(unrotate, Mul(unflip, out_from_norm))))
                              : Mul(norm_from_in, Mul(unflip, Mul(unrotate, Mul(from_crop, out_from_norm))));
    for (int r = 0; r < 2; ++r)
      for (int k = 0; k < 3; ++k) t[i][r][k] = m[r * 3 + k];
  }
  return theta.to(torch::kFloat);
}

torch::Tensor WarpBatch(const torch::Tensor& x, const torch::Tensor& theta, int64_t out_h, int64_t out_w,
                        bool nearest) {
  namespace F = torch::nn::functional;
  if (x.size(2) == out_h && x.size(3) == out_w) {
    const torch::Tensor identity = torch::tensor({1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f}).view({1, 2, 3});
    if (theta.to(torch::kCPU, torch::kFloat).eq(identity).all().item<bool>()) return x;
  }
  const torch::Tensor grid = F::affine_grid(theta.to(x.device(), x.scalar_type()),
                                            {x.size(0), x.size(1), out_h, out_w}, /*align_corners=*/true);
  F::GridSampleFuncOptions options;
  options.padding_mode(torch::kReflection).align_corners(true);
  if (nearest) options.mode(torch::kNearest);
  else options.mode(torch::kBilinear);
  return F::grid_sample(x, grid, options);
}

torch::Tensor GaussianKernel1d(int k) {
  const double sigma = 0.3 * ((k - 1) / 2.0 - 1) + 0.8;
  torch::Tensor x = torch::arange(k, torch::kDouble) - (k - 1) / 2.0;
  torch::Tensor g = torch::exp(-(x * x) / (2 * sigma * sigma));
  return (g / g.sum()).to(torch::kFloat);
}

PretrainAugmenter::PretrainAugmenter(PretrainAugmentConfig config, double mean, double std, int64_t out_size,
                                     torch::Dtype dtype)
    : c_(std::move(config)), mean_(mean), std_(std), out_size_(out_size), dtype_(dtype) {}

GeometryParams PretrainAugmenter::SampleGeometry(int64_t b, int64_t h, int64_t w, torch::Generator& gen) const {
  GeometryParams p = GeometryParams::ForBatch(b);
  Uniforms u(gen);
  for (int64_t i = 0; i < b; ++i) {
    p.hflip[i] = u.Chance(c_.hflip_p);
    p.vflip[i] = u.Chance(c_.vflip_p);
    if (u.Chance(c_.rotate_p)) p.angle_deg[i] = static_cast<float>(u.Between(-c_.rotate_limit, c_.rotate_limit));
    const auto crop = SampleResizedCrop(h, w, c_.crop_scale, c_.crop_ratio, gen);
    for (int k = 0; k < 4; ++k) p.crop[i][k] = static_cast<float>(crop[k]);
  }
  return p;
}

namespace {
// Parameters that change nothing, for `b` samples with room for `max_holes` holes.
CorruptionParams NoCorruption(int64_t b, int64_t max_holes) {
  CorruptionParams p;
  p.bc_apply = torch::zeros({b}, torch::kBool);
  p.alpha = torch::ones({b}, torch::kFloat);
  p.beta = torch::zeros({b}, torch::kFloat);
  p.noise_apply = torch::zeros({b}, torch::kBool);
  p.noise_sigma = torch::zeros({b}, torch::kFloat);
  p.blur_kernel = torch::zeros({b}, torch::kLong);
  p.holes = torch::zeros({b}, torch::kLong);
  p.hole_yx = torch::zeros({b, std::max<int64_t>(1, max_holes), 2}, torch::kLong);
  return p;
}
}  // namespace

CorruptionParams PretrainAugmenter::SampleCorruption(int64_t b, int64_t h, int64_t w, torch::Generator& gen) const {
  const auto max_holes = static_cast<int64_t>(c_.dropout_holes[1]);
  CorruptionParams p = NoCorruption(b, max_holes);
  Uniforms u(gen);
  for (int64_t i = 0; i < b; ++i) {
    const bool bc = u.Chance(c_.brightness_contrast_p);
    p.bc_apply[i] = bc;
    const double alpha = 1.0 + u.Between(-c_.contrast_limit, c_.contrast_limit);
    const double beta = u.Between(-c_.brightness_limit, c_.brightness_limit) * 255.0;
    if (bc) {
      p.alpha[i] = static_cast<float>(alpha);
      p.beta[i] = static_cast<float>(beta);
    }
    const bool noise = u.Chance(c_.noise_p);
    p.noise_apply[i] = noise;
    const double var = u.Between(c_.noise_var[0], c_.noise_var[1]);
    if (noise) p.noise_sigma[i] = static_cast<float>(std::sqrt(var));
    const bool blur = u.Chance(c_.blur_p);
    const int64_t kernel = SampleBlurKernel(u);  // drawn either way: the stream stays aligned
    if (blur) p.blur_kernel[i] = kernel;
    if (u.Chance(c_.dropout_p)) {
      const int64_t n = u.Int(static_cast<int64_t>(c_.dropout_holes[0]), max_holes);
      p.holes[i] = n;
      for (int64_t k = 0; k < n; ++k) {
        p.hole_yx[i][k][0] = u.Int(0, h - c_.dropout_size);
        p.hole_yx[i][k][1] = u.Int(0, w - c_.dropout_size);
      }
    }
  }
  return p;
}

torch::Tensor PretrainAugmenter::Corrupt(const torch::Tensor& grey, const CorruptionParams& p,
                                         torch::Generator* noise_gen) const {
  return ApplyCorruption(grey, p, c_.dropout_size, noise_gen);
}

torch::Tensor ApplyCorruption(const torch::Tensor& grey, const CorruptionParams& p, int64_t dropout_size,
                              torch::Generator* noise_gen) {
  const auto dev = grey.device();
  const int64_t b = grey.size(0), h = grey.size(2), w = grey.size(3);
  auto col = [&](const torch::Tensor& t) { return t.to(dev).view({b, 1, 1, 1}); };
  // Brightness/contrast: v' = clip(alpha v + beta).
  torch::Tensor x = torch::clamp(grey * col(p.alpha) + col(p.beta), 0, 255);
  // Gaussian noise (sigma 0 where not applied), clipped.
  if (p.noise_apply.any().item<bool>()) {
    torch::Tensor noise = noise_gen != nullptr && dev.is_cpu() ? torch::randn(x.sizes(), *noise_gen, x.options())
                                                                 : torch::randn(x.sizes(), x.options());
    x = torch::clamp(x + noise * col(p.noise_sigma), 0, 255);
  }
  // Gaussian blur: one 7x7 kernel per sample (a delta where not applied),
  // reflect-101 borders, as a grouped convolution.
  const auto kernels = p.blur_kernel.accessor<int64_t, 1>();
  bool any_blur = false;
  torch::Tensor weight = torch::zeros({b, 1, 7, 7}, torch::kFloat);
  for (int64_t i = 0; i < b; ++i) {
    const int k = static_cast<int>(kernels[i]);
    if (k == 0) {
      weight[i][0][3][3] = 1.0f;
      continue;
    }
    any_blur = true;
    const torch::Tensor g = GaussianKernel1d(k);
    const int off = (7 - k) / 2;
    weight[i][0].slice(0, off, off + k).slice(1, off, off + k).copy_(torch::outer(g, g));
  }
  if (any_blur) {
    namespace F = torch::nn::functional;
    torch::Tensor padded = F::pad(x.view({1, b, h, w}), F::PadFuncOptions({3, 3, 3, 3}).mode(torch::kReflect));
    namespace F2 = torch::nn::functional;
    x = F2::conv2d(padded, weight.to(dev), F2::Conv2dFuncOptions().groups(b)).view({b, 1, h, w});
  }
  // Coarse dropout: holes of dropout_size^2 set to 0.
  if (p.holes.gt(0).any().item<bool>()) {
    const int64_t k = p.hole_yx.size(1), s = dropout_size;
    const torch::Tensor valid = torch::arange(k).view({1, k}) < p.holes.view({b, 1});      // [B, K]
    const torch::Tensor y0 = p.hole_yx.select(2, 0), x0 = p.hole_yx.select(2, 1);          // [B, K]
    const torch::Tensor ys = torch::arange(h).view({1, 1, h}), xs = torch::arange(w).view({1, 1, w});
    const torch::Tensor in_y = ((ys >= y0.unsqueeze(2)) & (ys < (y0 + s).unsqueeze(2)) & valid.unsqueeze(2)).to(torch::kFloat);
    const torch::Tensor in_x = ((xs >= x0.unsqueeze(2)) & (xs < (x0 + s).unsqueeze(2))).to(torch::kFloat);
    const torch::Tensor covered = torch::bmm(in_y.transpose(1, 2), in_x) > 0;              // [B, H, W]
    x = x.masked_fill(covered.to(dev).view({b, 1, h, w}), 0.0);
  }
  return x;
}

PretrainBatch PretrainAugmenter::operator()(const torch::Tensor& raw_u8, torch::Generator& gen) const {
  TORCH_CHECK(raw_u8.dim() == 3 && raw_u8.scalar_type() == torch::kByte, "expected a uint8 [B, H, W] batch");
  const int64_t b = raw_u8.size(0), h = raw_u8.size(1), w = raw_u8.size(2);
  PretrainBatch out;
  out.geometry = SampleGeometry(b, h, w, gen);
  out.corruption = SampleCorruption(b, out_size_, out_size_, gen);
  const torch::Tensor grey = raw_u8.unsqueeze(1).to(torch::kFloat);
  const torch::Tensor target = WarpBatch(grey, GeometryMatrices(out.geometry, h, w, out_size_, out_size_),
                                         out_size_, out_size_, /*nearest=*/false);
  const torch::Tensor input = Corrupt(target, out.corruption, &gen);
  const double scale = 1.0 / (255.0 * std_), shift = mean_ / std_;
  out.target = target.to(dtype_) * scale - shift;
  out.input = input.to(dtype_) * scale - shift;
  return out;
}

}  // namespace retina::trainer

namespace retina::trainer {

FinetuneAugmenter::FinetuneAugmenter(FinetuneConfig config, double mean, double std, int64_t out_size,
                                     torch::Dtype dtype)
    : c_(std::move(config)), mean_(mean), std_(std), out_size_(out_size), dtype_(dtype) {}

GeometryParams FinetuneAugmenter::SampleGeometry(const torch::Tensor& masks_u8, torch::Generator& gen) const {
  const int64_t b = masks_u8.size(0), h = masks_u8.size(1), w = masks_u8.size(2);
  GeometryParams p = GeometryParams::ForBatch(b);
  Uniforms u(gen);
  const torch::Tensor masks_cpu = masks_u8.to(torch::kCPU);
  const double side = static_cast<double>(out_size_);
  for (int64_t i = 0; i < b; ++i) {
    // METHOD.md section 3: "random resized crop 224 (as above)"; crop: random
    // (or the crop_p miss) is a plain crop of the output size at a random place.
    std::array<double, 4> crop;
    if (c_.crop == CropKind::kResized && (c_.crop_p >= 1.0 || u.Chance(c_.crop_p))) {  // p 1 draws nothing: the stream stays as before
      crop = SampleResizedCrop(h, w, c_.crop_scale, c_.crop_ratio, gen);
    } else {
      const double cw = std::min<double>(side, w), ch = std::min<double>(side, h);
      crop = {static_cast<double>(u.Int(0, w - static_cast<int64_t>(cw))),
              static_cast<double>(u.Int(0, h - static_cast<int64_t>(ch))), cw, ch};
    }
    if (u.Chance(c_.foreground_crop_p)) {
      const torch::Tensor fg = masks_cpu[i].flatten().nonzero();
      if (fg.size(0) > 0) {
        const int64_t at = fg[u.Int(0, fg.size(0) - 1)][0].item<int64_t>();
        const double cy = static_cast<double>(at / w), cx = static_cast<double>(at % w);
        crop[0] = std::clamp(std::round(cx - crop[2] / 2), 0.0, w - crop[2]);
        crop[1] = std::clamp(std::round(cy - crop[3] / 2), 0.0, h - crop[3]);
      }
    }
    for (int k = 0; k < 4; ++k) p.crop[i][k] = static_cast<float>(crop[k]);
    double angle = u.Chance(c_.rotate_p) ? u.Between(-c_.rotate_limit, c_.rotate_limit) : 0.0;
    if (c_.rotate90_p > 0 && u.Chance(c_.rotate90_p)) angle += 90.0 * static_cast<double>(u.Int(0, 3));
    p.angle_deg[i] = static_cast<float>(angle);
    p.hflip[i] = u.Chance(c_.hflip_p);
    p.vflip[i] = u.Chance(c_.vflip_p);
  }
  return p;
}

FinetuneBatch FinetuneAugmenter::operator()(const torch::Tensor& images_u8, const torch::Tensor& masks_u8,
                                            torch::Generator& gen) const {
  TORCH_CHECK(images_u8.sizes() == masks_u8.sizes() && images_u8.dim() == 3, "image and mask batches differ in shape");
  namespace F = torch::nn::functional;
  torch::Tensor images = images_u8.unsqueeze(1).to(torch::kFloat);
  torch::Tensor masks = masks_u8.unsqueeze(1).to(torch::kFloat);
  // Pad to pad_to (default: the output size), centred, reflect-101.
  const int64_t pad_to = c_.pad_to > 0 ? std::max<int64_t>(c_.pad_to, out_size_) : out_size_;
  const int64_t ph = std::max<int64_t>(0, pad_to - images.size(2)), pw = std::max<int64_t>(0, pad_to - images.size(3));
  if (ph > 0 || pw > 0) {
    const auto pad = F::PadFuncOptions({pw / 2, pw - pw / 2, ph / 2, ph - ph / 2}).mode(torch::kReflect);
    images = F::pad(images, pad);
    masks = F::pad(masks, pad);
  }
  const int64_t b = images.size(0), h = images.size(2), w = images.size(3);
  FinetuneBatch out;
  out.geometry = SampleGeometry(masks.squeeze(1).to(torch::kByte), gen);
  const torch::Tensor theta = GeometryMatrices(out.geometry, h, w, out_size_, out_size_, GeometryOrder::kCropRotateFlip);
  torch::Tensor image = WarpBatch(images, theta, out_size_, out_size_, /*nearest=*/false);
  out.mask = WarpBatch(masks, theta, out_size_, out_size_, /*nearest=*/true).squeeze(1).round().to(torch::kLong);
  // Intensity changes, image only.
  CorruptionParams p = NoCorruption(b, 0);
  Uniforms u(gen);
  const double noise_p = c_.noise_blur ? std::max(c_.noise_p, 0.5) : c_.noise_p;
  const double blur_p = c_.noise_blur ? std::max(c_.blur_p, 0.5) : c_.blur_p;
  for (int64_t i = 0; i < b; ++i) {
    if (u.Chance(c_.brightness_contrast_p)) {
      p.bc_apply[i] = true;
      p.alpha[i] = static_cast<float>(1 + u.Between(-c_.contrast_limit, c_.contrast_limit));
      p.beta[i] = static_cast<float>(u.Between(-c_.brightness_limit, c_.brightness_limit) * 255);
    } else {
      p.bc_apply[i] = false;
    }
    if (noise_p > 0 && u.Chance(noise_p)) {
      p.noise_apply[i] = true;
      p.noise_sigma[i] = static_cast<float>(std::sqrt(u.Between(c_.noise_var[0], c_.noise_var[1])));
    }
    if (blur_p > 0 && u.Chance(blur_p)) p.blur_kernel[i] = SampleBlurKernel(u, c_.blur_limit);
  }
  image = ApplyCorruption(image, p, 16, &gen);
  out.image = image.to(dtype_) * (1.0 / (255.0 * std_)) - mean_ / std_;
  return out;
}

}  // namespace retina::trainer
