// NRRD (.nrrd, .nhdr; raw or gzip; teem): x fastest; spacing from spacings
// or space directions.
#include <teem/biff.h>
#include <teem/nrrd.h>

#include <cmath>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/numbers.h"
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

// The names of a `data file:` pattern FORMAT MIN MAX STEP, as teem expands
// it; DATA_LOSS naming `path` for an unsafe format or over 2^20 files.
absl::Status ExpandPattern(const std::string& path, const std::string& format, int64_t lo, int64_t hi, int64_t step,
                           std::vector<std::string>* names) {
  if (!SafePattern(format) || step == 0 || (hi - lo) / step < 0 || (hi - lo) / step >= (1 << 20)) {
    return absl::DataLossError(absl::StrCat(path, ": data file: pattern '", format, "' ", lo, " ", hi, " ", step,
                                            " is not one integer conversion over at most 2^20 files"));
  }
  for (int64_t i = lo; step > 0 ? i <= hi : i >= hi; i += step) {
    char name[4096];
    std::snprintf(name, sizeof name, format.c_str(), static_cast<int>(i));
    names->emplace_back(name);
  }
  return absl::OkStatus();
}

// The detached data files a header names (none when the data is attached),
// resolved as teem resolves them: relative names from the header's directory.
absl::StatusOr<std::vector<fs::path>> DataFiles(const std::string& path, const NrrdIoState& nio) {
  std::vector<std::string> names;
  if (nio.dataFNFormat != nullptr) {
    RETURN_IF_ERROR(ExpandPattern(path, nio.dataFNFormat, nio.dataFNMin, nio.dataFNMax, nio.dataFNStep, &names));
  } else if (nio.dataFNArr != nullptr) {
    for (unsigned i = 0; i < nio.dataFNArr->len; ++i) names.emplace_back(nio.dataFN[i]);
  }
  std::vector<fs::path> files;
  const fs::path dir = nio.path != nullptr && *nio.path != '\0' ? fs::path(nio.path) : fs::path(path).parent_path();
  for (const std::string& n : names) files.push_back(fs::path(n).is_absolute() ? fs::path(n) : dir / n);
  return files;
}

// The data files a header names, read from its text before teem sees it
// (teem opens them even for a header-only load): `data file:` (or
// `datafile:`) with one name, `LIST [subdim]` (the names on the lines that
// follow), or a pattern `FORMAT MIN MAX STEP [subdim]`. "-" (stdin) and
// names like "C:..." (which teem opens from the working directory) are
// refused. Relative names are from the header's directory, as teem takes them.
absl::StatusOr<std::vector<fs::path>> ScanDataFiles(const std::string& path) {
  constexpr size_t kMaxHeader = 1 << 20;
  std::ifstream in(path, std::ios::binary);
  std::vector<std::string> lines;
  std::string line;
  size_t read = 0;
  bool list = false;
  std::vector<std::string> names;
  while (read < kMaxHeader && std::getline(in, line)) {
    read += line.size() + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (list) {
      if (!line.empty()) names.push_back(line);
      continue;
    }
    if (line.empty()) break;  // the end of the header: attached data follows
    std::string key;
    if (line.rfind("data file:", 0) == 0) key = "data file:";
    else if (line.rfind("datafile:", 0) == 0) key = "datafile:";
    if (key.empty()) continue;
    std::vector<std::string> words;
    std::istringstream value(line.substr(key.size()));
    for (std::string w; value >> w;) words.push_back(w);
    if (words.empty()) return absl::DataLossError(absl::StrCat(path, ": data file: empty"));
    if (words[0] == "LIST") {
      list = true;
    } else if (words.size() >= 4 && words[0].find('%') != std::string::npos) {
      int64_t lo = 0, hi = 0, step = 0;
      if (!absl::SimpleAtoi(words[1], &lo) || !absl::SimpleAtoi(words[2], &hi) || !absl::SimpleAtoi(words[3], &step)) {
        return absl::DataLossError(absl::StrCat(path, ": data file: pattern '", line.substr(key.size()),
                                                "': MIN MAX STEP are not integers"));
      }
      RETURN_IF_ERROR(ExpandPattern(path, words[0], lo, hi, step, &names));
    } else {
      names.push_back(words[0]);
    }
  }
  std::vector<fs::path> files;
  for (const std::string& n : names) {
    if (n == "-" || (n.size() >= 2 && n[1] == ':')) {
      return absl::DataLossError(absl::StrCat(path, ": data file: '", n,
                                              "' (standard input, or a drive-letter name) is not read"));
    }
    files.push_back(fs::path(n).is_absolute() ? fs::path(n) : fs::path(path).parent_path() / n);
  }
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
  // The data files the header names, from its text, before teem opens any.
  {
    ASSIGN_OR_RETURN(const std::vector<fs::path> files, ScanDataFiles(path));
    for (const fs::path& f : files) RETURN_IF_ERROR(CheckRead(absl::StrCat(path, ": data file"), f));
  }
  // Then the header without data: what it declares is checked before teem
  // allocates anything.
  NrrdPtr nrrd(nrrdNew(), &nrrdNuke);
  {
    NioPtr header(nrrdIoStateNew(), &nrrdIoStateNix);
    header->skipData = AIR_TRUE;
    if (nrrdLoad(nrrd.get(), path.c_str(), header.get()) != 0) {
      return absl::DataLossError(absl::StrCat(path, ": not a readable NRRD: ", BiffMessage()));
    }
    ASSIGN_OR_RETURN(const uint64_t stored, CheckDataFiles(path, *header));
    // Every axis (a 4-D header is refused after the load, which allocates).
    const bool raw = header->encoding == nrrdEncodingRaw;
    uint64_t elements = 1;
    std::string sizes;
    for (unsigned a = 0; a < nrrd->dim && a < NRRD_DIM_MAX; ++a) {
      const uint64_t n = nrrd->axis[a].size;
      absl::StrAppend(&sizes, a == 0 ? "" : " x ", n);
      if (n != 0 && elements > UINT64_MAX / n) {
        return absl::DataLossError(absl::StrCat(path, ": sizes: ", sizes, "... overflow 64 bits"));
      }
      elements *= n;
    }
    if (elements > static_cast<uint64_t>(INT64_MAX)) {
      return absl::DataLossError(absl::StrCat(path, ": sizes: ", sizes, " overflow"));
    }
    if (nrrd->dim == 2 || nrrd->dim == 3) {
      RETURN_IF_ERROR(DeclaredBytes(path, "sizes",
                                    {static_cast<int64_t>(nrrd->axis[0].size), static_cast<int64_t>(nrrd->axis[1].size),
                                     nrrd->dim == 3 ? static_cast<int64_t>(nrrd->axis[2].size) : 1},
                                    nrrdElementSize(nrrd.get()), raw ? std::optional<uint64_t>(stored) : std::nullopt)
                          .status());
    } else {
      RETURN_IF_ERROR(DeclaredBytes(path, "sizes", {static_cast<int64_t>(elements)}, nrrdElementSize(nrrd.get()),
                                    raw ? std::optional<uint64_t>(stored) : std::nullopt)
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
