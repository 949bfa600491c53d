// `kind: infer`: segmentation as a job (docs/evaluation.md "Infer jobs").
//
// Every rank loads the weights, expands infer.inputs (files, folders, globs)
// and checks every input and output before anything is written. Then:
//   ome-zarr   each input's level-0 chunk rows not yet committed are dealt
//              round-robin over the ranks (trainer/prediction/zarr_prediction.h);
//              the ranks advance in rounds of one row each, with one small
//              all-reduce per round (progress, and whether any rank was asked
//              to stop), then build the pyramid the same way, level by level;
//              rank 0 writes each image's group metadata last.
//   tiff/hdf5  whole inputs are dealt round-robin; each output is written
//              atomically and marked done in <output>/.retina/.
// Resume: a new attempt skips every committed row (or file) and says how
// many in its log and its first predict event. SIGTERM/SIGUSR1 stop after the
// current round (exit 75, kPreempted).
// Rank 0 writes predict events (common/records.h), and at the end
// jobs/<id>/predictions.json: one entry per input with its outputs.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "trainer/engine/run.h"

namespace retina::trainer {

struct InferInput {
  std::string spec;  // what OpenPlaneReader opens
  std::string name;  // the output's stem, unique within the job
};

// Files, folders (their images and Zarr directories, sorted) and globs, in
// the order given; relative names from `base`. NOT_FOUND naming
// infer.inputs[i] when a path does not exist or a glob or folder matches
// nothing.
absl::StatusOr<std::vector<InferInput>> ExpandInferInputs(const std::vector<std::string>& inputs,
                                                          const std::filesystem::path& base);

absl::StatusOr<RunOutcome> RunInfer(const JobConfig& config, const RunOptions& options);

}  // namespace retina::trainer
