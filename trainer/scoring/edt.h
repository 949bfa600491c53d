// Exact Euclidean distance transforms (Felzenszwalb & Huttenlocher 2012):
// separable lower envelopes of parabolas along each axis, O(voxels), with
// anisotropic spacing. Torch-free.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace retina::trainer {

// For a z, y, x volume (2D: z = 1) returns, for every voxel, the squared
// Euclidean distance (in spacing units) to the nearest voxel where
// `features` is non-zero; +infinity everywhere when there is none.
std::vector<double> SquaredDistanceTransform(const uint8_t* features, const std::array<int64_t, 3>& shape,
                                             const std::array<double, 3>& spacing);

}  // namespace retina::trainer
