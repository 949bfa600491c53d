#include "trainer/engine/evaluate.h"

#include <chrono>
#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/checkpoint_store.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/read_scope.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/shards.h"
#include "trainer/prediction/inference.h"
#include "trainer/scoring/metrics.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/model/weights/weight_source.h"
#include "trainer/runtime/device.h"
#include "trainer/runtime/threads.h"

namespace retina::trainer {
namespace fs = std::filesystem;

namespace {

// An imported test split's test.json (retina-shard import).
absl::StatusOr<nlohmann::json> ReadTestSplit(const fs::path& dir) {
  RETURN_IF_ERROR(CheckRead("data.dataset: test.json", dir / "test.json"));
  ASSIGN_OR_RETURN(std::string text, ReadFile(dir / "test.json"), "data.dataset (an imported test split, e.g. <name>-test)");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat((dir / "test.json").string(), ": ", e.what()));
  }
}

// One test item predicted and scored: its volume and mask from `file`.
absl::StatusOr<EvalItem> ScoreItem(VisionTransformer& model, const std::string& file, const nlohmann::json& item,
                                   double mean, double std, PredictionMode mode, const SlidingWindowOptions& so,
                                   const MetricOptions& mo) {
  ASSIGN_OR_RETURN(RawArray raw_image, ReadHdf5(file, "/image"));
  ASSIGN_OR_RETURN(RawArray raw_mask, ReadHdf5(file, "/mask"));
  ASSIGN_OR_RETURN(Volume image, ToImage(raw_image, IntensityScaling::kRequireUInt8));
  ASSIGN_OR_RETURN(Volume truth, ToMask(raw_mask, MaskConvention::kClassIndex));
  const std::vector<double> spacing = item.value("spacing", std::vector<double>{1, 1, 1});
  truth.spacing = {spacing[0], spacing[1], spacing[2]};
  ASSIGN_OR_RETURN(VolumePrediction pred, PredictVolume(ModelForward(model, so.bf16), image, mean, std, mode, so, false, nullptr));
  ASSIGN_OR_RETURN(std::vector<ClassMetrics> metrics, ComputeMetrics(pred.labels, truth, mo), file);
  EvalItem scored;
  scored.source = item.value("source", "");
  for (const ClassMetrics& m : metrics) {
    ClassScore c{m.cls, m.iou, m.f1, m.precision, m.recall, std::nullopt, std::nullopt};
    if (!std::isnan(m.mfd)) c.mfd = m.mfd;
    if (mo.cremi) c.cremi_score = m.cremi_score;
    scored.classes.push_back(c);
  }
  return scored;
}

// eval.json, then the eval and done events appended to events.jsonl.
absl::Status WriteEvalRecords(const StoreLayout& layout, const std::string& job, const EvalReport& report) {
  RETURN_IF_ERROR(CreateDirectories(layout.JobDir(job)));
  RETURN_IF_ERROR(WriteFileAtomic(layout.EvalReportPath(job), EncodeEvalReport(report)));
  EvalEvent event;
  event.iou = report.mean_iou;
  event.iou_per_class = report.mean_iou_per_class;
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  absl::StatusOr<std::string> previous = ReadFile(layout.EventsPath(job));
  return WriteFileAtomic(layout.EventsPath(job), (previous.ok() ? *previous : std::string()) + EncodeEvent(event, now) +
                                                     "\n" + EncodeEvent(DoneEvent{}, now) + "\n");
}

}  // namespace

absl::StatusOr<EvalReport> ScoreTestSplit(const JobConfig& config, const std::string& weights_spec,
                                          const std::string& field, const std::string& test_dataset,
                                          const fs::path& store, const DevicePlan& device) {
  ASSIGN_OR_RETURN(const fs::path test_dir, ResolveDataset(test_dataset, store,
                                                           config.kind == JobKind::kEvaluate ? "data.dataset" : "data.test_dataset"));
  ASSIGN_OR_RETURN(const nlohmann::json test, ReadTestSplit(test_dir));
  ASSIGN_OR_RETURN(TransUNetConfig mc, NamedModelConfig(config.model.name, config.model.image_size, config.model.classes,
                                                        ModelHead::kSegmentation));
  ASSIGN_OR_RETURN(WeightSource source, ResolveWeights(weights_spec, store, field));
  const fs::path weights = source.package.empty() ? source.file : source.package;  // a package: the .zip, not its unpacked copy
  ASSIGN_OR_RETURN(StateDict dict, ReadWeights(source, mc), field);
  VisionTransformer model(mc);
  RETURN_IF_ERROR(LoadStateDict(*model, std::move(dict)).status(), field + " " + weights.string());
  model->to(device.device);
  model->eval();
  torch::NoGradGuard no_grad;
  // Normalisation: the config, else the test split's (the training data's).
  const double mean = config.data.mean.value_or(test.value("mean", 0.5));
  const double std = config.data.std.value_or(test.value("std", 0.25));

  MetricOptions mo;
  for (double c : config.evaluate.classes) mo.classes.push_back(static_cast<int>(c));
  if (mo.classes.empty()) for (int c = 1; c < std::max(2, mc.num_classes); ++c) mo.classes.push_back(c);
  mo.per_plane_iou = config.evaluate.mode == PredictionMode::k2d;
  mo.cremi = test.value("kind", "") == "cremi";
  mo.touching_only = test.value("kind", "") == "perez";  // partially labelled: METHOD.md section 3
  SlidingWindowOptions so;
  so.window = mc.image_size;
  so.overlap = config.evaluate.overlap;
  so.device = device.device;
  so.bf16 = device.bf16;

  EvalReport report;
  report.checkpoint = weights.string();
  report.mode = PredictionModeName(config.evaluate.mode);
  report.overlap = config.evaluate.overlap;
  std::map<int, std::vector<double>> iou_by_class;
  for (const auto& item : test.at("items")) {
    const std::string file = (test_dir / item.at("file").get<std::string>()).string();
    ASSIGN_OR_RETURN(EvalItem scored, ScoreItem(model, file, item, mean, std, config.evaluate.mode, so, mo));
    for (const ClassScore& c : scored.classes) iou_by_class[c.cls].push_back(c.iou);
    report.items.push_back(std::move(scored));
    RETINA_LOG(Info) << "evaluated " << item.value("source", file);
  }
  for (const auto& [cls, values] : iou_by_class) {
    double m = 0;
    for (double v : values) m += v / values.size();
    report.mean_iou_per_class[cls] = m;
    report.mean_iou += m / iou_by_class.size();
  }
  return report;
}

absl::StatusOr<RunOutcome> RunEvaluation(const JobConfig& config, const RunOptions& o) {
  RETURN_IF_ERROR(StoreLayout::ValidateName(o.job_id, "--job"));
  const StoreLayout layout(o.store);
  ConfigureTorchThreads(1, config.runtime.threads);
  ASSIGN_OR_RETURN(DevicePlan device, PlanDevice(config.runtime.device, InferencePrecision(config.runtime.precision), 0));
  ASSIGN_OR_RETURN(EvalReport report, ScoreTestSplit(config, config.evaluate.checkpoint, "evaluate.checkpoint",
                                                     config.data.dataset, o.store, device));
  RETURN_IF_ERROR(WriteEvalRecords(layout, o.job_id, report));
  std::printf("mean IoU %.4f over %zu item(s) -> %s\n", report.mean_iou, report.items.size(),
              layout.EvalReportPath(o.job_id).c_str());
  return RunOutcome::kCompleted;
}

absl::Status ScoreEvalSteps(const JobConfig& config, const fs::path& store, const std::string& job_id,
                            torch::Device device) {
  const StoreLayout layout(store);
  DevicePlan plan;
  plan.device = device;
  plan.bf16 = InferencePrecision(config.runtime.precision) == Precision::kBf16;
  for (int64_t step : WholeNumbers(config.finetune.eval_at)) {
    const fs::path out = layout.StepEvalPath(job_id, step);
    if (absl::StatusOr<std::string> done = ReadFile(out); done.ok() && DecodeEvalReport(*done, out.string()).ok()) {
      RETINA_LOG(Info) << "step " << step << ": already scored (" << out.string() << ")";
      continue;
    }
    const fs::path checkpoint = layout.CheckpointsDir(job_id) / CheckpointDirName(step);
    ASSIGN_OR_RETURN(EvalReport report,
                     ScoreTestSplit(config, checkpoint.string(), absl::StrCat("finetune.eval_at ", step),
                                    config.data.test_dataset, store, plan));
    RETURN_IF_ERROR(CreateDirectories(out.parent_path()));
    RETURN_IF_ERROR(WriteFileAtomic(out, EncodeEvalReport(report)));
    RETINA_LOG(Info) << "step " << step << ": test IoU " << report.mean_iou << " over " << report.items.size()
                     << " item(s) -> " << out.string();
  }
  return absl::OkStatus();
}

}  // namespace retina::trainer
