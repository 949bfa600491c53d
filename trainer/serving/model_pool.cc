#include "trainer/serving/model_pool.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/checkpoint_store.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "trainer/model/weights/weight_source.h"
#include "trainer/prediction/inference.h"
#include "trainer/runtime/device.h"
#include "trainer/runtime/threads.h"

namespace retina::trainer::serving {
namespace fs = std::filesystem;

namespace {

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  }
  return name != "." && name != "..";
}

fs::path Canonical(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(p, ec);
  return ec ? p : c;
}

}  // namespace

absl::StatusOr<ServingDevice> PlanServingDevice(const std::string& device, const std::string& precision) {
  ASSIGN_OR_RETURN(DevicePlan plan, PlanDevice(device, precision, 0));
  return ServingDevice{plan.device, plan.bf16, plan.describe};
}

void ConfigureServingThreads(int threads) { ConfigureTorchThreads(1, threads); }

torch::Tensor LoadedModel::Forward(const torch::Tensor& windows) const {
  torch::NoGradGuard no_grad;
  VisionTransformer m = model.model;  // a handle; the module is shared
  return ModelForward(m, bf16)(windows.to(model.model->parameters().front().device()));
}

ModelPool::ModelPool(fs::path store, torch::Device device, bool bf16)
    : store_(std::move(store)), device_(device), bf16_(bf16) {}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelPool::Load(const ServedModelSpec& spec, int64_t version) const {
  ModelSelection selection;
  selection.weights = spec.weights;
  selection.store = store_;
  absl::StatusOr<SegmentationModel> loaded_model = absl::InternalError("not loaded");
  try {  // libtorch throws (out of device memory while the old version still serves)
    loaded_model = LoadSegmentationModel(selection, device_);
  } catch (const std::exception& e) {
    loaded_model = absl::ResourceExhaustedError(e.what());
  }
  ASSIGN_OR_RETURN(SegmentationModel m, std::move(loaded_model), absl::StrCat("model ", spec.name));
  auto loaded = std::make_shared<LoadedModel>();
  loaded->spec = spec;
  loaded->version = version;
  loaded->checkpoint = m.weights_file;
  loaded->bf16 = bf16_;
  loaded->model = std::move(m);
  return std::shared_ptr<const LoadedModel>(std::move(loaded));
}

absl::Status ModelPool::Add(const ServedModelSpec& spec) {
  if (!ValidName(spec.name)) {
    return absl::InvalidArgumentError(absl::StrCat("model name '", spec.name, "': use letters, digits, '.', '_', '-'"));
  }
  if (spec.max_batch < 1) return absl::InvalidArgumentError(absl::StrCat("model ", spec.name, ": max_batch must be >= 1"));
  if (spec.max_delay_ms < 0) return absl::InvalidArgumentError(absl::StrCat("model ", spec.name, ": max_delay_ms must be >= 0"));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (models_.count(spec.name)) return absl::InvalidArgumentError(absl::StrCat("model ", spec.name, ": named twice"));
  }
  ASSIGN_OR_RETURN(WeightSource source, ResolveWeights(spec.weights, store_, absl::StrCat("model ", spec.name)));
  Entry e;
  // Pinned when the spec names the checkpoint itself (its directory or its
  // model.pt); a LATEST, a checkpoints/ folder or a job directory is followed.
  if (!source.checkpoint_dir.empty()) {
    fs::path named = spec.weights;
    std::error_code ec;
    if (named.is_relative() && !fs::exists(named, ec)) named = store_ / named;
    const fs::path dir = Canonical(source.checkpoint_dir), n = Canonical(named);
    if (n != dir && n != dir / "model.pt") {
      e.follow = source.checkpoint_dir.parent_path();
      e.pointer = CheckpointStore(e.follow).ReadLatestPointer().value_or("");
    }
  }
  ASSIGN_OR_RETURN(e.current, Load(spec, 1));
  RETINA_LOG(Info) << "model " << spec.name << ": " << e.current->checkpoint.string() << " ("
                   << e.current->model.config.name << ", " << e.current->model.config.num_classes << " classes"
                   << (e.follow.empty() ? ", pinned)" : ", following LATEST)");
  std::lock_guard<std::mutex> lock(mu_);
  if (models_.count(spec.name)) return absl::InvalidArgumentError(absl::StrCat("model ", spec.name, ": named twice"));
  models_[spec.name] = std::move(e);
  ++loads_;
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelPool::Get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    std::vector<std::string> names;
    for (const auto& [n, e] : models_) names.push_back(n);
    return absl::NotFoundError(absl::StrCat("model: no model '", name, "' here (served: ",
                                            names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
  }
  return it->second.current;
}

int ModelPool::Refresh() {
  // Which followed models' LATEST moved (under the lock), then the loads
  // (without it: a load reads and verifies a whole checkpoint).
  std::vector<std::pair<std::string, std::string>> moved;  // name, new pointer
  std::map<std::string, std::pair<ServedModelSpec, int64_t>> specs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [name, e] : models_) {
      if (e.follow.empty()) continue;
      absl::StatusOr<std::string> pointer = CheckpointStore(e.follow).ReadLatestPointer();
      if (!pointer.ok() || *pointer == e.pointer) continue;
      e.pointer = *pointer;
      moved.emplace_back(name, *pointer);
      specs[name] = {e.current->spec, e.current->version};
    }
  }
  int swapped = 0;
  for (const auto& [name, pointer] : moved) {
    const auto& [spec, version] = specs[name];
    absl::StatusOr<std::shared_ptr<const LoadedModel>> next = Load(spec, version + 1);
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = models_[name];
    // LATEST's target is what must load: CheckpointStore::Latest falls back
    // to an older checkpoint when it does not verify, which is a refusal here.
    const bool is_target = next.ok() && (*next)->checkpoint.parent_path().filename() == fs::path(pointer).filename();
    if (!next.ok() || !is_target) {
      ++e.refused;
      ++refusals_;
      RETINA_LOG(Warning) << "model " << name << ": new checkpoint " << pointer << " refused, still serving "
                          << e.current->checkpoint.string() << " (version " << e.current->version << "): "
                          << (next.ok() ? "it does not verify against its MANIFEST" : next.status().ToString());
      continue;
    }
    if (Canonical((*next)->checkpoint) == Canonical(e.current->checkpoint)) continue;
    e.current = *next;
    ++e.reloads;
    ++loads_;
    ++swapped;
    RETINA_LOG(Info) << "model " << name << ": reloaded " << e.current->checkpoint.string() << " (version "
                     << e.current->version << ")";
  }
  return swapped;
}

std::vector<ModelStatus> ModelPool::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ModelStatus> out;
  for (const auto& [name, e] : models_) {
    ModelStatus s;
    s.spec = e.current->spec;
    s.checkpoint = e.current->checkpoint;
    s.version = e.current->version;
    s.reloads = e.reloads;
    s.refused = e.refused;
    s.config = e.current->model.config.name;
    s.classes = e.current->model.config.num_classes;
    s.window = e.current->model.config.image_size;
    out.push_back(std::move(s));
  }
  return out;
}

bool ModelPool::empty() const {
  std::lock_guard<std::mutex> lock(mu_);
  return models_.empty();
}

int64_t ModelPool::loads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return loads_;
}

int64_t ModelPool::refusals() const {
  std::lock_guard<std::mutex> lock(mu_);
  return refusals_;
}

}  // namespace retina::trainer::serving
