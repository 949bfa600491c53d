#include "services/coordinator/model_registry.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>
#include <zip.h>
#include <google/protobuf/util/json_util.h>

#include <cerrno>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/checkpoint_store.h"
#include "common/dataset_manifest.h"
#include "common/file_util.h"
#include "common/job_config.h"
#include "common/model_ref.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "common/store_layout.h"

namespace retina::coordinator {
namespace fs = std::filesystem;
namespace v1 = retina::v1;

namespace {

// The "score" line of a MANIFEST (the validation IoU the run kept), if any.
std::optional<double> ManifestScore(const std::string& manifest) {
  for (absl::string_view line : absl::StrSplit(manifest, '\n')) {
    double v = 0;
    if (absl::ConsumePrefix(&line, "score ") && absl::SimpleAtod(line, &v)) return v;
  }
  return std::nullopt;
}

void AddDataset(v1::LineageStep* st, const fs::path& store, const std::string& role, const std::string& name,
                int version = 0, const std::string& digest = "") {
  if (name.empty()) return;
  v1::DatasetUse* d = st->add_datasets();
  d->set_role(role);
  // As the job file would name it: the ranks run with absolute paths.
  std::string shown = fs::path(name).is_absolute() ? StoreRelative(name, store) : name;
  if (absl::StartsWith(shown, "datasets/") && shown.find('/', 9) == std::string::npos) shown = shown.substr(9);
  d->set_name(shown);
  if (version > 0 && !digest.empty()) {
    d->set_version(version);
    d->set_digest(digest);
    return;
  }
  // Not recorded by the run (validation and test splits, early checkpoints):
  // the dataset's current version, which is what the name reads today.
  const std::string plain = name.substr(0, name.find('@'));
  const fs::path dir = plain.find('/') == std::string::npos ? store / "datasets" / plain : store / plain;
  absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(dir);
  if (!m.ok()) return;
  d->set_version(m->latest_version());
  d->set_digest(m->VersionDigest(static_cast<int64_t>(m->shards.size())));
}

// One link: the checkpoint at `dir` and what its run recorded.
v1::LineageStep ReadStep(const fs::path& store, const fs::path& dir, std::string* next) {
  v1::LineageStep st;
  const std::string rel = StoreRelative(dir, store);
  st.set_checkpoint(rel);
  next->clear();
  const std::vector<std::string> parts = absl::StrSplit(rel, '/');
  int version = 0;
  const bool model = parts.size() == 3 && parts[0] == "models" && absl::StartsWith(parts[2], "v") &&
                     absl::SimpleAtoi(parts[2].substr(1), &version);
  absl::StatusOr<std::string> manifest = ReadFile(dir / "MANIFEST");
  if (!manifest.ok()) {
    st.set_note(absl::StrCat("unreadable: ", manifest.status().message()));
    return st;
  }
  st.set_manifest_sha256(Sha256Hex(*manifest));
  if (model) {  // the registry appends this model's own chain
    st.set_model_id(ModelId(parts[1], version));
    return st;
  }
  if (parts.size() == 4 && parts[0] == "jobs" && parts[2] == "checkpoints") st.set_job_id(parts[1]);
  absl::StatusOr<std::string> state_text = ReadFile(dir / StoreLayout::kCheckpointState);
  absl::StatusOr<CheckpointState> state =
      state_text.ok() ? DecodeCheckpointState(*state_text, (dir / StoreLayout::kCheckpointState).string())
                      : absl::StatusOr<CheckpointState>(state_text.status());
  if (!state.ok()) {
    st.set_note(absl::StrCat("no run record: ", state.status().message()));
    return st;
  }
  st.set_kind(state->kind);
  st.set_step(state->step);
  st.set_code_version(state->code_version);
  nlohmann::json scores = nlohmann::json::object();
  if (const std::optional<double> score = ManifestScore(*manifest)) scores["val_iou"] = *score;
  std::optional<JobConfig> config;
  if (!st.job_id().empty()) {
    const StoreLayout layout(store);
    if (absl::StatusOr<std::string> spec = ReadFile(layout.SpecPath(st.job_id())); spec.ok()) {
      st.set_config_yaml(*spec);
      if (absl::StatusOr<JobConfig> c = ParseJobConfig(*spec, layout.SpecPath(st.job_id()).string()); c.ok()) {
        config = *c;
      }
    }
    for (const auto& [key, path] : {std::pair<const char*, fs::path>{"test", layout.StepEvalPath(st.job_id(), state->step)},
                                    {"eval", layout.EvalReportPath(st.job_id())}}) {
      if (absl::StatusOr<std::string> text = ReadFile(path); text.ok()) {
        nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
        if (!j.is_discarded()) scores[key] = j;
      }
    }
  }
  if (!scores.empty()) st.set_scores_json(scores.dump());
  if (config) {
    AddDataset(&st, store, "train", config->data.dataset, state->dataset_version, state->dataset_digest);
    AddDataset(&st, store, "val", config->data.val_dataset);
    AddDataset(&st, store, "test", config->data.test_dataset);
  } else if (!state->dataset.empty()) {
    AddDataset(&st, store, "train", StoreRelative(state->dataset, store), state->dataset_version,
               state->dataset_digest);
  }
  if (!state->init.empty()) {
    st.set_init(state->init);
  } else if (state->kind == "pretrain") {
    st.set_init("random");
  } else if (config) {  // an early checkpoint: the job file's words, unresolved
    st.set_init(config->finetune.init);
    if (config->finetune.init != "random") {
      st.set_note("an early checkpoint: its init is the job file's finetune.init, not the checkpoint it resolved to");
    }
  }
  if (st.init() != "random" && st.note().empty()) *next = st.init();
  return st;
}

}  // namespace

std::vector<v1::LineageStep> CollectLineage(const fs::path& store, const fs::path& dir) {
  std::vector<v1::LineageStep> chain;
  std::set<std::string> seen;
  fs::path cur = dir;
  for (int depth = 0; depth < 64; ++depth) {
    std::string next;
    chain.push_back(ReadStep(store, cur, &next));
    if (!seen.insert(chain.back().checkpoint()).second) {
      chain.back().set_note("the chain loops back here");
      break;
    }
    if (next.empty() || !chain.back().model_id().empty()) break;
    fs::path p = next;
    if (p.is_relative()) p = store / p;
    std::error_code ec;
    if (!fs::is_directory(p, ec)) {  // an imported file (.pt, .npz): the chain ends there
      v1::LineageStep file;
      file.set_checkpoint(next);
      if (absl::StatusOr<FileDigest> d = Sha256File(p); d.ok()) file.set_manifest_sha256(d->sha256);
      file.set_note(fs::exists(p, ec) ? "a weights file from outside the service's runs" : "no longer in the store");
      chain.push_back(std::move(file));
      break;
    }
    cur = p;
  }
  return chain;
}

absl::StatusOr<RegistrationFiles> StageRegistration(const fs::path& store, const std::string& job_id, int64_t step) {
  const StoreLayout layout(store);
  const fs::path ckpts = layout.CheckpointsDir(job_id);
  RegistrationFiles out;
  if (step == 0) {
    absl::StatusOr<std::string> latest = CheckpointStore(ckpts).ReadLatestPointer();
    if (!latest.ok()) {
      return absl::NotFoundError(absl::StrCat("job ", job_id, " has no checkpoint to register (no LATEST in ",
                                              ckpts.string(), ")"));
    }
    out.checkpoint = ckpts / *latest;
  } else {
    out.checkpoint = ckpts / CheckpointDirName(step);
    std::error_code ec;
    if (!fs::is_directory(out.checkpoint, ec)) {
      std::vector<std::string> have;
      for (const auto& e : fs::directory_iterator(ckpts, ec)) {
        if (absl::StartsWith(e.path().filename().string(), "step-")) have.push_back(e.path().filename().string());
      }
      std::sort(have.begin(), have.end());
      return absl::NotFoundError(absl::StrCat("job ", job_id, " has no checkpoint at step ", step, " (it has: ",
                                              have.empty() ? "none" : absl::StrJoin(have, ", "), ")"));
    }
  }
  ASSIGN_OR_RETURN(CheckpointInfo info, CheckpointStore::Verify(out.checkpoint),
                   absl::StrCat("job ", job_id, " step ", step));
  out.lineage = CollectLineage(store, info.dir);
  out.staged = ModelsDir(store) / ".incoming" / UniqueTempName("register-");
  RETURN_IF_ERROR(CreateDirectories(out.staged));
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(info.dir, ec)) {
    if (!e.is_regular_file()) continue;
    const fs::path to = out.staged / e.path().filename();
    // Hard links: the same bytes at no cost, and they outlive the job's own
    // name for them (its retention, a deleted job directory). Another file
    // system: a copy.
    if (::link(e.path().c_str(), to.c_str()) != 0) {
      const int err = errno;
      if (err != EXDEV && err != EPERM && err != EMLINK) return ErrnoStatus(err, "link", to);
      if (!fs::copy_file(e.path(), to, ec)) return ErrnoStatus(ec.value(), "copy", to);
    }
  }
  if (ec) return ErrnoStatus(ec.value(), "list", info.dir);
  return out;
}

namespace {

absl::StatusOr<std::string> ZipMember(zip_t* z, const std::string& name, const std::string& where) {
  zip_stat_t st;
  if (zip_stat(z, name.c_str(), 0, &st) != 0) return absl::InvalidArgumentError(absl::StrCat(where, ": no ", name));
  zip_file_t* f = zip_fopen(z, name.c_str(), 0);
  if (f == nullptr) return absl::InvalidArgumentError(absl::StrCat(where, ": cannot open ", name));
  std::string out(st.size, '\0');
  const zip_int64_t n = zip_fread(f, out.data(), st.size);
  zip_fclose(f);
  if (n != static_cast<zip_int64_t>(st.size)) return absl::DataLossError(absl::StrCat(where, ": cannot read ", name));
  return out;
}

}  // namespace

absl::StatusOr<RegistrationFiles> StageImport(const fs::path& store, const fs::path& package) {
  const std::string where = absl::StrCat("package: ", package.string());
  int err = 0;
  zip_t* z = zip_open(package.c_str(), ZIP_RDONLY, &err);
  if (z == nullptr) return absl::InvalidArgumentError(absl::StrCat(where, ": not a zip archive (libzip error ", err, ")"));
  struct Closer {
    zip_t* z;
    ~Closer() { zip_discard(z); }
  } closer{z};
  absl::StatusOr<std::string> rdf_text = ZipMember(z, "rdf.yaml", where);
  if (!rdf_text.ok()) rdf_text = ZipMember(z, "bioimageio.yaml", where);
  if (!rdf_text.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": not a BioImage.IO package (no rdf.yaml)"));
  std::string name;
  try {
    const YAML::Node rdf = YAML::Load(*rdf_text);
    const std::string version = rdf["format_version"] ? rdf["format_version"].as<std::string>() : "";
    if (!absl::StartsWith(version, "0.5.") || !rdf["type"] || rdf["type"].as<std::string>() != "model") {
      return absl::InvalidArgumentError(absl::StrCat(where, ": not a model description of format 0.5"));
    }
    const YAML::Node w = rdf["weights"]["pytorch_state_dict"];
    if (!w || !w["source"] || !w["sha256"]) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": weights: no pytorch_state_dict with source and sha256"));
    }
    ASSIGN_OR_RETURN(std::string weights, ZipMember(z, w["source"].as<std::string>(), where));
    if (Sha256Hex(weights) != w["sha256"].as<std::string>()) {
      return absl::DataLossError(absl::StrCat(where, ": ", w["source"].as<std::string>(),
                                              " does not match its sha256 in rdf.yaml"));
    }
    name = rdf["name"] ? rdf["name"].as<std::string>() : "";
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": rdf.yaml: ", e.what()));
  }
  RegistrationFiles out;
  out.checkpoint = package;
  v1::LineageStep first;
  first.set_checkpoint(StoreRelative(package, store));
  ASSIGN_OR_RETURN(FileDigest digest, Sha256File(package), where);
  first.set_manifest_sha256(digest.sha256);  // of the package file itself
  first.set_note(absl::StrCat("a BioImage.IO package ('", name,
                              "'), imported; its weights are checked against its test tensors wherever they are used"));
  out.lineage.push_back(first);
  // A package we exported carries the registry's record of its version.
  if (absl::StatusOr<std::string> lineage = ZipMember(z, "lineage.json", where); lineage.ok()) {
    v1::ModelVersion was;
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    if (!google::protobuf::util::JsonStringToMessage(*lineage, &was, options).ok()) {
      // Not ours, or damaged: the chain stops at the package, saying so.
      out.lineage[0].set_note(absl::StrCat(out.lineage[0].note(), "; its lineage.json is not a model record, ignored"));
    } else {
      for (const v1::LineageStep& st : was.lineage()) out.lineage.push_back(st);
      if (out.lineage.size() > 1 && out.lineage[1].model_id().empty()) out.lineage[1].set_model_id(was.id());
      for (size_t i = 1; i < out.lineage.size(); ++i) {
        out.lineage[i].set_note(absl::StrCat(out.lineage[i].note(), out.lineage[i].note().empty() ? "" : "; ",
                                             "from the package's lineage.json (as exported)"));
      }
    }
  }
  out.staged = ModelsDir(store) / ".incoming" / UniqueTempName("import-");
  RETURN_IF_ERROR(CreateDirectories(out.staged));
  const fs::path to = out.staged / "package.zip";
  if (::link(package.c_str(), to.c_str()) != 0) {
    std::error_code ec;
    if (!fs::copy_file(package, to, ec)) return ErrnoStatus(ec.value(), "copy", to);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Open(JobStore* db, fs::path store,
                                                                   CoordinatorMetrics* metrics) {
  std::unique_ptr<ModelRegistry> r(new ModelRegistry(db, std::move(store), metrics));
  ASSIGN_OR_RETURN(std::vector<v1::ModelVersion> all, db->LoadModels());
  for (v1::ModelVersion& m : all) r->models_[m.name()][m.version()] = std::move(m);
  for (const auto& [name, versions] : r->models_) RETURN_IF_ERROR(r->WriteIndex(name));
  // Staged registrations a crash left behind were never committed.
  std::error_code ec;
  fs::remove_all(ModelsDir(r->store_) / ".incoming", ec);
  r->Count();
  return r;
}

absl::StatusOr<const v1::ModelVersion*> ModelRegistry::Resolve(const std::string& ref) const {
  ASSIGN_OR_RETURN(ModelRef r, ParseModelRef(ref, "ref"));
  auto it = models_.find(r.name);
  if (it == models_.end() || it->second.empty()) {
    return absl::NotFoundError(absl::StrCat("no model named '", r.name, "' (`retina models list` shows them)"));
  }
  if (r.version > 0) {
    auto v = it->second.find(r.version);
    if (v == it->second.end()) {
      std::vector<std::string> have;
      for (const auto& [n, m] : it->second) have.push_back(m.id());
      return absl::NotFoundError(absl::StrCat("model '", r.name, "' has no version v", r.version, " (it has ",
                                              absl::StrJoin(have, ", "), ")"));
    }
    return &v->second;
  }
  if (!r.tag.empty()) {
    for (const auto& [n, m] : it->second) {
      if (std::find(m.tags().begin(), m.tags().end(), r.tag) != m.tags().end()) return &m;
    }
    return absl::NotFoundError(absl::StrCat("model '", r.name, "' has no version tagged '", r.tag, "'"));
  }
  return &it->second.rbegin()->second;
}

std::vector<const v1::ModelVersion*> ModelRegistry::List(const std::string& name) const {
  std::vector<const v1::ModelVersion*> out;
  for (const auto& [n, versions] : models_) {
    if (!name.empty() && n != name) continue;
    for (const auto& [v, m] : versions) out.push_back(&m);
  }
  return out;
}

std::string ModelRegistry::Owner(const std::string& name) const {
  auto it = models_.find(name);
  return it == models_.end() || it->second.empty() ? "" : it->second.begin()->second.user();
}

int ModelRegistry::NextVersion(const std::string& name) const {
  auto it = models_.find(name);
  return it == models_.end() || it->second.empty() ? 1 : it->second.rbegin()->first + 1;
}

bool ModelRegistry::HasVersionFrom(const std::string& job_id) const {
  for (const auto& [n, versions] : models_) {
    for (const auto& [v, m] : versions) {
      if (m.lineage_size() > 0 && m.lineage(0).job_id() == job_id) return true;
    }
  }
  return false;
}

const v1::ModelVersion* ModelRegistry::UsedBy(const std::string& id) const {
  for (const auto& [n, versions] : models_) {
    for (const auto& [v, m] : versions) {
      if (m.id() == id) continue;
      for (const v1::LineageStep& st : m.lineage()) {
        if (st.model_id() == id) return &m;
      }
    }
  }
  return nullptr;
}

absl::Status ModelRegistry::Put(const std::vector<v1::ModelVersion>& models) {
  RETURN_IF_ERROR(db_->BeginBatch());
  for (const v1::ModelVersion& m : models) {
    if (absl::Status s = db_->PutModel(m); !s.ok()) {
      db_->RollbackBatch();
      return s;
    }
  }
  RETURN_IF_ERROR(db_->CommitBatch());
  std::set<std::string> names;
  for (const v1::ModelVersion& m : models) {
    models_[m.name()][m.version()] = m;
    names.insert(m.name());
  }
  for (const std::string& n : names) RETURN_IF_ERROR(WriteIndex(n));
  Count();
  return absl::OkStatus();
}

absl::Status ModelRegistry::Remove(const std::string& id) {
  ASSIGN_OR_RETURN(const v1::ModelVersion* m, Resolve(id));
  const std::string name = m->name();
  const int version = m->version();
  RETURN_IF_ERROR(db_->DeleteModel(id));
  models_[name].erase(version);
  if (models_[name].empty()) models_.erase(name);
  RETURN_IF_ERROR(WriteIndex(name));
  Count();
  return absl::OkStatus();
}

absl::Status ModelRegistry::WriteIndex(const std::string& name) const {
  ModelIndex index;
  index.name = name;
  if (auto it = models_.find(name); it != models_.end()) {
    for (const auto& [v, m] : it->second) {
      index.versions.push_back(v);
      for (const std::string& t : m.tags()) index.tags[t] = v;
    }
  }
  const fs::path path = ModelIndexPath(store_, name);
  RETURN_IF_ERROR(CreateDirectories(path.parent_path()));
  return WriteFileAtomic(path, EncodeModelIndex(index));
}

void ModelRegistry::Count() const {
  if (metrics_ == nullptr) return;
  int n = 0;
  for (const auto& [name, versions] : models_) n += static_cast<int>(versions.size());
  metrics_->SetModels(n);
}

}  // namespace retina::coordinator
