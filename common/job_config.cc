#include "common/job_config.h"

#include "common/model_ref.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace retina {
namespace {

// The node at a dotted key path, or an undefined node.
YAML::Node NodeAt(const YAML::Node& root, const std::string& path) {
  // Note: Node::operator= writes through to the referenced node; only
  // reset() rebinds a handle.
  YAML::Node node;
  node.reset(root);
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    if (!node || !node.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    YAML::Node next(YAML::NodeType::Undefined);
    bool found = false;
    for (const auto& kv : node) {
      if (kv.first.IsScalar() && kv.first.Scalar() == part) {
        next.reset(kv.second);
        found = true;
      }
    }
    if (!found) return YAML::Node(YAML::NodeType::Undefined);
    node.reset(next);
  }
  return node;
}

void AddAt(ConfigErrors* errors, const YAML::Node& root, const std::string& path,
           const std::string& message) {
  const YAML::Node node = NodeAt(root, path);
  const YAML::Mark mark = node ? node.Mark() : YAML::Mark::null_mark();
  errors->Add(&mark, path, message);
}

void CheckRangePair(ConfigErrors* errors, const YAML::Node& root, const std::string& path,
                    const std::vector<double>& v) {
  if (v.size() != 2) {
    AddAt(errors, root, path, absl::StrCat("expected [lo, hi], got ", v.size(), " values"));
  } else if (v[0] > v[1]) {
    AddAt(errors, root, path, "lo must be <= hi");
  }
}

// Rules that involve more than one key.
void CheckCrossField(const JobConfig& c, const YAML::Node& root, ConfigErrors* errors) {
  if (c.model.image_size % 16 != 0) {
    AddAt(errors, root, "model.image_size",
          absl::StrCat("must be a multiple of 16 (the ViT patch grid), got ", c.model.image_size));
  }
  // A loop builds its own labelled dataset (in jobs/<id>/labelled).
  const bool loop = c.kind == JobKind::kLoop || (c.kind == JobKind::kStudy && !c.study.strategies.empty());
  if (c.kind != JobKind::kInfer && c.kind != JobKind::kServe && !loop && c.data.dataset.empty() &&
      !(c.kind == JobKind::kStudy && !c.study.datasets.empty())) {
    errors->Add(nullptr, "data.dataset", absl::StrCat("required key missing (for kind '", JobKindName(c.kind), "')"));
  }
  for (const char* section : {"pretrain", "finetune", "evaluate", "infer", "study", "serve", "loop"}) {
    // (Without a valid kind the missing or bad `kind` is the error.)
    if (NodeAt(root, section) && NodeAt(root, "kind") && !SectionAllowed(c.kind, section)) {
      AddAt(errors, root, section,
            absl::StrCat("section is for kind '", section, "' but this job is kind '", JobKindName(c.kind), "'"));
    }
  }
  const PretrainAugmentConfig& a = c.pretrain.augment;
  CheckRangePair(errors, root, "pretrain.augment.crop_scale", a.crop_scale);
  CheckRangePair(errors, root, "pretrain.augment.crop_ratio", a.crop_ratio);
  CheckRangePair(errors, root, "pretrain.augment.noise_var", a.noise_var);
  CheckRangePair(errors, root, "pretrain.augment.dropout_holes", a.dropout_holes);

  const FinetuneConfig& f = c.finetune;
  CheckRangePair(errors, root, "finetune.crop_scale", f.crop_scale);
  CheckRangePair(errors, root, "finetune.crop_ratio", f.crop_ratio);
  CheckRangePair(errors, root, "finetune.noise_var", f.noise_var);
  if (f.pad_to != 0 && f.pad_to < c.model.image_size) {
    AddAt(errors, root, "finetune.pad_to",
          absl::StrCat("must be 0 or at least model.image_size (", c.model.image_size, "), got ", f.pad_to));
  }
  if (!f.class_weights.empty() && static_cast<int>(f.class_weights.size()) != c.model.classes) {
    AddAt(errors, root, "finetune.class_weights",
          absl::StrCat("has ", f.class_weights.size(), " weights but model.classes is ",
                       c.model.classes));
  }
  if (f.loss == LossKind::kBceDice && c.model.classes != 1) {
    AddAt(errors, root, "finetune.loss", "bce_dice needs model.classes: 1");
  }
  if (f.loss == LossKind::kCeDice && c.model.classes < 2) {
    AddAt(errors, root, "finetune.loss", "ce_dice needs model.classes >= 2");
  }
  for (const char* key : {"finetune.eval_at", "study.eval_at", "study.seeds"}) {
    const std::vector<double>& v = std::string(key) == "finetune.eval_at" ? f.eval_at
                                   : std::string(key) == "study.eval_at"  ? c.study.eval_at
                                                                          : c.study.seeds;
    for (double x : v) {
      if (x != static_cast<double>(static_cast<int64_t>(x))) AddAt(errors, root, key, "whole numbers only");
    }
  }
  if (!f.eval_at.empty()) {
    for (size_t i = 0; i < f.eval_at.size(); ++i) {
      if (f.eval_at[i] > f.iters) {
        AddAt(errors, root, "finetune.eval_at", absl::StrCat(f.eval_at[i], " is past finetune.iters (", f.iters, ")"));
      }
      if (i > 0 && f.eval_at[i] <= f.eval_at[i - 1]) AddAt(errors, root, "finetune.eval_at", "must be increasing");
    }
    if ((c.kind == JobKind::kFinetune || c.kind == JobKind::kLoop) && c.data.test_dataset.empty()) {
      errors->Add(nullptr, "data.test_dataset", "required with finetune.eval_at (the held-out split scored there)");
    }
  }
  if (c.kind == JobKind::kFinetune && NodeAt(root, "evaluate.checkpoint")) {
    AddAt(errors, root, "evaluate.checkpoint", "a fine-tune scores its own checkpoints at finetune.eval_at; remove it");
  }
  if (loop) {
    const LoopConfig& l = c.loop;
    if (l.pool.empty()) errors->Add(nullptr, "loop.pool", "required for an annotation loop (the unlabelled volume)");
    if (l.pool_labels.empty()) {
      errors->Add(nullptr, "loop.pool_labels", "required for an annotation loop (the simulated annotator's ground truth)");
    }
    if (c.data.test_dataset.empty()) {
      errors->Add(nullptr, "data.test_dataset", "required for an annotation loop (every round is scored on it)");
    }
    if (!c.data.dataset.empty()) {
      AddAt(errors, root, "data.dataset", "an annotation loop builds its labelled dataset from loop.pool; remove it");
    }
    if (NodeAt(root, "finetune.eval_at")) {
      AddAt(errors, root, "finetune.eval_at", "an annotation loop scores each round at its end; remove it");
    }
    if (l.block != 0 && l.block < c.model.image_size) {
      AddAt(errors, root, "loop.block",
            absl::StrCat("at least model.image_size (", c.model.image_size, "), or 0 = model.image_size; got ", l.block));
    }
    // Each block is cut into ceil(block / image_size)^2 training tiles.
    const int64_t side = l.block > 0 ? l.block : c.model.image_size;
    const int64_t per_side = (side + c.model.image_size - 1) / std::max(1, c.model.image_size);
    if (int64_t{l.initial_blocks} * per_side * per_side < c.finetune.global_batch) {
      AddAt(errors, root, "loop.initial_blocks",
            absl::StrCat(l.initial_blocks, " block(s) of ", side, " give ", int64_t{l.initial_blocks} * per_side * per_side,
                         " training tile(s), fewer than finetune.global_batch (", c.finetune.global_batch, ")"));
    }
  }
  for (const auto& [key, value] : {std::pair<const char*, const std::string*>{"data.val_dataset", &c.data.val_dataset},
                                    {"data.test_dataset", &c.data.test_dataset}}) {
    const size_t at = value->rfind('@');
    if (at != std::string::npos && value->find('/', at) == std::string::npos) {
      AddAt(errors, root, key, "a version (@k) is for data.dataset only");
    }
  }
  if (c.kind == JobKind::kStudy && !c.study.strategies.empty()) {
    const StudyConfig& st = c.study;
    if (st.inits.size() > 1) {
      AddAt(errors, root, "study.inits", "a loop study's arms are its strategies: give at most one init");
    }
    if (!st.eval_at.empty()) {
      AddAt(errors, root, "study.eval_at",
            "a loop study is scored after every round at its blocks labelled (loop.initial_blocks + "
            "k loop.blocks_per_round); remove it");
    }
    if (!st.datasets.empty()) AddAt(errors, root, "study.datasets", "a loop study has one pool; remove it");
  }
  if (c.kind == JobKind::kStudy) {
    const StudyConfig& st = c.study;
    const bool loop_study = !st.strategies.empty();
    if (st.inits.empty() && !loop_study) {
      errors->Add(nullptr, "study.inits", "required for kind 'study' (e.g. [random, jobs/<pretrain>])");
    }
    if (!st.init_names.empty() && st.init_names.size() != st.inits.size()) {
      AddAt(errors, root, "study.init_names", absl::StrCat("has ", st.init_names.size(), " names for ", st.inits.size(), " inits"));
    }
    if (st.seeds.empty() == (st.seed_count == 0)) {
      errors->Add(nullptr, "study.seeds", "give either seeds (a list) or seed_count (a number), not both");
    }
    if (st.eval_at.empty() && !loop_study) {
      errors->Add(nullptr, "study.eval_at", "required for kind 'study' (e.g. [200, 400, 600])");
    }
    for (size_t i = 0; i < st.eval_at.size(); ++i) {
      if (i > 0 && st.eval_at[i] <= st.eval_at[i - 1]) AddAt(errors, root, "study.eval_at", "must be increasing");
    }
    if (st.datasets.empty() && c.data.test_dataset.empty()) {
      errors->Add(nullptr, "data.test_dataset", "required for kind 'study' without study.datasets (the held-out split)");
    }
    if (NodeAt(root, "finetune.init") && !loop_study) {
      AddAt(errors, root, "finetune.init", "a study sets each child's init from study.inits; remove it");
    }
    if (NodeAt(root, "finetune.eval_at")) {
      AddAt(errors, root, "finetune.eval_at", "a study sets each child's eval_at from study.eval_at; remove it");
    }
  }
  if (!c.finetune.register_as.empty()) {
    if (c.kind != JobKind::kFinetune) {
      AddAt(errors, root, "finetune.register", "only a finetune job registers its checkpoint as a model");
    } else if (const absl::Status s = ValidateModelName(c.finetune.register_as, "finetune.register"); !s.ok()) {
      AddAt(errors, root, "finetune.register", std::string(s.message()));
    }
  }
  if (c.kind == JobKind::kEvaluate && c.evaluate.checkpoint.empty()) {
    errors->Add(nullptr, "evaluate.checkpoint", "required for kind 'evaluate'");
  }
  if (c.kind == JobKind::kServe) {
    if (c.serve.models.empty()) errors->Add(nullptr, "serve.models", "required for kind 'serve' (NAME=WEIGHTS each)");
    for (size_t i = 0; i < c.serve.models.size(); ++i) {
      const std::string& m = c.serve.models[i];
      const size_t eq = m.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == m.size()) {
        AddAt(errors, root, "serve.models", absl::StrCat("entry ", i, ": '", m, "' is not NAME=WEIGHTS"));
      }
    }
  }
  if (c.kind == JobKind::kInfer) {
    const InferConfig& i = c.infer;
    if (i.weights.empty()) errors->Add(nullptr, "infer.weights", "required for kind 'infer'");
    if (i.inputs.empty()) errors->Add(nullptr, "infer.inputs", "required for kind 'infer' (a file, folder or glob)");
    if (i.chunks.size() != 3) {
      AddAt(errors, root, "infer.chunks", absl::StrCat("expected [z, y, x], got ", i.chunks.size(), " values"));
    }
    for (double v : i.chunks) {
      if (v != static_cast<int64_t>(v)) AddAt(errors, root, "infer.chunks", "chunk sizes are whole numbers");
    }
    if (i.probabilities != ProbabilityOutput::kNone && i.format == InferFormat::kTiff) {
      AddAt(errors, root, "infer.probabilities", "needs format ome-zarr or hdf5 (a TIFF holds the labels only)");
    }
    if (i.uncertainty != UncertaintyOutput::kNone && i.format != InferFormat::kOmeZarr) {
      AddAt(errors, root, "infer.uncertainty", "needs format ome-zarr (<input>.uncertainty.ome.zarr)");
    }
    if (i.format == InferFormat::kHdf5 && i.probabilities != ProbabilityOutput::kNone &&
        i.probabilities != ProbabilityOutput::kFloat32) {
      AddAt(errors, root, "infer.probabilities", "HDF5 output writes float32 probabilities; say float32");
    }
  }
}

}  // namespace

absl::StatusOr<JobConfig> ParseJobConfig(const std::string& yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ":", e.mark.line + 1, ":",
                                                   e.mark.column + 1, ": YAML syntax error: ",
                                                   e.msg));
  }
  ConfigErrors errors(source);
  if (!root || root.IsNull()) {
    errors.Add(nullptr, "(top level)", "empty file; at least 'kind' and 'data.dataset' are required");
    return errors.ToStatus();
  }
  JobConfig config;
  YamlDecoder::Decode(root, "", &config, &errors);
  if (errors.empty()) CheckCrossField(config, root, &errors);
  RETURN_IF_ERROR(errors.ToStatus());
  return config;
}

absl::StatusOr<JobConfig> LoadJobConfig(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path), "reading job config");
  return ParseJobConfig(text, path.string());
}

absl::StatusOr<std::string> ApplyConfigOverrides(const std::string& yaml_text, const std::vector<std::string>& overrides) {
  if (overrides.empty()) return yaml_text;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("job YAML: ", e.what()));
  }
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) return absl::InvalidArgumentError("--set: the job YAML is not a map");
  for (const std::string& o : overrides) {
    const size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--set '", o, "': expected key.path=value"));
    }
    const std::vector<std::string> path = absl::StrSplit(o.substr(0, eq), '.');
    YAML::Node value;
    try {
      value = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("--set '", o, "': the value is not YAML: ", e.what()));
    }
    YAML::Node node = root;
    for (size_t i = 0; i + 1 < path.size(); ++i) {
      if (path[i].empty()) return absl::InvalidArgumentError(absl::StrCat("--set '", o, "': empty key in the path"));
      YAML::Node child = node[path[i]];
      if (!child.IsDefined() || child.IsNull()) {
        node[path[i]] = YAML::Node(YAML::NodeType::Map);
        child.reset(node[path[i]]);  // reset rebinds; operator= would overwrite the bound node
      }
      if (!child.IsMap()) {
        return absl::InvalidArgumentError(absl::StrCat("--set '", o, "': ", path[i], " is not a map in the job YAML"));
      }
      node.reset(child);
    }
    node[path.back()] = value;
  }
  YAML::Emitter out;
  out << root;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::int64_t> WholeNumbers(const std::vector<double>& v) {
  return std::vector<std::int64_t>(v.begin(), v.end());
}

bool SectionAllowed(JobKind kind, const std::string& section) {
  if (section == JobKindName(kind)) return true;
  if (kind == JobKind::kFinetune) return section == "evaluate";
  if (kind == JobKind::kStudy) return section == "finetune" || section == "evaluate" || section == "loop";
  if (kind == JobKind::kLoop) return section == "finetune" || section == "evaluate";
  return false;
}

std::string JobConfigToYaml(JobConfig config) {
  // Only the sections of the job's kind, so the result parses back as a job.
  YAML::Node resolved = YAML::Load(YamlEncoder::Encode(config));
  for (const char* section : {"pretrain", "finetune", "evaluate", "infer", "study", "serve", "loop"}) {
    if (!SectionAllowed(config.kind, section)) resolved.remove(section);
  }
  if (config.kind == JobKind::kFinetune) resolved["evaluate"].remove("checkpoint");
  if (config.kind == JobKind::kLoop) {
    resolved["finetune"].remove("eval_at");
    resolved["evaluate"].remove("checkpoint");
    resolved["data"].remove("dataset");
  }
  if (config.kind == JobKind::kStudy) {
    if (config.study.strategies.empty()) resolved.remove("loop");
    resolved["finetune"].remove("init");
    resolved["finetune"].remove("eval_at");
    resolved["evaluate"].remove("checkpoint");
  }
  YAML::Emitter out;
  out << resolved;
  return std::string(out.c_str()) + "\n";
}

std::string JobConfigSchemaMarkdown() {
  JobConfig defaults;
  return absl::StrCat(
      "# Job configuration reference\n\n"
      "Generated from `common/job_config.h` by `retina-train config schema`; a test keeps this\n"
      "file identical to the code. A job YAML needs only `kind` and `data.dataset`; every other\n"
      "key has the default shown (the values of the RETINA paper and reference, see\n"
      "`METHOD.md`). Unknown keys are errors, with the closest valid key suggested.\n"
      "Only the section of the job's own kind (`pretrain`, `finetune`, `evaluate`, `infer`, `study`) may appear;\n"
      "a fine-tune may also have `evaluate` (how `finetune.eval_at` scores), a study `finetune` and\n"
      "`evaluate` (its children's).\n\n"
      "| key | type | default | unit | allowed | meaning |\n"
      "|---|---|---|---|---|---|\n",
      SchemaDoc::Document(defaults));
}

}  // namespace retina
