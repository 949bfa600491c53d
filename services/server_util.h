// Process plumbing shared by the service binaries: signal waiting, the
// Prometheus exposer and the "ready file" tests and scripts wait for.
#pragma once

#include <csignal>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace retina::services {

// Blocks SIGTERM and SIGINT in the calling thread (call before starting any
// thread, so every thread inherits the mask); WaitForStopSignal then returns
// the first of them to arrive.
void BlockStopSignals();
int WaitForStopSignal();

// An exposer serving `registry` on /metrics at `listen` ("host:port", port 0
// picks one). Returns it with the port it bound.
absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartExposer(
    const std::string& listen, const std::shared_ptr<prometheus::Registry>& registry, int* port);

// Atomically writes `json` to `path` when `path` is not empty.
absl::Status WriteReadyFile(const std::filesystem::path& path, const std::string& json);

}  // namespace retina::services
