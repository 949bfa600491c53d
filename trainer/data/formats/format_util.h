// Helpers shared by the format readers of this folder (not an API).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
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
