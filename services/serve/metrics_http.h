// A minimal HTTP server for Prometheus' scrape of /metrics, for retina-serve.
//
// Why not prometheus::Exposer, as the other services use: its civetweb
// creates worker threads with a fixed small stack, and a process that links
// libtorch needs more (libtorch's static thread-local storage is carved out
// of every thread's stack), so pthread_create fails with EINVAL and the
// exposer cannot start ("null context when constructing CivetServer").
//
// One thread accepts connections one at a time; GET /metrics answers the
// registry in the text exposition format (0.0.4), anything else 404.
// A connection gets 2 s in all (request up to 8 KiB, and the answer), so a
// slow client delays a scrape and shutdown by that much, never the server.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace retina::serve {

class MetricsHttpServer {
 public:
  // Listens on `listen` ("host:port", port 0 picks one).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& listen,
                                                                  std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;
  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void Loop();
  void Answer(int fd);

  std::shared_ptr<prometheus::Registry> registry_;
  int listen_fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace retina::serve
