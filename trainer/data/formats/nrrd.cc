// NRRD (.nrrd, .nhdr; raw or gzip; teem): x fastest; spacing from spacings
// or space directions.
#include <teem/biff.h>
#include <teem/nrrd.h>

#include <cmath>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/data/formats/format_util.h"
#include "trainer/data/formats/readers.h"

namespace retina::trainer {

absl::StatusOr<RawArray> ReadNrrd(const std::string& path) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  std::unique_ptr<Nrrd, Nrrd* (*)(Nrrd*)> nrrd(nrrdNew(), &nrrdNuke);
  if (nrrdLoad(nrrd.get(), path.c_str(), nullptr) != 0) {
    char* err = biffGetDone(NRRD);
    std::string msg = err != nullptr ? err : "unknown error";
    std::free(err);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    return absl::DataLossError(absl::StrCat(path, ": not a readable NRRD: ", msg));
  }
  const unsigned dim = nrrd->dim;
  if (dim != 2 && dim != 3) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": NRRD has ", dim, " dimensions; expected 2 or 3"));
  }
  RawArray out;
  out.source = path;
  switch (nrrd->type) {
    case nrrdTypeUChar: out.dtype = DType::kUInt8; break;
    case nrrdTypeChar: out.dtype = DType::kInt8; break;
    case nrrdTypeUShort: out.dtype = DType::kUInt16; break;
    case nrrdTypeShort: out.dtype = DType::kInt16; break;
    case nrrdTypeUInt: out.dtype = DType::kUInt32; break;
    case nrrdTypeInt: out.dtype = DType::kInt32; break;
    case nrrdTypeULLong: out.dtype = DType::kUInt64; break;
    case nrrdTypeLLong: out.dtype = DType::kInt64; break;
    case nrrdTypeFloat: out.dtype = DType::kFloat32; break;
    case nrrdTypeDouble: out.dtype = DType::kFloat64; break;
    default: return absl::UnimplementedError(absl::StrCat(path, ": unsupported NRRD type ", nrrd->type));
  }
  const int64_t x = nrrd->axis[0].size, y = nrrd->axis[1].size, z = dim == 3 ? nrrd->axis[2].size : 1;
  out.shape = {z, y, x};
  const size_t n = static_cast<size_t>(out.numel()) * DTypeSize(out.dtype);
  out.bytes.assign(static_cast<uint8_t*>(nrrd->data), static_cast<uint8_t*>(nrrd->data) + n);
  // Spacing: per-axis "spacings", else the norms of "space directions".
  double sp[3] = {1, 1, 1};
  bool found = false;
  for (unsigned a = 0; a < dim; ++a) {
    double s = nrrd->axis[a].spacing;
    if (!std::isfinite(s) && nrrd->spaceDim > 0) {
      double norm = 0;
      for (unsigned k = 0; k < nrrd->spaceDim; ++k) norm += nrrd->axis[a].spaceDirection[k] * nrrd->axis[a].spaceDirection[k];
      s = std::sqrt(norm);
    }
    if (std::isfinite(s) && s > 0) {
      sp[a] = s;
      found = true;
    }
  }
  out.spacing = {sp[2], sp[1], sp[0]};
  out.has_spacing = found;
  return out;
}

}  // namespace retina::trainer
