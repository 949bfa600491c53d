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

#include <string>

#include "absl/status/statusor.h"
#include "trainer/data/array.h"

namespace retina::trainer {

// Dispatches on the extension; an HDF5 spec is "path.h5:/dataset".
absl::StatusOr<RawArray> ReadArray(const std::string& spec);

absl::StatusOr<RawArray> ReadPng(const std::string& path);
absl::StatusOr<RawArray> ReadTiff(const std::string& path);
absl::StatusOr<RawArray> ReadHdf5(const std::string& path, const std::string& dataset);
absl::StatusOr<RawArray> ReadNifti(const std::string& path);
absl::StatusOr<RawArray> ReadNrrd(const std::string& path);

// True when the file name has an extension ReadArray knows (for folder scans).
bool IsReadableImageName(const std::string& name);

}  // namespace retina::trainer
