// Import of Google's R50+ViT-B_16 ImageNet-21k checkpoint (.npz, the JAX/Flax
// layout TransUNet's load_from reads) into our state-dict names, with the
// conversions of METHOD.md section 1:
//   conv kernels HWIO -> OIHW; Dense kernels [in, out] -> [out, in];
//   attention q/k/v kernels [hidden, heads, d] -> [hidden, hidden]^T, their
//   biases [heads, d] -> [hidden]; out kernel [heads, d, hidden] -> ^T;
//   GroupNorm/LayerNorm scale -> weight; position embedding: class token
//   dropped, the grid resized bilinearly (align_corners, like the
//   reference's scipy zoom of order 1) when the image size differs.
// The result holds the trunk, patch/position embeddings and the whole
// encoder: load it with TransferPretrained (the decoder starts fresh).
#pragma once

#include <filesystem>

#include "absl/status/statusor.h"
#include "trainer/model/model_config.h"
#include "trainer/model/weights/state_dict.h"

namespace retina::trainer {

absl::StatusOr<StateDict> ImportViTNpz(const std::filesystem::path& path, const TransUNetConfig& config);

}  // namespace retina::trainer
