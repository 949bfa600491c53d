// kind: evaluate — a checkpoint over a benchmark's held-out test split (the
// <name>-test/ folder that retina-shard import writes: test.json + one HDF5
// file per image/volume), with the paper's metrics. Writes
// jobs/<id>/eval.json (per item and mean per class) and an "eval" event.
//
// Also the scoring of a fine-tune at finetune.eval_at (studies): after
// training, rank 0 scores each kept checkpoint step-N on data.test_dataset
// with the evaluate section's mode, overlap and classes, into
// jobs/<id>/evals/step-N.json. A step already scored (a resumed attempt) is
// not scored again.
#pragma once

#include <filesystem>
#include <string>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "common/records.h"
#include "trainer/engine/run.h"
#include "trainer/runtime/device.h"

namespace retina::trainer {

absl::StatusOr<RunOutcome> RunEvaluation(const JobConfig& config, const RunOptions& options);

// `weights` (anything ResolveWeights accepts; `field` names it in errors)
// scored on the test split `test_dataset` with config.evaluate's mode,
// overlap and classes, on `device` (bf16 autocast when its plan says so).
// Torch threads are the caller's.
absl::StatusOr<EvalReport> ScoreTestSplit(const JobConfig& config, const std::string& weights, const std::string& field,
                                          const std::string& test_dataset, const std::filesystem::path& store,
                                          const DevicePlan& device);

// The finetune.eval_at scoring of job `job_id` (see above), at the
// inference precision of config.runtime.precision on `device`'s device.
absl::Status ScoreEvalSteps(const JobConfig& config, const std::filesystem::path& store, const std::string& job_id,
                            torch::Device device);

}  // namespace retina::trainer
