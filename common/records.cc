#include "common/records.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace retina {
namespace {

using Json = nlohmann::ordered_json;

// Typed field access: `where` + key in every error.
class Reader {
 public:
  Reader(const Json& j, std::string where) : j_(j), where_(std::move(where)) {}

  absl::Status Version() const {
    if (!j_.contains("v")) return absl::OkStatus();  // before versions: 1
    if (!j_["v"].is_number_integer()) return Bad("v", "not an integer");
    if (j_["v"].get<int>() > kRecordVersion) {
      return absl::UnimplementedError(absl::StrCat(where_, ": version ", j_["v"].get<int>(),
                                                   " is newer than this build reads (", kRecordVersion, ")"));
    }
    return absl::OkStatus();
  }
  template <class T>
  absl::Status Get(const char* key, T* out, bool required = true) const {
    if (!j_.contains(key) || j_[key].is_null()) {
      return required ? Bad(key, "missing") : absl::OkStatus();
    }
    const Json& v = j_[key];
    if constexpr (std::is_same_v<T, std::string>) {
      if (!v.is_string()) return Bad(key, "not a string");
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!v.is_number()) return Bad(key, "not a number");
    } else if constexpr (std::is_integral_v<T>) {
      if (!v.is_number_integer()) return Bad(key, "not an integer");
    }
    *out = v.get<T>();
    return absl::OkStatus();
  }
  template <class T>
  absl::Status GetOptional(const char* key, std::optional<T>* out) const {
    if (!j_.contains(key) || j_[key].is_null()) return absl::OkStatus();
    T v{};
    if (absl::Status s = Get(key, &v); !s.ok()) return s;
    *out = v;
    return absl::OkStatus();
  }
  // {"1": 0.5, ...} (or, as older eval events were, [x1, x2, ...] for classes 1, 2, ...).
  absl::Status GetClassMap(const char* key, std::map<int, double>* out, bool required) const {
    if (!j_.contains(key)) return required ? Bad(key, "missing") : absl::OkStatus();
    const Json& v = j_[key];
    if (v.is_array()) {
      for (size_t i = 0; i < v.size(); ++i) {
        if (!v[i].is_number()) return Bad(key, absl::StrCat("[", i, "] not a number"));
        (*out)[static_cast<int>(i) + 1] = v[i].get<double>();
      }
      return absl::OkStatus();
    }
    if (!v.is_object()) return Bad(key, "not an object of class -> value");
    for (const auto& [k, x] : v.items()) {
      int cls = 0;
      try {
        size_t used = 0;
        cls = std::stoi(k, &used);
        if (used != k.size()) throw std::invalid_argument(k);
      } catch (const std::exception&) {
        return Bad(key, absl::StrCat("'", k, "' is not a class index"));
      }
      if (!x.is_number()) return Bad(key, absl::StrCat(k, " not a number"));
      (*out)[cls] = x.get<double>();
    }
    return absl::OkStatus();
  }
  const Json& json() const { return j_; }
  const std::string& where() const { return where_; }
  absl::Status Bad(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(where_, ".", key, ": ", what));
  }

 private:
  const Json& j_;
  std::string where_;
};

Json ClassMap(const std::map<int, double>& m) {
  Json j = Json::object();
  for (const auto& [cls, v] : m) j[std::to_string(cls)] = v;
  return j;
}

absl::StatusOr<Json> ParseObject(absl::string_view text, const std::string& where) {
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError(where + ": not a JSON object");
  return j;
}

template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

}  // namespace

std::string DescribeExit(int code) {
  if (code == kExitOk) return "ok";
  if (code == kExitPreempted) return "preempted (exit 75: stopped after a checkpoint)";
  if (code > 128) return absl::StrCat("killed by signal ", code - 128);
  return absl::StrCat("failed (exit ", code, ")");
}

const char* ExitResult(int code) {
  return code == kExitOk ? "ok" : code == kExitPreempted ? "preempted" : code > 128 ? "killed" : "failed";
}

std::string DescribeResize(const ResizedEvent& e) {
  return absl::StrCat("resized: ", e.from_world, " -> ", e.to_world, " ranks, accumulation ", e.from_accumulation, " -> ",
                      e.to_accumulation);
}

const char* EventName(const Event& e) {
  static constexpr const char* kNames[] = {"start", "step",      "eval", "checkpoint",
                                           "resumed", "preempted", "done", "predict", "resized", "serving"};
  return kNames[e.index()];
}

std::optional<int64_t> EventStep(const Event& e) {
  return std::visit(Overloaded{[](const EvalEvent& x) { return x.step; },
                               [](const DoneEvent& x) { return x.step; },
                               [](const PredictEvent& x) -> std::optional<int64_t> { return x.chunks_done; },
                               [](const ServingEvent&) -> std::optional<int64_t> { return std::nullopt; },
                               [](const auto& x) -> std::optional<int64_t> { return x.step; }},
                    e);
}

std::string EncodeEvent(const Event& e, double time_unix_s) {
  Json j = {{"event", EventName(e)}, {"v", kRecordVersion}};
  std::visit(Overloaded{
                 [&](const StartEvent& x) {
                   j.update({{"step", x.step}, {"total_steps", x.total_steps}, {"world_size", x.world_size},
                             {"device", x.device}, {"backend", x.backend}, {"threads", x.threads},
                             {"global_batch", x.global_batch}, {"accumulation", x.accumulation}});
                 },
                 [&](const StepEvent& x) {
                   j.update({{"step", x.step}, {"epoch", x.epoch}, {"loss", x.loss}, {"lr", x.lr},
                             {"images_per_s", x.images_per_s}, {"data_wait_s", x.data_wait_s},
                             {"allreduce_s", x.allreduce_s}});
                 },
                 [&](const EvalEvent& x) {
                   if (x.step) j["step"] = *x.step;
                   j["iou"] = x.iou;
                   j["iou_per_class"] = ClassMap(x.iou_per_class);
                 },
                 [&](const CheckpointEvent& x) {
                   j.update({{"step", x.step}, {"path", x.path}, {"removed", x.removed}});
                 },
                 [&](const ResumedEvent& x) { j["step"] = x.step; },
                 [&](const PreemptedEvent& x) { j["step"] = x.step; },
                 [&](const DoneEvent& x) {
                   if (x.step) j["step"] = *x.step;
                 },
                 [&](const PredictEvent& x) {
                   j.update({{"chunks_done", x.chunks_done}, {"chunks_total", x.chunks_total},
                             {"chunks_skipped", x.chunks_skipped}, {"voxels_done", x.voxels_done},
                             {"voxels_total", x.voxels_total}, {"voxels_per_s", x.voxels_per_s}});
                 },
                 [&](const ResizedEvent& x) {
                   j.update({{"step", x.step}, {"from_world", x.from_world}, {"to_world", x.to_world},
                             {"from_accumulation", x.from_accumulation}, {"to_accumulation", x.to_accumulation}});
                 },
                 [&](const ServingEvent& x) { j.update({{"address", x.address}, {"models", x.models}}); },
             },
             e);
  j["time"] = time_unix_s;
  return j.dump();
}

absl::StatusOr<Event> DecodeEvent(absl::string_view line, const std::string& where) {
  absl::StatusOr<Json> parsed = ParseObject(line, where);
  if (!parsed.ok()) return parsed.status();
  const Reader r(*parsed, where);
  std::string name;
  RETURN_IF_ERROR(r.Get("event", &name));
  RETURN_IF_ERROR(r.Version());
  if (name == "start") {
    StartEvent x;
    RETURN_IF_ERROR(r.Get("step", &x.step, false));
    RETURN_IF_ERROR(r.Get("total_steps", &x.total_steps));
    RETURN_IF_ERROR(r.Get("world_size", &x.world_size, false));
    RETURN_IF_ERROR(r.Get("threads", &x.threads, false));
    RETURN_IF_ERROR(r.Get("global_batch", &x.global_batch, false));
    RETURN_IF_ERROR(r.Get("accumulation", &x.accumulation, false));
    RETURN_IF_ERROR(r.Get("device", &x.device, false));
    RETURN_IF_ERROR(r.Get("backend", &x.backend, false));
    return Event(x);
  }
  if (name == "step") {
    StepEvent x;
    RETURN_IF_ERROR(r.Get("step", &x.step));
    RETURN_IF_ERROR(r.Get("epoch", &x.epoch, false));
    RETURN_IF_ERROR(r.Get("loss", &x.loss, false));
    RETURN_IF_ERROR(r.Get("lr", &x.lr, false));
    RETURN_IF_ERROR(r.Get("images_per_s", &x.images_per_s, false));
    RETURN_IF_ERROR(r.Get("data_wait_s", &x.data_wait_s, false));
    RETURN_IF_ERROR(r.Get("allreduce_s", &x.allreduce_s, false));
    return Event(x);
  }
  if (name == "eval") {
    EvalEvent x;
    RETURN_IF_ERROR(r.GetOptional("step", &x.step));
    RETURN_IF_ERROR(r.Get("iou", &x.iou));
    RETURN_IF_ERROR(r.GetClassMap("iou_per_class", &x.iou_per_class, false));
    return Event(x);
  }
  if (name == "checkpoint") {
    CheckpointEvent x;
    RETURN_IF_ERROR(r.Get("step", &x.step));
    RETURN_IF_ERROR(r.Get("path", &x.path, false));
    if (r.json().contains("removed")) {
      const Json& v = r.json()["removed"];
      if (!v.is_array()) return r.Bad("removed", "not a list");
      for (const Json& p : v) {
        if (!p.is_string()) return r.Bad("removed", "not a list of strings");
        x.removed.push_back(p.get<std::string>());
      }
    }
    return Event(x);
  }
  if (name == "resumed" || name == "preempted") {
    int64_t step = 0;
    RETURN_IF_ERROR(r.Get("step", &step));
    if (name == "resumed") return Event(ResumedEvent{step});
    return Event(PreemptedEvent{step});
  }
  if (name == "done") {
    DoneEvent x;
    RETURN_IF_ERROR(r.GetOptional("step", &x.step));
    return Event(x);
  }
  if (name == "predict") {
    PredictEvent x;
    RETURN_IF_ERROR(r.Get("chunks_done", &x.chunks_done));
    RETURN_IF_ERROR(r.Get("chunks_total", &x.chunks_total));
    RETURN_IF_ERROR(r.Get("chunks_skipped", &x.chunks_skipped, false));
    RETURN_IF_ERROR(r.Get("voxels_done", &x.voxels_done, false));
    RETURN_IF_ERROR(r.Get("voxels_total", &x.voxels_total, false));
    RETURN_IF_ERROR(r.Get("voxels_per_s", &x.voxels_per_s, false));
    return Event(x);
  }
  if (name == "resized") {
    ResizedEvent x;
    RETURN_IF_ERROR(r.Get("step", &x.step));
    RETURN_IF_ERROR(r.Get("from_world", &x.from_world));
    RETURN_IF_ERROR(r.Get("to_world", &x.to_world));
    RETURN_IF_ERROR(r.Get("from_accumulation", &x.from_accumulation, false));
    RETURN_IF_ERROR(r.Get("to_accumulation", &x.to_accumulation, false));
    return Event(x);
  }
  if (name == "serving") {
    ServingEvent x;
    RETURN_IF_ERROR(r.Get("address", &x.address));
    if (r.json().contains("models")) {
      const Json& v = r.json()["models"];
      if (!v.is_array()) return r.Bad("models", "not a list");
      for (const Json& m : v) {
        if (!m.is_string()) return r.Bad("models", "not a list of strings");
        x.models.push_back(m.get<std::string>());
      }
    }
    return Event(x);
  }
  return absl::UnimplementedError(absl::StrCat(where, ": unknown event '", name.substr(0, 32), "'"));
}

std::string EncodeCheckpointState(const CheckpointState& s) {
  Json j = {{"v", kRecordVersion}, {"step", s.step}, {"epoch", s.epoch}, {"sampler_offset", s.sampler_offset},
            {"seed", s.seed}, {"world_size", s.world_size}, {"accumulation", s.accumulation}, {"kind", s.kind},
            {"config_sha256", s.config_sha256}, {"model", s.model}, {"image_size", s.image_size},
            {"classes", s.classes}};
  if (s.mean) j["mean"] = *s.mean;
  if (s.std) j["std"] = *s.std;
  if (!s.dataset.empty()) {
    j["dataset"] = s.dataset;
    j["dataset_version"] = s.dataset_version;
    j["dataset_digest"] = s.dataset_digest;
  }
  if (!s.init.empty()) j["init"] = s.init;
  if (!s.init_manifest.empty()) j["init_manifest"] = s.init_manifest;
  if (!s.code_version.empty()) j["code_version"] = s.code_version;
  return j.dump(2) + "\n";
}

namespace {

// Required: what resuming needs. The rest was added later; defaults stand in.
absl::Status ReadCheckpointState(const Reader& r, CheckpointState* s) {
  RETURN_IF_ERROR(r.Version());
  RETURN_IF_ERROR(r.Get("step", &s->step));
  RETURN_IF_ERROR(r.Get("epoch", &s->epoch));
  RETURN_IF_ERROR(r.Get("sampler_offset", &s->sampler_offset));
  RETURN_IF_ERROR(r.Get("kind", &s->kind));
  RETURN_IF_ERROR(r.Get("seed", &s->seed, false));
  RETURN_IF_ERROR(r.Get("world_size", &s->world_size, false));
  RETURN_IF_ERROR(r.Get("accumulation", &s->accumulation, false));
  RETURN_IF_ERROR(r.Get("config_sha256", &s->config_sha256, false));
  RETURN_IF_ERROR(r.Get("model", &s->model, false));
  RETURN_IF_ERROR(r.Get("image_size", &s->image_size, false));
  RETURN_IF_ERROR(r.Get("classes", &s->classes, false));
  RETURN_IF_ERROR(r.GetOptional("mean", &s->mean));
  RETURN_IF_ERROR(r.Get("dataset", &s->dataset, false));
  RETURN_IF_ERROR(r.Get("dataset_version", &s->dataset_version, false));
  RETURN_IF_ERROR(r.Get("dataset_digest", &s->dataset_digest, false));
  RETURN_IF_ERROR(r.Get("init", &s->init, false));
  RETURN_IF_ERROR(r.Get("init_manifest", &s->init_manifest, false));
  RETURN_IF_ERROR(r.Get("code_version", &s->code_version, false));
  return r.GetOptional("std", &s->std);
}

}  // namespace

absl::StatusOr<CheckpointState> DecodeCheckpointState(absl::string_view text, const std::string& where) {
  absl::StatusOr<Json> parsed = ParseObject(text, where);
  if (!parsed.ok()) return absl::DataLossError(parsed.status().message());
  CheckpointState s;
  // A malformed record in a committed checkpoint is damage: DATA_LOSS.
  if (const absl::Status st = ReadCheckpointState(Reader(*parsed, where), &s); !st.ok()) {
    return absl::IsInvalidArgument(st) ? absl::DataLossError(st.message()) : st;
  }
  return s;
}

std::string EncodeEvalReport(const EvalReport& r) {
  Json items = Json::array();
  for (const EvalItem& item : r.items) {
    Json per = Json::array();
    for (const ClassScore& c : item.classes) {
      Json cj = {{"class", c.cls}, {"iou", c.iou}, {"f1", c.f1}, {"precision", c.precision}, {"recall", c.recall},
                 {"mfd", c.mfd ? Json(*c.mfd) : Json(nullptr)}};
      if (c.cremi_score) cj["cremi_score"] = *c.cremi_score;
      per.push_back(std::move(cj));
    }
    items.push_back({{"source", item.source}, {"classes", std::move(per)}});
  }
  const Json j = {{"v", kRecordVersion}, {"checkpoint", r.checkpoint}, {"mode", r.mode}, {"overlap", r.overlap},
                  {"mean_iou_per_class", ClassMap(r.mean_iou_per_class)}, {"mean_iou", r.mean_iou},
                  {"items", std::move(items)}};
  return j.dump(2) + "\n";
}

absl::StatusOr<EvalReport> DecodeEvalReport(absl::string_view text, const std::string& where) {
  absl::StatusOr<Json> parsed = ParseObject(text, where);
  if (!parsed.ok()) return parsed.status();
  const Reader r(*parsed, where);
  EvalReport out;
  RETURN_IF_ERROR(r.Version());
  RETURN_IF_ERROR(r.Get("checkpoint", &out.checkpoint, false));
  RETURN_IF_ERROR(r.Get("mode", &out.mode, false));
  RETURN_IF_ERROR(r.Get("overlap", &out.overlap, false));
  RETURN_IF_ERROR(r.Get("mean_iou", &out.mean_iou));
  RETURN_IF_ERROR(r.GetClassMap("mean_iou_per_class", &out.mean_iou_per_class, false));
  if (!r.json().contains("items") || !r.json()["items"].is_array()) return r.Bad("items", "missing or not a list");
  const Json& items = r.json()["items"];
  for (size_t i = 0; i < items.size(); ++i) {
    if (!items[i].is_object()) return r.Bad(absl::StrCat("items[", i, "]"), "not an object");
    const Reader ir(items[i], absl::StrCat(where, ".items[", i, "]"));
    EvalItem item;
    RETURN_IF_ERROR(ir.Get("source", &item.source, false));
    const Json& classes = items[i].contains("classes") ? items[i]["classes"] : Json::array();
    if (!classes.is_array()) return ir.Bad("classes", "not a list");
    for (size_t k = 0; k < classes.size(); ++k) {
      if (!classes[k].is_object()) return ir.Bad(absl::StrCat("classes[", k, "]"), "not an object");
      const Reader cr(classes[k], absl::StrCat(ir.where(), ".classes[", k, "]"));
      ClassScore c;
      RETURN_IF_ERROR(cr.Get("class", &c.cls));
      RETURN_IF_ERROR(cr.Get("iou", &c.iou));
      RETURN_IF_ERROR(cr.Get("f1", &c.f1, false));
      RETURN_IF_ERROR(cr.Get("precision", &c.precision, false));
      RETURN_IF_ERROR(cr.Get("recall", &c.recall, false));
      RETURN_IF_ERROR(cr.GetOptional("mfd", &c.mfd));
      RETURN_IF_ERROR(cr.GetOptional("cremi_score", &c.cremi_score));
      item.classes.push_back(c);
    }
    out.items.push_back(std::move(item));
  }
  return out;
}

}  // namespace retina
