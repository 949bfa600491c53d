#include "trainer/scoring/score_files.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "trainer/data/formats/readers.h"

namespace retina::trainer {

absl::StatusOr<ScoredFiles> ScoreFiles(const ScoreFilesOptions& options) {
  ScoredFiles out;
  out.options = options;
  MetricOptions mo = options.metrics;
  mo.per_plane_iou = options.mode == PredictionMode::k2d;
  ASSIGN_OR_RETURN(RawArray raw_pred, ReadArray(options.pred));
  ASSIGN_OR_RETURN(RawArray raw_gt, ReadArray(options.gt));
  ASSIGN_OR_RETURN(Volume pred, ToMask(raw_pred, MaskConvention::kClassIndex), "--pred");
  ASSIGN_OR_RETURN(Volume gt, ToMask(raw_gt, options.gt_labels), "--gt");
  if (options.num_classes > 0) {
    for (const auto& [name, vol] : {std::pair<const char*, const Volume*>{"--pred", &pred}, {"--gt", &gt}}) {
      const uint8_t top = vol->data.empty() ? 0 : *std::max_element(vol->data.begin(), vol->data.end());
      if (top >= options.num_classes) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, ": holds class ", top, " but --num-classes is ", options.num_classes));
      }
    }
  }
  if (options.spacing) {
    gt.spacing = *options.spacing;
  } else if (!raw_gt.has_spacing) {
    gt.spacing = {1, 1, 1};
  }
  out.spacing = gt.spacing;
  ASSIGN_OR_RETURN(out.classes, ComputeMetrics(pred, gt, mo));
  for (const ClassMetrics& m : out.classes) out.mean_iou += m.iou / out.classes.size();
  return out;
}

std::string ScoreTable(const ScoredFiles& s) {
  const bool cremi = s.options.metrics.cremi;
  std::string t = absl::StrFormat("%-6s %8s %8s %9s %8s %8s", "class", "IoU", "F1", "precision", "recall", "MFD");
  if (cremi) absl::StrAppendFormat(&t, " %8s %8s %8s %8s %8s %8s", "ADGT", "ADF", "CREMI", "FP", "FN", "tol.F1");
  t += "\n";
  for (const ClassMetrics& m : s.classes) {
    absl::StrAppendFormat(&t, "%-6d %8.4f %8.4f %9.4f %8.4f %8.3f", m.cls, m.iou, m.f1, m.precision, m.recall, m.mfd);
    if (cremi) {
      absl::StrAppendFormat(&t, " %8.2f %8.2f %8.2f %8d %8d %8.4f", m.adgt, m.adf, m.cremi_score, m.fp, m.fn,
                            m.tolerant_f1);
    }
    t += "\n";
  }
  absl::StrAppendFormat(&t, "mean IoU %.4f\n", s.mean_iou);
  return t;
}

std::string ScoreJson(const ScoredFiles& s) {
  auto num = [](double v) { return std::isnan(v) ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(v); };
  nlohmann::ordered_json j;
  j["pred"] = s.options.pred;
  j["gt"] = s.options.gt;
  j["mode"] = PredictionModeName(s.options.mode);
  j["spacing"] = {s.spacing[0], s.spacing[1], s.spacing[2]};
  j["classes"] = nlohmann::ordered_json::array();
  for (const ClassMetrics& m : s.classes) {
    nlohmann::ordered_json c = {{"class", m.cls},       {"iou", m.iou},
                                {"f1", m.f1},           {"precision", m.precision},
                                {"recall", m.recall},   {"mfd", num(m.mfd)},
                                {"pred_voxels", m.pred_voxels}, {"gt_voxels", m.gt_voxels}};
    if (s.options.metrics.cremi) {
      c["adgt"] = num(m.adgt);
      c["adf"] = num(m.adf);
      c["cremi_score"] = num(m.cremi_score);
      c["fp"] = m.fp;
      c["fn"] = m.fn;
      c["tolerant_f1"] = m.tolerant_f1;
    }
    j["classes"].push_back(c);
  }
  j["mean_iou"] = s.mean_iou;
  return j.dump(2) + "\n";
}

}  // namespace retina::trainer
