// What execve needs, built before fork (a forked child of a threaded process
// must not allocate): argv and the environment (this process's, with `env`
// added or replacing) as NUL-terminated arrays that live as long as this object.
#pragma once

#include <cstring>
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

}  // namespace retina
