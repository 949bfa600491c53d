// Writers for uint8 volumes: TIFF (one page per z plane, with X/Y resolution
// and ImageJ's z spacing when known) and PNG (a single plane).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/data/formats/array.h"

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

// Writes a label volume plane by plane, in z order, for outputs too large to
// hold: .tif/.tiff (one page per plane; BigTIFF past 3.5 GiB) or .h5/.hdf5
// (uint8 dataset "labels" with "resolution", and with `channels` > 0 a float32
// dataset "probabilities" [C, Z, Y, X]; both chunked by plane). Nothing exists
// at `path` until Finish() succeeds (temporary beside it, fsync, rename); a
// writer destroyed unfinished removes its temporary.
class PlaneWriter {
 public:
  virtual ~PlaneWriter() = default;
  // Appends n planes: labels n * Y * X, probabilities [channels, n, Y, X]
  // (nullptr, and channels 0, when the writer was opened without them).
  virtual absl::Status Append(int64_t n, const uint8_t* labels, const float* probabilities, int64_t channels) = 0;
  // Fails unless exactly shape[0] planes were appended.
  virtual absl::Status Finish() = 0;
};

// Units: `unit` is the spacing's ("nm", "um"; "" = unknown). TIFF keeps it as
// ImageJ's "unit=" (so Fiji shows calibrated sizes); HDF5 writes it as the
// string attribute "unit" beside "resolution", and "element_size_um" (the
// Fiji/ilastik convention) when the unit converts to micrometres; the
// probabilities carry the same attributes. HDF5 datasets are gzip-compressed
// (level 1; h5py and every HDF5 build read it).
absl::StatusOr<std::unique_ptr<PlaneWriter>> OpenPlaneWriter(const std::string& path, std::array<int64_t, 3> shape,
                                                             std::array<double, 3> spacing, bool write_spacing,
                                                             int64_t channels, const std::string& unit = "");

// Micrometres per `unit` ("nm" 1e-3, "um" 1, ...); nullopt when unknown.
std::optional<double> MicrometresPer(const std::string& unit);

}  // namespace retina::trainer
