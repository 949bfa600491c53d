// Augmentation as batched tensor operations on the training device (CPU or
// CUDA), METHOD.md sections 2-3, albumentations 1.3.1 semantics.
//
// Per-sample random parameters are drawn on the CPU from a generator seeded by
// the caller (seed, rank, step), so a run is reproducible; per-pixel noise is
// drawn on the batch's device (bitwise reproducible on CPU).
//
// Geometry is one affine warp per sample: horizontal/vertical flip, rotation
// about the centre and the random resized crop are composed into a single
// 2x3 matrix and applied with grid_sample (bilinear for images, nearest for
// masks; border: reflect-101, as albumentations' default BORDER_REFLECT_101).
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "common/job_config.h"

namespace retina::trainer {

// Per-sample parameters of one batch (exposed for tests and reproducibility).
struct GeometryParams {
  torch::Tensor hflip, vflip;           // [B] bool
  torch::Tensor angle_deg;              // [B] float, 0 where no rotation
  torch::Tensor crop;                   // [B, 4] float: x0, y0, w, h in input pixels

  // Tensors for a batch of b, to be filled per sample (angles start at 0).
  static GeometryParams ForBatch(int64_t b) {
    return {torch::empty({b}, torch::kBool), torch::empty({b}, torch::kBool), torch::zeros({b}, torch::kFloat),
            torch::empty({b, 4}, torch::kFloat)};
  }
};

struct CorruptionParams {
  torch::Tensor bc_apply, alpha, beta;  // [B] bool, [B] contrast, [B] brightness (grey levels)
  torch::Tensor noise_apply, noise_sigma;  // [B] bool, [B] grey levels
  torch::Tensor blur_kernel;            // [B] int: 0 (none), 3, 5 or 7
  torch::Tensor holes;                  // [B] int: number of dropout holes (0 = none)
  torch::Tensor hole_yx;                // [B, max_holes, 2] int: top-left corners
};

// Draws a random resized crop (area fraction U(scale), aspect ratio
// log-uniform(ratio), up to 10 tries, else the centre crop of the largest
// in-range aspect) for an H x W image; returns x0, y0, w, h.
std::array<double, 4> SampleResizedCrop(int64_t h, int64_t w, const std::vector<double>& scale,
                                        const std::vector<double>& ratio, torch::Generator& gen);

// The 2x3 affine matrices [B, 2, 3] (normalised coordinates, align_corners)
// that map an out_h x out_w output onto the in_h x in_w input for `p`.
// Order kFlipRotateCrop (pre-training): flips and rotation act on the input,
// then the crop is resized to the output. Order kCropRotateFlip
// (fine-tuning): the crop is resized first, then rotated and flipped.
enum class GeometryOrder { kFlipRotateCrop, kCropRotateFlip };
torch::Tensor GeometryMatrices(const GeometryParams& p, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                               GeometryOrder order = GeometryOrder::kFlipRotateCrop);

// Brightness/contrast, noise, blur and coarse dropout of `p` applied to a
// [B, 1, H, W] grey-level (0..255) float batch, in that order.
torch::Tensor ApplyCorruption(const torch::Tensor& grey, const CorruptionParams& p, int64_t dropout_size,
                              torch::Generator* noise_gen);

// Warps [B, C, H, W] float images (bilinear) or masks (nearest). An identity
// warp (every theta exactly [[1, 0, 0], [0, 1, 0]], output size = input size)
// returns x unchanged: grid_sample would round it.
torch::Tensor WarpBatch(const torch::Tensor& x, const torch::Tensor& theta, int64_t out_h, int64_t out_w,
                        bool nearest);

// Pre-training (METHOD.md section 2): from a uint8 batch [B, H, W] (any
// device) returns the normalised corrupted input and the normalised target,
// both [B, 1, S, S] float, S = out_size.
struct PretrainBatch {
  torch::Tensor input, target;
  GeometryParams geometry;
  CorruptionParams corruption;
};

class PretrainAugmenter {
 public:
  // `dtype`: of the normalised outputs (the augmentation itself runs in float32).
  PretrainAugmenter(PretrainAugmentConfig config, double mean, double std, int64_t out_size,
                    torch::Dtype dtype = torch::kFloat);
  PretrainBatch operator()(const torch::Tensor& raw_u8, torch::Generator& gen) const;

  GeometryParams SampleGeometry(int64_t batch, int64_t h, int64_t w, torch::Generator& gen) const;
  CorruptionParams SampleCorruption(int64_t batch, int64_t h, int64_t w, torch::Generator& gen) const;
  // Applies the corruptions to a [B, 1, H, W] grey-level (0..255) float batch.
  torch::Tensor Corrupt(const torch::Tensor& grey, const CorruptionParams& p, torch::Generator* noise_gen) const;

 private:
  PretrainAugmentConfig c_;
  double mean_, std_;
  int64_t out_size_;
  torch::Dtype dtype_;
};

// Fine-tuning (METHOD.md section 3), image and mask together: a crop of the
// random-resized-crop size (centred on a random foreground pixel with
// probability foreground_crop_p when the mask has one), rotation, flips;
// brightness/contrast on the image only; noise + blur when noise_blur (Guay);
// normalisation. Inputs smaller than out_size are reflect-101 padded (centred).
// Returns image [B, 1, S, S] float and mask [B, S, S] int64.
struct FinetuneBatch {
  torch::Tensor image, mask;
  GeometryParams geometry;
};

class FinetuneAugmenter {
 public:
  // `dtype`: of the normalised image (the augmentation itself runs in float32).
  FinetuneAugmenter(FinetuneConfig config, double mean, double std, int64_t out_size,
                    torch::Dtype dtype = torch::kFloat);
  FinetuneBatch operator()(const torch::Tensor& images_u8, const torch::Tensor& masks_u8, torch::Generator& gen) const;
  // The geometry for masks [B, H, W] (uses their foreground).
  GeometryParams SampleGeometry(const torch::Tensor& masks_u8, torch::Generator& gen) const;

 private:
  FinetuneConfig c_;
  double mean_, std_;
  int64_t out_size_;
  torch::Dtype dtype_;
};

// The Gaussian kernel OpenCV uses for size k and sigma 0:
// sigma = 0.3 ((k - 1) / 2 - 1) + 0.8, normalised to sum 1.
torch::Tensor GaussianKernel1d(int k);

}  // namespace retina::trainer
