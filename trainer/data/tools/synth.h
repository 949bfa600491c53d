// Synthetic EM-like data for demos and tests, on any machine (no downloads).
//
// A volume (z, y, x; a 2D image is z = 1) is built in physical units
// (spacing z, y, x) from:
//   cells       a Voronoi tessellation; voxels near a boundary between two
//               cells are dark membrane, cell interiors mid-grey with a
//               per-cell tone and low-frequency texture;
//   mitochondria  randomly oriented ellipsoids, dark with a darker outer
//               membrane and light cristae stripes across the long axis
//               (mask class 1);
//   vesicles    small spheres, light lumen and dark rim (class 2 when
//               classes >= 3, else background);
// then an in-plane Gaussian blur and Gaussian noise. Deterministic for a seed.
#pragma once

#include <array>
#include <cstdint>

#include "trainer/data/formats/array.h"

namespace retina::trainer {

struct SynthOptions {
  std::array<int64_t, 3> shape{16, 256, 256};
  std::array<double, 3> spacing{1, 1, 1};
  uint64_t seed = 0;
  int classes = 2;              // 2: background / mitochondria; 3: + vesicles
  double cell_diameter = 90;    // in-plane, pixels
  double mitochondria_per_cell = 2.5;
  double vesicles_per_cell = 12;
  double blur_sigma = 1.0;      // in-plane, pixels
  double noise_sigma = 16;      // grey levels
};

struct SynthVolume {
  Volume image;  // uint8 grey levels
  Volume mask;   // class indices
};

SynthVolume Synthesize(const SynthOptions& options);

}  // namespace retina::trainer
