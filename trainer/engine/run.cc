#include "trainer/engine/run.h"

#include <optional>
#include <vector>

#include "common/job_identity.h"
#include "common/path_policy.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "common/read_scope.h"
#include "trainer/engine/loop.h"
#include "trainer/engine/evaluate.h"
#include "trainer/engine/infer.h"
#include "trainer/engine/trainer.h"

namespace retina::trainer {

absl::StatusOr<RunOutcome> RunJob(const JobConfig& given, const RunOptions& o) {
  // A service rank reads only under the store and the allowed roots, with
  // relative paths taken from the store (common/path_policy.h).
  JobConfig config = given;
  if (config.kind == JobKind::kStudy) {
    return absl::InvalidArgumentError(
        "kind: study: a study is a grid of fine-tune jobs that the service runs and aggregates; submit it with "
        "`retina study submit FILE` (docs/evaluation.md, \"Studies\")");
  }
  if (o.confine) {
    const PathPolicy policy(o.store, o.allowed_roots, o.output_roots);
    RETURN_IF_ERROR(policy.CheckConfig(config, o.job_id));
    if (!config.data.dataset.empty()) config.data.dataset = policy.DatasetPath(config.data.dataset).string();
    if (!config.data.val_dataset.empty()) config.data.val_dataset = policy.DatasetPath(config.data.val_dataset).string();
    if (!config.data.test_dataset.empty()) config.data.test_dataset = policy.DatasetPath(config.data.test_dataset).string();
    if (config.finetune.init != "random") config.finetune.init = policy.WeightsPath(config.finetune.init).string();
    if (!config.evaluate.checkpoint.empty()) {
      config.evaluate.checkpoint = policy.WeightsPath(config.evaluate.checkpoint).string();
    }
    if (!config.infer.weights.empty()) config.infer.weights = policy.WeightsPath(config.infer.weights).string();
  }
  // Every file the readers open, and every file a format references from
  // inside one, stays under the store, the allowed roots or the output
  // roots (an infer job reads back what it wrote) (read_scope.h).
  std::optional<ReadScope> scope;
  if (o.confine) {
    std::vector<std::filesystem::path> readable = o.allowed_roots;
    readable.insert(readable.end(), o.output_roots.begin(), o.output_roots.end());
    scope.emplace(PathPolicy(o.store, readable));
  }
  RETURN_IF_ERROR(StoreLayout::ValidateName(o.job_id, "--job"));
  // Never adopt a job directory this job did not create (its checkpoints,
  // spec and metrics would be another job's).
  RETURN_IF_ERROR(CheckJobOwner(StoreLayout(o.store), o.job_id, o.job_uid, /*claim=*/true));
  // A newer attempt fences this one off the store (job_identity.h, ATTEMPT).
  RETURN_IF_ERROR(ClaimAttempt(StoreLayout(o.store), o.job_id, o.attempt));
  if (config.kind == JobKind::kEvaluate) return RunEvaluation(config, o);
  if (config.kind == JobKind::kInfer) return RunInfer(config, o);
  if (config.kind == JobKind::kLoop) return RunLoop(config, o);
  ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(config, o));
  return trainer->Run();
}

}  // namespace retina::trainer
