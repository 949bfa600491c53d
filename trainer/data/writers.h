// Writers for uint8 volumes: TIFF (one page per z plane, with X/Y resolution
// and ImageJ's z spacing when known) and PNG (a single plane).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "trainer/data/array.h"

namespace retina::trainer {

// Atomic: written to a temporary beside `path`, fsynced, renamed.
absl::Status WriteTiff(const std::string& path, const Volume& volume, bool write_spacing);

// An HDF5 file with one uint8 (z, y, x) dataset per named volume, each with
// attribute "resolution" = its spacing (what ReadHdf5 reads back), and, when
// `probabilities` is given, a float32 dataset "probabilities" [C, Z, Y, X]
// shaped like the first volume. Atomic like WriteTiff.
absl::Status WriteHdf5Volumes(const std::string& path,
                              const std::vector<std::pair<std::string, const Volume*>>& volumes,
                              const float* probabilities = nullptr, int64_t channels = 0);

}  // namespace retina::trainer
