#include "services/coordinator/job_spec.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/dataset_manifest.h"
#include "common/job_config.h"
#include "common/path_policy.h"
#include "common/status_macros.h"
#include "common/study/study.h"
#include "common/checkpoint_store.h"
#include "yaml-cpp/yaml.h"
#include "services/coordinator/limits.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

v1::JobKind KindFromConfig(JobKind kind) {
  switch (kind) {
    case JobKind::kPretrain: return v1::PRETRAIN;
    case JobKind::kFinetune: return v1::FINETUNE;
    case JobKind::kEvaluate: return v1::EVALUATE;
    case JobKind::kInfer: return v1::INFER;
    case JobKind::kStudy: return v1::STUDY;
    case JobKind::kServe: return v1::SERVE;
    case JobKind::kLoop: return v1::LOOP;
  }
  return v1::JOB_KIND_UNSPECIFIED;
}

// Validates the spec in place (defaults filled in). INVALID_ARGUMENT names the field.
absl::Status ValidateJobSpec(v1::JobSpec* spec, const std::filesystem::path& store,
                             const std::vector<std::filesystem::path>& allowed_roots,
                             const std::vector<std::filesystem::path>& output_roots) {
  // Sizes and enums first: nothing else is looked at in an oversized request.
  if (spec->config_yaml().size() > limits::kConfigYamlBytes) {
    return absl::InvalidArgumentError(absl::StrCat("spec.config_yaml: ", spec->config_yaml().size(),
                                                   " bytes; the limit is ", limits::kConfigYamlBytes));
  }
  if (spec->name().size() > limits::kNameChars) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.name: ", spec->name().size(), " characters; the limit is ", limits::kNameChars));
  }
  if (spec->labels_size() > limits::kLabels) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.labels: ", spec->labels_size(), " labels; the limit is ", limits::kLabels));
  }
  for (const auto& [key, value] : spec->labels()) {
    if (key.empty() || key.size() > limits::kLabelKeyChars || value.size() > limits::kLabelValueChars) {
      return absl::InvalidArgumentError(absl::StrCat("spec.labels: key '", limits::Echo(key), "': keys must be 1-",
                                                     limits::kLabelKeyChars, " characters, values at most ",
                                                     limits::kLabelValueChars));
    }
  }
  if (!v1::JobKind_IsValid(spec->kind())) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.kind: unknown value ", static_cast<int>(spec->kind()), " (PRETRAIN, FINETUNE, EVALUATE, INFER, STUDY, SERVE, LOOP)"));
  }
  if (!v1::SlotType_IsValid(spec->slot_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.slot_type: unknown value ", static_cast<int>(spec->slot_type()), " (SLOT_CPU, SLOT_GPU)"));
  }
  if (spec->priority() < -limits::kPriority || spec->priority() > limits::kPriority) {
    return absl::InvalidArgumentError(absl::StrCat("spec.priority: must be between ", -limits::kPriority, " and ",
                                                   limits::kPriority, ", got ", spec->priority()));
  }
  if (spec->world_size() == 0) spec->set_world_size(1);  // the proto's default: "1 when 0"
  if (spec->world_size() < 1 || spec->world_size() > limits::kWorldSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.world_size: must be between 1 and 4096 ranks, got ", spec->world_size()));
  }
  if (spec->min_world_size() == 0) spec->set_min_world_size(spec->world_size());  // not elastic
  if (spec->min_world_size() < 1 || spec->min_world_size() > spec->world_size() ||
      spec->world_size() % spec->min_world_size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("spec.min_world_size: must divide world_size ", spec->world_size(),
                                                   " (an elastic job runs on multiples of it that divide world_size), got ",
                                                   spec->min_world_size()));
  }
  if (spec->slots_per_rank() == 0) spec->set_slots_per_rank(1);
  if (spec->slots_per_rank() < 1 || spec->slots_per_rank() > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.slots_per_rank: must be between 1 and 1024, got ", spec->slots_per_rank()));
  }
  if (spec->max_restarts() < 0 || spec->max_restarts() > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.max_restarts: must be between 0 and 1000, got ", spec->max_restarts()));
  }
  if (spec->config_yaml().empty()) return absl::InvalidArgumentError("spec.config_yaml: empty; give the job YAML");
  absl::StatusOr<JobConfig> config = ParseJobConfig(spec->config_yaml(), "spec.config_yaml");
  if (!config.ok()) return absl::InvalidArgumentError(config.status().message());
  const v1::JobKind from_config = KindFromConfig(config->kind);
  if (spec->kind() == v1::JOB_KIND_UNSPECIFIED) {
    spec->set_kind(from_config);
  } else if (spec->kind() != from_config) {
    return absl::InvalidArgumentError(absl::StrCat("spec.kind: ", v1::JobKind_Name(spec->kind()),
                                                   " does not match the config's kind '", JobKindName(config->kind), "'"));
  }
  const int64_t batch = config->kind == JobKind::kPretrain   ? config->pretrain.global_batch
                        : config->kind == JobKind::kFinetune || config->kind == JobKind::kStudy
                            ? config->finetune.global_batch
                                                     : 0;
  if (batch > 0 && batch % spec->world_size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("spec.world_size: ", JobKindName(config->kind), ".global_batch ", batch,
                                                   " does not divide by ", spec->world_size(), " ranks"));
  }
  if (spec->min_world_size() < spec->world_size() && config->kind != JobKind::kPretrain &&
      config->kind != JobKind::kFinetune) {
    return absl::InvalidArgumentError(absl::StrCat("spec.min_world_size: only pretrain and finetune jobs are elastic; this is ",
                                                   JobKindName(config->kind), " (leave it 0)"));
  }
  if (config->kind == JobKind::kServe && spec->world_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("spec.world_size: a serve job is one server process (1), got ",
                                                   spec->world_size(), "; submit several serve jobs for more"));
  }
  if (config->kind == JobKind::kLoop && spec->world_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("spec.world_size: an annotation loop runs in one rank (1), got ",
                                                   spec->world_size()));
  }
  const PathPolicy policy(store, allowed_roots, output_roots);
  RETURN_IF_ERROR(policy.CheckConfig(*config), "spec.config_yaml");
  for (const auto& [field, name] : {std::pair<std::string, std::string>{"data.dataset", config->data.dataset},
                                    {"data.val_dataset", config->data.val_dataset},
                                    {"data.test_dataset", config->data.test_dataset}}) {
    if (name.empty()) continue;
    // A packed dataset has manifest.json; a held-out split (retina-shard import) test.json.
    ASSIGN_OR_RETURN(const auto ref, SplitDatasetVersion(name, "spec.config_yaml: " + field));
    const std::filesystem::path dir = policy.DatasetPath(ref.first);
    if (ref.second > 0) {  // NAME@k: version k must exist
      absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(dir);
      if (!m.ok()) return absl::FailedPreconditionError(absl::StrCat("spec.config_yaml: ", field, ": ", m.status().message()));
      if (absl::Status v = m->AtVersion(ref.second).status(); !v.ok()) {
        return absl::FailedPreconditionError(absl::StrCat("spec.config_yaml: ", field, ": ", v.message()));
      }
    }
    if (!std::filesystem::exists(dir / "manifest.json") && !std::filesystem::exists(dir / "test.json")) {
      return absl::FailedPreconditionError(absl::StrCat("spec.config_yaml: ", field, ": no dataset '", name, "' (",
                                                        dir.string(), "); pack it with retina-shard first"));
    }
  }
  return absl::OkStatus();
}

absl::Status PinStudyInits(v1::JobSpec* spec, const std::filesystem::path& store) {
  YAML::Node root;
  try {
    root = YAML::Load(spec->config_yaml());
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("spec.config_yaml: ", e.what()));
  }
  YAML::Node study = root["study"];
  if (!study || !study["inits"] || !study["inits"].IsSequence()) return absl::OkStatus();
  const YAML::Node inits = study["inits"];
  std::vector<std::string> original, pinned;
  bool changed = false;
  for (const auto& n : inits) {
    const std::string init = n.as<std::string>();
    original.push_back(init);
    std::filesystem::path p(init);
    // .../checkpoints/LATEST, .../checkpoints, or a job directory: the step LATEST names now.
    std::filesystem::path checkpoints;
    const std::filesystem::path abs = p.is_absolute() ? p : store / p;
    if (p.filename() == "LATEST") {
      checkpoints = p.parent_path();
    } else if (std::filesystem::exists(abs / "LATEST")) {
      checkpoints = p;
    } else if (std::filesystem::exists(abs / "checkpoints" / "LATEST")) {
      checkpoints = p / "checkpoints";
    }
    if (init == "random" || checkpoints.empty()) {
      pinned.push_back(init);
      continue;
    }
    absl::StatusOr<std::string> latest =
        CheckpointStore(checkpoints.is_absolute() ? checkpoints : store / checkpoints).ReadLatestPointer();
    if (!latest.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("spec.config_yaml: study.inits: ", init,
                                                        ": no checkpoint to pin (", latest.status().message(), ")"));
    }
    pinned.push_back((checkpoints / *latest).string());
    changed = true;
  }
  if (!changed) return absl::OkStatus();
  // Every child of every arm starts from the same weights, even if the job
  // behind LATEST goes on; the tables keep the names as given.
  YAML::Node seq(YAML::NodeType::Sequence);
  for (const std::string& p : pinned) seq.push_back(p);
  study["inits"] = seq;
  if (!study["init_names"] || study["init_names"].size() == 0) {
    YAML::Node names(YAML::NodeType::Sequence);
    for (const std::string& o : original) names.push_back(o);
    study["init_names"] = names;
  }
  YAML::Emitter out;
  out << root;
  spec->set_config_yaml(std::string(out.c_str()) + "\n");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StudyChildSpec>> StudyChildSpecs(const v1::JobSpec& study, const std::string& study_id,
                                                            const std::filesystem::path& store,
                                                            const std::vector<std::filesystem::path>& allowed_roots,
                                                            const std::vector<std::filesystem::path>& output_roots) {
  absl::StatusOr<StudyPlan> plan = PlanStudy(study.config_yaml(), "spec.config_yaml");
  if (!plan.ok()) return absl::InvalidArgumentError(plan.status().message());
  std::vector<StudyChildSpec> out;
  for (const StudyChild& child : plan->children) {
    absl::StatusOr<std::string> yaml = StudyChildYaml(study.config_yaml(), *plan, child, "spec.config_yaml");
    if (!yaml.ok()) return absl::InvalidArgumentError(yaml.status().message());
    StudyChildSpec c;
    c.index = child.index;
    v1::JobSpec& spec = c.spec;
    spec = study;
    spec.set_kind(plan->loop ? v1::LOOP : v1::FINETUNE);
    if (plan->loop) {  // an annotation loop is one rank
      spec.set_world_size(1);
      spec.set_min_world_size(0);
    }
    spec.set_config_yaml(*yaml);
    const std::string& arm = plan->arms[child.arm].name;
    spec.set_name(absl::StrCat(study.name().empty() ? study_id : study.name(), ": ", arm, " seed ", child.seed,
                               child.dataset.empty() ? "" : " " + child.dataset)
                         .substr(0, limits::kNameChars));
    auto& labels = *spec.mutable_labels();
    labels["study"] = study_id;
    labels["study.index"] = std::to_string(child.index);
    labels["study.arm"] = arm.substr(0, limits::kLabelValueChars);
    labels["study.seed"] = std::to_string(child.seed);
    if (!child.dataset.empty()) labels["study.dataset"] = child.dataset;
    RETURN_IF_ERROR(ValidateJobSpec(&spec, store, allowed_roots, output_roots),
                    absl::StrCat("study child ", child.index, " (init ", arm, ", seed ", child.seed, ")"));
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace retina::coordinator
