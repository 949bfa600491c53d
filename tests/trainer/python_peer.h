// Runs the Python peer scripts of the tests (Debian's python3 with torch).
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "common/file_util.h"

namespace retina::testing {

// The interpreter the build found (RETINA_PYTHON3, set by ctest), else python3.
inline std::string Python() {
  const char* p = std::getenv("RETINA_PYTHON3");
  if (p != nullptr && *p != '\0') return p;
#ifdef RETINA_TEST_PYTHON3
  if (*RETINA_TEST_PYTHON3 != '\0') return RETINA_TEST_PYTHON3;
#endif
  return "python3";
}

// Empty when `python -c "import <modules>"` works, else the reason it does not.
inline std::string PythonMissing(const std::string& modules) {
  const std::string cmd = Python() + " -c 'import " + modules + "' >/dev/null 2>&1";
  if (std::system(cmd.c_str()) == 0) return "";
  return Python() + " cannot import " + modules + " (install python3-torch etc.: scripts/setup)";
}

inline std::string SourceDir() {
  const char* s = std::getenv("RETINA_SOURCE_DIR");
  if (s != nullptr && *s != '\0') return s;
#ifdef RETINA_TEST_SOURCE_DIR
  return RETINA_TEST_SOURCE_DIR;
#else
  return ".";
#endif
}

// Runs `script args` from tests/trainer/py; returns the exit status and, in
// *output, stdout+stderr.
inline int RunPython(const std::string& script, const std::string& args, std::string* output) {
  const std::string cmd = "cd " + SourceDir() + "/tests/trainer/py && " + Python() + " " + script +
                          " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  size_t n;
  output->clear();
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output->append(buf, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A fresh directory under the test temp dir, removed (recursively) on destruction.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& prefix = "test-")
      : path_(std::filesystem::path(::testing::TempDir()) / UniqueTempName(prefix)) {
    std::filesystem::create_directories(path_);
  }
  ~ScopedTempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace retina::testing
