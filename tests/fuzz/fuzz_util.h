// Shared plumbing of the fuzz targets (libFuzzer, tests/fuzz/README.md):
// the readers take file names, so each input is written to a file in a
// per-process temporary directory. Every target reads under a ReadScope over
// that directory (a reference out of it, e.g. an NRRD `data file: /dev/stdin`,
// is refused as in a service rank instead of blocking the fuzzer) and with
// a 64 MiB array budget (RETINA_MAX_ARRAY_BYTES), so a header that declares
// gigabytes is an error, not an allocation past libFuzzer's malloc limit.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "common/path_policy.h"
#include "common/read_scope.h"

namespace retina::fuzz {

inline const std::filesystem::path& TempDir() {
  static const std::filesystem::path dir = [] {
    std::string pattern = (std::filesystem::temp_directory_path() / "retina-fuzz-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    setenv("RETINA_MAX_ARRAY_BYTES", "67108864", 1);
    static const std::filesystem::path made = pattern;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(made, ec);
    });
    static ReadScope scope(PathPolicy(made, {}));
    return made;
  }();
  return dir;
}

// Writes `size` bytes to TempDir()/name and returns its path.
inline std::string WriteTemp(const std::string& name, const uint8_t* data, size_t size) {
  const std::filesystem::path p = TempDir() / name;
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return p.string();
}

}  // namespace retina::fuzz
