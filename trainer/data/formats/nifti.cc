// NIfTI-1/2 (.nii, .nii.gz; niftilib): (i, j, k) are (x, y, z); spacing from pixdim.
#include <nifti2_io.h>

#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/data/formats/format_util.h"
#include "trainer/data/formats/readers.h"

namespace retina::trainer {

absl::StatusOr<RawArray> ReadNifti(const std::string& path) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  nifti_set_debug_level(0);
  std::unique_ptr<nifti_image, void (*)(nifti_image*)> img(nifti_image_read(path.c_str(), 1), &nifti_image_free);
  if (!img || img->data == nullptr) return absl::DataLossError(absl::StrCat(path, ": not a readable NIfTI file"));
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
