#include "trainer/engine/evaluate.h"

#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/checkpoint_store.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "trainer/data/readers.h"
#include "trainer/eval/inference.h"
#include "trainer/eval/metrics.h"
#include "trainer/model/state_dict.h"
#include "trainer/model/weight_source.h"
#include "trainer/runtime/device.h"
#include "trainer/runtime/threads.h"

namespace retina::trainer {
namespace fs = std::filesystem;

absl::StatusOr<RunOutcome> RunEvaluation(const JobConfig& config, const RunOptions& o) {
  RETURN_IF_ERROR(StoreLayout::ValidateName(o.job_id, "--job"));
  const StoreLayout layout(o.store);
  // The test split.
  const fs::path test_dir = config.data.dataset.find('/') != std::string::npos ? fs::path(config.data.dataset)
                                                                                : layout.DatasetDir(config.data.dataset);
  ASSIGN_OR_RETURN(std::string test_text, ReadFile(test_dir / "test.json"),
                   "data.dataset (an imported test split, e.g. <name>-test)");
  nlohmann::json test;
  try {
    test = nlohmann::json::parse(test_text);
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat((test_dir / "test.json").string(), ": ", e.what()));
  }
  ASSIGN_OR_RETURN(TransUNetConfig mc, NamedModelConfig(config.model.name, config.model.image_size, config.model.classes,
                                                        ModelHead::kSegmentation));
  ASSIGN_OR_RETURN(WeightSource source, ResolveWeights(config.evaluate.checkpoint, o.store, "evaluate.checkpoint"));
  const fs::path weights = source.file;
  ASSIGN_OR_RETURN(StateDict dict, ReadWeights(source, mc), "evaluate.checkpoint");
  ConfigureTorchThreads(1, config.runtime.threads);
  ASSIGN_OR_RETURN(DevicePlan device, PlanDevice(config.runtime.device, "fp32", 0));
  VisionTransformer model(mc);
  RETURN_IF_ERROR(LoadStateDict(*model, std::move(dict)).status(), "evaluate.checkpoint " + weights.string());
  model->to(device.device);
  // Normalisation: the config, else the test split's (the training data's).
  const double mean = config.data.mean.value_or(test.value("mean", 0.5));
  const double std = config.data.std.value_or(test.value("std", 0.25));

  MetricOptions mo;
  for (double c : config.evaluate.classes) mo.classes.push_back(static_cast<int>(c));
  if (mo.classes.empty()) for (int c = 1; c < std::max(2, mc.num_classes); ++c) mo.classes.push_back(c);
  mo.per_plane_iou = config.evaluate.mode == "2d";
  mo.cremi = test.value("kind", "") == "cremi";
  mo.touching_only = test.value("kind", "") == "perez";  // partially labelled: METHOD.md section 3
  SlidingWindowOptions so;
  so.window = mc.image_size;
  so.overlap = config.evaluate.overlap;
  so.device = device.device;
  const VolumeMode mode = config.evaluate.mode == "orthoplane" ? VolumeMode::kOrthoplane : VolumeMode::kStack;

  nlohmann::ordered_json items = nlohmann::ordered_json::array();
  std::map<int, std::vector<double>> iou_by_class;
  for (const auto& item : test.at("items")) {
    const std::string file = (test_dir / item.at("file").get<std::string>()).string();
    ASSIGN_OR_RETURN(RawArray raw_image, ReadHdf5(file, "/image"));
    ASSIGN_OR_RETURN(RawArray raw_mask, ReadHdf5(file, "/mask"));
    ASSIGN_OR_RETURN(Volume image, ToImage(raw_image, IntensityScaling::kRequireUInt8));
    ASSIGN_OR_RETURN(Volume truth, ToMask(raw_mask, MaskConvention::kClassIndex));
    const std::vector<double> spacing = item.value("spacing", std::vector<double>{1, 1, 1});
    truth.spacing = {spacing[0], spacing[1], spacing[2]};
    ASSIGN_OR_RETURN(VolumePrediction pred, PredictVolume(ModelForward(model), image, mean, std, mode, so, false, nullptr));
    ASSIGN_OR_RETURN(std::vector<ClassMetrics> metrics, ComputeMetrics(pred.labels, truth, mo), file);
    nlohmann::ordered_json per = nlohmann::ordered_json::array();
    for (const ClassMetrics& m : metrics) {
      iou_by_class[m.cls].push_back(m.iou);
      per.push_back({{"class", m.cls}, {"iou", m.iou}, {"f1", m.f1}, {"precision", m.precision}, {"recall", m.recall},
                     {"mfd", std::isnan(m.mfd) ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(m.mfd)}});
      if (mo.cremi) per.back()["cremi_score"] = m.cremi_score;
    }
    items.push_back({{"source", item.value("source", "")}, {"classes", per}});
    RETINA_LOG(Info) << "evaluated " << item.value("source", file);
  }
  nlohmann::ordered_json mean_iou;
  double overall = 0;
  for (const auto& [cls, values] : iou_by_class) {
    double m = 0;
    for (double v : values) m += v / values.size();
    mean_iou[std::to_string(cls)] = m;
    overall += m / iou_by_class.size();
  }
  nlohmann::ordered_json report = {{"checkpoint", weights.string()}, {"mode", config.evaluate.mode},
                                   {"overlap", config.evaluate.overlap}, {"mean_iou_per_class", mean_iou},
                                   {"mean_iou", overall}, {"items", items}};
  RETURN_IF_ERROR(CreateDirectories(layout.JobDir(o.job_id)));
  RETURN_IF_ERROR(WriteFileAtomic(layout.JobDir(o.job_id) / "eval.json", report.dump(2) + "\n"));
  const nlohmann::ordered_json event = {{"event", "eval"}, {"iou", overall}, {"iou_per_class", mean_iou}};
  absl::StatusOr<std::string> previous = ReadFile(layout.EventsPath(o.job_id));
  RETURN_IF_ERROR(WriteFileAtomic(layout.EventsPath(o.job_id),
                                  (previous.ok() ? *previous : std::string()) + event.dump() + "\n" +
                                      nlohmann::ordered_json{{"event", "done"}}.dump() + "\n"));
  std::printf("mean IoU %.4f over %zu item(s) -> %s\n", overall, items.size(), (layout.JobDir(o.job_id) / "eval.json").c_str());
  return RunOutcome::kCompleted;
}

}  // namespace retina::trainer
