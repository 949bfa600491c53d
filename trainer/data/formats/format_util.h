// Helpers shared by the format readers of this folder (not an API).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace retina::trainer {

inline std::string Lower(const std::string& s) { return absl::AsciiStrToLower(s); }

// NOT_FOUND naming `path` when it does not exist (libraries' own messages are vaguer).
inline absl::Status NotFoundUnlessExists(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  return absl::OkStatus();
}

// The most bytes one array read whole may take: RETINA_MAX_ARRAY_BYTES when
// set (a positive integer), else half of the machine's physical memory
// divided among the node's ranks (LOCAL_WORLD_SIZE).
// Larger files stream (uint8 TIFF stacks, HDF5 datasets, Zarr) or are split.
inline uint64_t MaxArrayBytes() {
  if (const char* env = std::getenv("RETINA_MAX_ARRAY_BYTES"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (end != nullptr && *end == '\0' && v > 0) return v;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return uint64_t{1} << 34;
  // Shared by the node's ranks (LOCAL_WORLD_SIZE, as launchers set it).
  uint64_t ranks = 1;
  if (const char* local = std::getenv("LOCAL_WORLD_SIZE"); local != nullptr) {
    const unsigned long long n = std::strtoull(local, nullptr, 10);
    if (n > 1 && n < 4096) ranks = n;
  }
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 2 / ranks;
}

// The bytes an array of `dims` x `item` bytes declares, checked before
// anything is allocated: DATA_LOSS naming `file` and `field` when a size is
// negative or the product overflows 64 bits, RESOURCE_EXHAUSTED when it
// exceeds MaxArrayBytes(); with `stored` (an uncompressed layout), DATA_LOSS
// when the file holds fewer bytes than that.
inline absl::StatusOr<uint64_t> DeclaredBytes(const std::string& file, const std::string& field,
                                              std::initializer_list<int64_t> dims, uint64_t item,
                                              std::optional<uint64_t> stored = std::nullopt) {
  uint64_t total = item;
  std::string shape;
  for (const int64_t d : dims) {
    absl::StrAppend(&shape, shape.empty() ? "" : " x ", d);
    if (d < 0) return absl::DataLossError(absl::StrCat(file, ": ", field, ": negative size ", d));
  }
  for (const int64_t d : dims) {
    if (d != 0 && total > UINT64_MAX / static_cast<uint64_t>(d)) {
      return absl::DataLossError(absl::StrCat(file, ": ", field, ": ", shape, " elements of ", item,
                                              " bytes overflow 64 bits (a damaged or hostile header)"));
    }
    total *= static_cast<uint64_t>(d);
  }
  if (total > MaxArrayBytes()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        file, ": ", field, ": ", shape, " elements of ", item, " bytes is ", total, " bytes, more than the ",
        MaxArrayBytes(), " one array may take (RETINA_MAX_ARRAY_BYTES; half the memory by default)"));
  }
  if (stored && total > *stored) {
    return absl::DataLossError(absl::StrCat(file, ": ", field, ": ", shape, " elements of ", item, " bytes need ",
                                            total, " bytes but the file holds ", *stored,
                                            " (truncated, or a damaged header)"));
  }
  return total;
}

// "file.h5:/dataset" (also .hdf5:, .hdf:) into file and dataset; nullopt otherwise.
inline std::optional<std::pair<std::string, std::string>> SplitHdf5Spec(const std::string& spec) {
  const std::string l = Lower(spec);
  for (const char* ext : {".h5:", ".hdf5:", ".hdf:"}) {
    const size_t at = l.find(ext);
    if (at == std::string::npos) continue;
    const size_t colon = at + std::string(ext).size() - 1;
    return std::make_pair(spec.substr(0, colon), spec.substr(colon + 1));
  }
  return std::nullopt;
}

}  // namespace retina::trainer
