// Reading NumPy .npy arrays and .npz archives (stored or deflated, as written
// by numpy.savez / numpy.savez_compressed) into CPU tensors.
// Supported dtypes: little-endian float32/float64 (read as float32 or
// float64), int32/int64, uint8, bool. C order, or Fortran order (transposed
// back). Errors name the file and the array.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace retina::trainer {

// One .npy payload. `source` names it in errors.
absl::StatusOr<torch::Tensor> ParseNpy(const std::string& bytes, const std::string& source);

// Every array of an .npz, keyed by name without the ".npy" suffix.
absl::StatusOr<std::map<std::string, torch::Tensor>> ReadNpz(const std::filesystem::path& path);

}  // namespace retina::trainer
