#include "services/server_util.h"

#include <pthread.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace retina::services {

void BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForStopSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartExposer(
    const std::string& listen, const std::shared_ptr<prometheus::Registry>& registry, int* port) {
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("--metrics-listen ", listen, ": cannot serve /metrics: ", e.what()));
  }
  exposer->RegisterCollectable(registry);
  const std::vector<int> ports = exposer->GetListeningPorts();
  *port = ports.empty() ? 0 : ports.front();
  return exposer;
}

absl::Status WriteReadyFile(const std::filesystem::path& path, const std::string& json) {
  if (path.empty()) return absl::OkStatus();
  return WriteFileAtomic(path, json + "\n");
}

}  // namespace retina::services
