// A model server run as a service job (kind: serve; `retina-serve run`, which
// `retina-train run` hands a serve job to): the same fencing as every rank
// (jobs/<id>/JOB_UID, ATTEMPT), the job's models from serve.models owned by
// the job's user (RETINA_JOB_USER), and the "serving" event that tells the
// coordinator where it answers (docs/serving.md "A model server as a job").
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "trainer/serving/model_pool.h"

namespace retina::trainer {
class EventLog;
}

namespace retina::trainer::serving {

struct ServeJobOptions {
  std::filesystem::path config, store = ".";
  std::string job_id, job_uid, events, user;
  int attempt = 0;
  bool confine = false;
  std::vector<std::filesystem::path> allowed_roots, output_roots;
};

// "NAME=WEIGHTS" (a --model flag, a serve.models entry); INVALID_ARGUMENT naming `field`.
absl::StatusOr<ServedModelSpec> ParseModelFlag(const std::string& text, const std::string& field);

class ServeJob {
 public:
  // Reads the job file, checks its paths (confined: under the store and the
  // allowed roots), claims the job directory and the attempt, opens the
  // event log. `models` gets serve.models, owned by `options.user`.
  static absl::StatusOr<std::unique_ptr<ServeJob>> Start(const ServeJobOptions& options);
  ~ServeJob();

  const JobConfig& config() const { return config_; }
  const std::vector<ServedModelSpec>& models() const { return models_; }
  // The "serving" event (address host:port) and a "preempted"/"done" at the end.
  void Serving(const std::string& address);
  void Stopped(bool by_signal);

 private:
  ServeJob() = default;
  JobConfig config_;
  std::vector<ServedModelSpec> models_;
  std::unique_ptr<EventLog> events_;
};

}  // namespace retina::trainer::serving
