// NIfTI-1/2 (.nii, .nii.gz; niftilib): (i, j, k) are (x, y, z); spacing from pixdim.
#include <nifti2_io.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <optional>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/data/formats/format_util.h"
#include "common/read_scope.h"
#include "trainer/data/formats/readers.h"

namespace retina::trainer {

absl::StatusOr<RawArray> ReadNifti(const std::string& path) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  RETURN_IF_ERROR(CheckRead(path, path));
  nifti_set_debug_level(0);
  // The header first: the data file it names (a two-file header's .img)
  // goes through the read scope, and the size it declares is checked,
  // before niftilib opens or allocates anything.
  std::unique_ptr<nifti_image, void (*)(nifti_image*)> img(nifti_image_read(path.c_str(), 0), &nifti_image_free);
  if (!img || img->iname == nullptr) return absl::DataLossError(absl::StrCat(path, ": not a readable NIfTI file"));
  RETURN_IF_ERROR(CheckRead(absl::StrCat(path, ": image file"), img->iname));
  {
    std::error_code ec;
    const uintmax_t size = std::filesystem::file_size(img->iname, ec);
    const bool raw = !ec && nifti_is_gzfile(img->iname) == 0 && img->iname_offset >= 0 &&
                     static_cast<uintmax_t>(img->iname_offset) <= size;
    // What niftilib will allocate: nvox (the product of dim[1..dim[0]]) x nbyper.
    const int64_t ndim = std::clamp<int64_t>(img->dim[0], 1, 7);
    uint64_t nvox = 1;
    for (int64_t i = 1; i <= ndim; ++i) {
      if (img->dim[i] < 0 || (img->dim[i] > 0 && nvox > UINT64_MAX / static_cast<uint64_t>(img->dim[i]))) {
        return absl::DataLossError(absl::StrCat(path, ": dim[", i, "] = ", img->dim[i], " overflows"));
      }
      nvox *= static_cast<uint64_t>(img->dim[i]);
    }
    if (img->nvox < 0 || static_cast<uint64_t>(img->nvox) != nvox) {
      return absl::DataLossError(absl::StrCat(path, ": dim: ", img->nvox, " voxels declared, the sizes make ", nvox));
    }
    RETURN_IF_ERROR(DeclaredBytes(path, "dim", {img->nx, img->ny, img->nz, img->nt, img->nu, img->nv, img->nw},
                                  static_cast<uint64_t>(std::max(img->nbyper, 1)),
                                  raw ? std::optional<uint64_t>(size - img->iname_offset) : std::nullopt)
                        .status());
    RETURN_IF_ERROR(DeclaredBytes(path, "dim (all axes)", {img->nvox}, static_cast<uint64_t>(std::max(img->nbyper, 1)),
                                  raw ? std::optional<uint64_t>(size - img->iname_offset) : std::nullopt)
                        .status());
  }
  if (nifti_image_load(img.get()) != 0 || img->data == nullptr) {
    return absl::DataLossError(absl::StrCat(path, ": not a readable NIfTI file (its data could not be read from ",
                                            img->iname, ")"));
  }
  if (img->ndim > 3 && (img->nt > 1 || img->nu > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": NIfTI has ", img->ndim, " dimensions; expected 2 or 3"));
  }
  RawArray out;
  out.source = path;
  switch (img->datatype) {
    case DT_UINT8: out.dtype = DType::kUInt8; break;
    case DT_INT8: out.dtype = DType::kInt8; break;
    case DT_UINT16: out.dtype = DType::kUInt16; break;
    case DT_INT16: out.dtype = DType::kInt16; break;
    case DT_UINT32: out.dtype = DType::kUInt32; break;
    case DT_INT32: out.dtype = DType::kInt32; break;
    case DT_UINT64: out.dtype = DType::kUInt64; break;
    case DT_INT64: out.dtype = DType::kInt64; break;
    case DT_FLOAT32: out.dtype = DType::kFloat32; break;
    case DT_FLOAT64: out.dtype = DType::kFloat64; break;
    default:
      return absl::UnimplementedError(absl::StrCat(path, ": unsupported NIfTI datatype ", img->datatype));
  }
  out.shape = {std::max<int64_t>(1, img->nz), std::max<int64_t>(1, img->ny), std::max<int64_t>(1, img->nx)};
  const size_t n = static_cast<size_t>(out.numel()) * DTypeSize(out.dtype);
  out.bytes.assign(static_cast<uint8_t*>(img->data), static_cast<uint8_t*>(img->data) + n);
  out.spacing = {img->nz > 1 ? img->dz : 1.0, img->dy, img->dx};
  out.has_spacing = img->dx > 0 && img->dy > 0;
  return out;
}

}  // namespace retina::trainer
