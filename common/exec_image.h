// What execve needs, built before fork (a forked child of a threaded process
// must not allocate): argv and the environment (this process's, with `env`
// added or replacing) as NUL-terminated arrays that live as long as this object.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

extern char** environ;

namespace retina {

class ExecImage {
 public:
  ExecImage(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env) : args_(argv) {
    std::map<std::string, std::string> merged;
    for (char** e = environ; *e != nullptr; ++e) {
      const char* eq = std::strchr(*e, '=');
      if (eq) merged[std::string(static_cast<const char*>(*e), eq)] = eq + 1;
    }
    for (const auto& [k, v] : env) merged[k] = v;
    for (const auto& [k, v] : merged) env_.push_back(k + "=" + v);
    for (std::string& s : args_) argv_.push_back(s.data());
    argv_.push_back(nullptr);
    for (std::string& s : env_) envp_.push_back(s.data());
    envp_.push_back(nullptr);
  }
  ExecImage(const ExecImage&) = delete;
  ExecImage& operator=(const ExecImage&) = delete;
  char* const* argv() const { return argv_.data(); }
  char* const* envp() const { return envp_.data(); }
  const char* file() const { return argv_[0]; }

 private:
  std::vector<std::string> args_, env_;
  std::vector<char*> argv_, envp_;
};

// Replaces this process with `program` (argv[0] = program, then `args`),
// found beside this executable, in one of `sibling_dirs` relative to its
// folder's parent (a build tree's trainer/ and services/), else on PATH.
// Returns only on failure, with errno's text.
inline std::string ExecBesideSelf(const std::string& program, const std::vector<std::string>& args,
                                  const std::vector<std::string>& sibling_dirs) {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::vector<std::filesystem::path> candidates = {self.parent_path() / program};
  for (const std::string& d : sibling_dirs) candidates.push_back(self.parent_path().parent_path() / d / program);
  std::string path = program;  // execvp searches PATH
  for (const auto& c : candidates) {
    if (!ec && access(c.c_str(), X_OK) == 0) {
      path = c.string();
      break;
    }
  }
  std::vector<std::string> all = {program};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  execvp(path.c_str(), argv.data());
  return path + ": " + std::strerror(errno);
}

}  // namespace retina
