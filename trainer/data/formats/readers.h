// Readers for the files EM users have: PNG and TIFF (2D, 8/16/32-bit, and
// multi-page TIFF stacks), HDF5 datasets ("file.h5:/volumes/raw"), NIfTI
// (.nii, .nii.gz) and NRRD (.nrrd, .nhdr; raw or gzip). Each returns the
// array as stored (RawArray: dtype, z/y/x shape, spacing) for ToImage/ToMask.
//
// Libraries: libpng, libtiff, HDF5, niftilib (libnifti2), teem (nrrd).
// Axes: 2D images are z = 1; TIFF pages are z; HDF5 datasets are (z, y, x)
// or (y, x) as stored (the EM convention, e.g. CREMI); NIfTI and NRRD index
// x fastest, so their (i, j, k) map to (x, y, z).
// Spacing: TIFF X/YResolution (and ImageJ's "spacing=" for z), HDF5
// attributes "resolution" or "element_size_um" (z, y, x), NIfTI pixdim,
// NRRD spacings or space directions.
// Errors name the file (and dataset) and what is wrong; nothing aborts.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "trainer/data/formats/array.h"

namespace retina::trainer {

// Dispatches on the extension; an HDF5 spec is "path.h5:/dataset".
absl::StatusOr<RawArray> ReadArray(const std::string& spec);

absl::StatusOr<RawArray> ReadPng(const std::string& path);
absl::StatusOr<RawArray> ReadTiff(const std::string& path);
absl::StatusOr<RawArray> ReadHdf5(const std::string& path, const std::string& dataset);
absl::StatusOr<RawArray> ReadNifti(const std::string& path);
absl::StatusOr<RawArray> ReadNrrd(const std::string& path);

// Plane-wise access to an image volume (uint8, z, y, x) that may not fit in
// memory: uint8 HDF5 datasets (hyperslabs) and uint8 TIFF stacks (pages) are
// read from the file on demand; every other format or dtype is read whole and
// converted with ToImage, and then held (streaming() is false).
class PlaneReader {
 public:
  virtual ~PlaneReader() = default;
  const std::array<int64_t, 3>& shape() const { return header_.shape; }
  const std::array<double, 3>& spacing() const { return header_.spacing; }
  bool has_spacing() const { return header_.has_spacing; }
  const std::string& unit() const { return header_.unit; }
  const std::string& source() const { return header_.source; }
  virtual bool streaming() const = 0;
  // Copies planes [z0, z1) (0 <= z0 < z1 <= shape[0]) into dst, which holds
  // (z1 - z0) * shape[1] * shape[2] bytes.
  virtual absl::Status Read(int64_t z0, int64_t z1, uint8_t* dst) = 0;

 protected:
  RawArray header_;  // no bytes
};

absl::StatusOr<std::unique_ptr<PlaneReader>> OpenPlaneReader(const std::string& spec, IntensityScaling scaling);
// Reads from `volume`, which must outlive the reader.
std::unique_ptr<PlaneReader> VolumePlaneReader(const Volume& volume);

// The streaming readers of the formats that have one (tiff.cc, hdf5.cc): null
// when the file holds another dtype than uint8 (OpenPlaneReader then reads it
// whole and converts it).
absl::StatusOr<std::unique_ptr<PlaneReader>> OpenTiffPlaneReader(const std::string& path);
absl::StatusOr<std::unique_ptr<PlaneReader>> OpenHdf5PlaneReader(const std::string& path, const std::string& dataset);

// True when the file name has an extension ReadArray knows (for folder scans).
bool IsReadableImageName(const std::string& name);

}  // namespace retina::trainer
