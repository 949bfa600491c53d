// SubmitJob's spec check: sizes and enums first (nothing else is looked at
// in an oversized request), then the job YAML (parsed and validated like
// `retina-train config check`), the kind against the YAML's, the global
// batch against the world size, the path policy (common/path_policy.h) and
// that each named dataset exists in the store.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "retina/v1/job_service.pb.h"

namespace retina::coordinator {

// The job YAML's `kind` as the API's enum.
retina::v1::JobKind KindFromConfig(JobKind kind);

// Validates `spec` in place (defaults filled in: slots_per_rank 1, kind
// from the YAML). INVALID_ARGUMENT names the field; FAILED_PRECONDITION
// for a dataset the store does not have; PERMISSION_DENIED for a path
// outside the store and `allowed_roots`, or an output outside
// `output_roots` (at submit a job has no directory of its own yet:
// infer.output is empty, meaning jobs/<id>/predictions, or under one).
absl::Status ValidateJobSpec(retina::v1::JobSpec* spec, const std::filesystem::path& store,
                             const std::vector<std::filesystem::path>& allowed_roots,
                             const std::vector<std::filesystem::path>& output_roots = {});

// A STUDY's inits that name a moving target (jobs/<id>/checkpoints/LATEST, a
// checkpoints folder, a job folder) rewritten to the checkpoint LATEST names
// at submission, so that every child of an arm starts from the same weights;
// study.init_names keeps the names as given when the file had none.
absl::Status PinStudyInits(retina::v1::JobSpec* spec, const std::filesystem::path& store);

struct StudyChildSpec {
  int index = 0;               // StudyChild::index (common/study.h)
  retina::v1::JobSpec spec;    // a validated FINETUNE spec
};
// The child specs of a STUDY spec (common/study.h): the study's world size,
// slots, priority, restarts and labels, plus labels study=<study_id>,
// study.index, study.arm, study.seed (study.dataset), each validated like a
// submitted job. INVALID_ARGUMENT names the child.
absl::StatusOr<std::vector<StudyChildSpec>> StudyChildSpecs(const retina::v1::JobSpec& study, const std::string& study_id,
                                                            const std::filesystem::path& store,
                                                            const std::vector<std::filesystem::path>& allowed_roots,
                                                            const std::vector<std::filesystem::path>& output_roots = {});

}  // namespace retina::coordinator
