// kind: evaluate — a checkpoint over a benchmark's held-out test split (the
// <name>-test/ folder that retina-shard import writes: test.json + one HDF5
// file per image/volume), with the paper's metrics. Writes
// jobs/<id>/eval.json (per item and mean per class) and an "eval" event.
#pragma once

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "trainer/engine/run.h"

namespace retina::trainer {

absl::StatusOr<RunOutcome> RunEvaluation(const JobConfig& config, const RunOptions& options);

}  // namespace retina::trainer
