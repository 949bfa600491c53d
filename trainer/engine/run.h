// `retina-train run`: one rank of a pre-training or fine-tuning job.
//
// The rank step protocol (every rank, in lock step):
//   1. take this rank's next batch from the sampler (global batch / world),
//      augment it with generators seeded from (seed, rank, step) -- so a
//      resumed run draws exactly what the uninterrupted one would have;
//   2. forward, loss, backward; the reducer all-reduces gradient buckets
//      during backward (SyncBatchNorm statistics too, when world > 1);
//      an elastic job below its full size W runs steps 1-2 as a = W / world
//      micro-batches of global batch / W samples each, micro-batch m playing
//      the full run's rank m * world + rank (sampler.h), and reduces the
//      accumulated gradients once, after the last;
//   3. SGD step at the poly learning rate of this iteration;
//   4. one small all-reduce of (loss, stop request): every rank learns the
//      mean loss and whether any rank was asked to stop (SIGTERM/SIGUSR1),
//      so all stop after the same step;
//   5. rank 0 appends events/metrics and, when due (interval, end or stop),
//      writes a checkpoint through the store (model.pt loadable by PyTorch,
//      optimizer.pt, state.json) and applies retention.
// Resume (--resume auto) loads LATEST (falling back past a damaged
// checkpoint): model, optimiser, step and the sampler's (epoch, offset).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "trainer/dist/launch_env.h"

namespace retina::trainer {

struct RunOptions {
  std::filesystem::path store = ".";
  std::string job_id;           // required; names jobs/<id>/ in the store
  std::string events;           // "" (store only), a file path, or "fd:N"
  std::string resume = "auto";  // auto | never | a checkpoint directory
  LaunchOverrides launch;
  std::string config_text;      // the job YAML as given (its hash goes into state.json)
  std::string job_uid;          // when set, jobs/<id>/JOB_UID must match (common/job_identity.h)
  int attempt = 0;              // the service's attempt (RETINA_ATTEMPT): fences jobs/<id>/ATTEMPT; 0: unfenced
  bool confine = false;         // a service rank: paths only under the store and allowed_roots
  std::vector<std::filesystem::path> allowed_roots;
  std::vector<std::filesystem::path> output_roots;  // with confine: where infer outputs may go besides jobs/<id>/
  // An elastic job (--elastic W:M, RETINA_ELASTIC): its full world size W,
  // which splits the global batch, and its minimum M, the BatchNorm group
  // (batch_norm.h). This run's world size must be a multiple of M dividing
  // W. 0: not elastic (W = M = this run's world size).
  int elastic_world_size = 0, elastic_min_world_size = 0;
};

enum class RunOutcome { kCompleted, kPreempted };

// retina-train exits kExitPreempted (common/records.h, BSD EX_TEMPFAIL) for
// kPreempted: checkpoint written, run again with --resume auto.

absl::StatusOr<RunOutcome> RunJob(const JobConfig& config, const RunOptions& options);

}  // namespace retina::trainer
