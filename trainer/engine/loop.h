// The annotation loop as one job (kind: loop; docs/evaluation.md "The
// annotation loop"), run by one rank.
//
// Layout, under jobs/<id>/:
//   labelled/                 the labelled dataset the loop builds, one version
//                             per round (retina-shard import --add's rules)
//   rounds/jobs/r<k>/         round k's fine-tune (an ordinary fine-tune job
//                             directory: checkpoints, evals, metrics)
//   rounds/r<k>/blocks/       the blocks round k adds (dataset version k + 1;
//                             images/, masks/: what a person would hand back)
//   rounds/r<k>/suggestions/  the same blocks as retina-suggest writes them
//                             (table, crops, napari and neuroglancer layers)
//   evals/step-<B>.json       round k's score on data.test_dataset, B = blocks
//                             labelled when it trained (what a loop study reads)
//   loop.json, loop.csv       per round: blocks, dataset version and digest,
//                             mean IoU, the model (written after every round)
//
// Round 0 labels loop.initial_blocks random blocks (seeded by the job's seed,
// so every strategy of one seed starts from the same blocks), fine-tunes
// finetune.iters from finetune.init and is scored. After each round but the
// last, the round's model predicts the pool (xy stack), its uncertainty map
// (NormalisedEntropy) ranks the blocks not labelled yet (suggest.h, the
// loop's strategy), the simulated annotator reveals loop.pool_labels in
// exactly those blocks, and they are added as the dataset's next version;
// the next round fine-tunes from the previous round's model (every tensor:
// finetune.init_whole) on it.
//
// Resume: a round recorded in loop.json is not run again; a round's
// fine-tune resumes from its checkpoints; blocks already added (the dataset
// has the version) are not added twice.
#pragma once

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "trainer/engine/run.h"

namespace retina::trainer {

absl::StatusOr<RunOutcome> RunLoop(const JobConfig& config, const RunOptions& options);

}  // namespace retina::trainer
