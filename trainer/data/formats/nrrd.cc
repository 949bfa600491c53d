// NRRD (.nrrd, .nhdr; raw or gzip; teem): x fastest; spacing from spacings
// or space directions.
#include <teem/biff.h>
#include <teem/nrrd.h>

#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/data/formats/format_util.h"
#include "common/read_scope.h"
#include "trainer/data/formats/readers.h"

namespace retina::trainer {
namespace {
namespace fs = std::filesystem;

using NrrdPtr = std::unique_ptr<Nrrd, Nrrd* (*)(Nrrd*)>;
using NioPtr = std::unique_ptr<NrrdIoState, NrrdIoState* (*)(NrrdIoState*)>;

std::string BiffMessage() {
  char* err = biffGetDone(NRRD);
  std::string msg = err != nullptr ? err : "unknown error";
  std::free(err);
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  return msg;
}

// A `data file:` pattern teem may expand: one integer conversion (%d, %u,
// with an optional 0 flag and width) and no other '%'. Anything else is
// refused rather than handed to snprintf.
bool SafePattern(const std::string& format) {
  const size_t at = format.find('%');
  if (at == std::string::npos) return false;
  size_t i = at + 1;
  while (i < format.size() && format[i] >= '0' && format[i] <= '9') ++i;
  if (i >= format.size() || (format[i] != 'd' && format[i] != 'u')) return false;
  return format.find('%', i + 1) == std::string::npos;
}

// The detached data files a header names (none when the data is attached),
// resolved as teem resolves them: relative names from the header's directory.
absl::StatusOr<std::vector<fs::path>> DataFiles(const std::string& path, const NrrdIoState& nio) {
  std::vector<std::string> names;
  if (nio.dataFNFormat != nullptr) {
    const std::string format = nio.dataFNFormat;
    const int64_t lo = nio.dataFNMin, hi = nio.dataFNMax, step = nio.dataFNStep;
    if (!SafePattern(format) || step == 0 || (hi - lo) / step < 0 || (hi - lo) / step >= (1 << 20)) {
      return absl::DataLossError(absl::StrCat(path, ": data file: pattern '", format, "' ", lo, " ", hi, " ", step,
                                              " is not one integer conversion over at most 2^20 files"));
    }
    for (int64_t i = lo; step > 0 ? i <= hi : i >= hi; i += step) {
      char name[4096];
      std::snprintf(name, sizeof name, format.c_str(), static_cast<int>(i));
      names.emplace_back(name);
    }
  } else if (nio.dataFNArr != nullptr) {
    for (unsigned i = 0; i < nio.dataFNArr->len; ++i) names.emplace_back(nio.dataFN[i]);
  }
  std::vector<fs::path> files;
  const fs::path dir = nio.path != nullptr && *nio.path != '\0' ? fs::path(nio.path) : fs::path(path).parent_path();
  for (const std::string& n : names) files.push_back(fs::path(n).is_absolute() ? fs::path(n) : dir / n);
  return files;
}

// Every detached data file through the read scope (read_scope.h), and
// their total size (the file's own for attached data).
absl::StatusOr<uint64_t> CheckDataFiles(const std::string& path, const NrrdIoState& nio) {
  ASSIGN_OR_RETURN(std::vector<fs::path> files, DataFiles(path, nio));
  std::error_code ec;
  if (files.empty()) return static_cast<uint64_t>(fs::file_size(path, ec));
  uint64_t total = 0;
  for (const fs::path& f : files) {
    RETURN_IF_ERROR(CheckRead(absl::StrCat(path, ": data file"), f));
    const uintmax_t n = fs::file_size(f, ec);
    if (!ec) total += n;
  }
  return total;
}

}  // namespace

absl::StatusOr<RawArray> ReadNrrd(const std::string& path) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  RETURN_IF_ERROR(CheckRead(path, path));
  // The header first, without data: what it references and what it
  // declares are checked before teem opens or allocates anything.
  NrrdPtr nrrd(nrrdNew(), &nrrdNuke);
  {
    NioPtr header(nrrdIoStateNew(), &nrrdIoStateNix);
    header->skipData = AIR_TRUE;
    if (nrrdLoad(nrrd.get(), path.c_str(), header.get()) != 0) {
      return absl::DataLossError(absl::StrCat(path, ": not a readable NRRD: ", BiffMessage()));
    }
    ASSIGN_OR_RETURN(const uint64_t stored, CheckDataFiles(path, *header));
    if (nrrd->dim == 2 || nrrd->dim == 3) {
      const bool raw = header->encoding == nrrdEncodingRaw;
      RETURN_IF_ERROR(DeclaredBytes(path, "sizes",
                                    {static_cast<int64_t>(nrrd->axis[0].size), static_cast<int64_t>(nrrd->axis[1].size),
                                     nrrd->dim == 3 ? static_cast<int64_t>(nrrd->axis[2].size) : 1},
                                    nrrdElementSize(nrrd.get()), raw ? std::optional<uint64_t>(stored) : std::nullopt)
                          .status());
    }
  }
  nrrd.reset(nrrdNew());
  NioPtr nio(nrrdIoStateNew(), &nrrdIoStateNix);
  if (nrrdLoad(nrrd.get(), path.c_str(), nio.get()) != 0) {
    return absl::DataLossError(absl::StrCat(path, ": not a readable NRRD: ", BiffMessage()));
  }
  // What this load read (the header may have changed since it was checked).
  RETURN_IF_ERROR(CheckDataFiles(path, *nio).status());
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
