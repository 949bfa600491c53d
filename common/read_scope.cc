#include "common/read_scope.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace retina {
namespace {

std::mutex g_mu;
std::vector<const PathPolicy*>* g_policies = new std::vector<const PathPolicy*>();  // guarded by g_mu

}  // namespace

ReadScope::ReadScope(PathPolicy policy) : policy_(std::move(policy)) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_policies->push_back(&policy_);
  for (const char* name : {"HDF5_EXT_PREFIX", "HDF5_EXTFILE_PREFIX", "HDF5_VDS_PREFIX"}) unsetenv(name);
}

ReadScope::~ReadScope() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_policies->erase(std::find(g_policies->begin(), g_policies->end(), &policy_));
}

bool ReadsConfined() {
  std::lock_guard<std::mutex> lock(g_mu);
  return !g_policies->empty();
}

absl::Status CheckRead(const std::string& what, const std::filesystem::path& path) {
  std::lock_guard<std::mutex> lock(g_mu);
  for (const PathPolicy* policy : *g_policies) {
    if (absl::Status s = policy->Check(what, path); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace retina
