// retina-eval: score a segmentation against ground truth with the paper's
// metrics (METHOD.md section 4); a per-class table on stdout, JSON on request.
//
//   retina-eval --pred FILE --gt FILE [--classes 1,2] [--num-classes N] [--spacing z,y,x]
//               [--mode 2d|3d] [--labels index|binary|cremi] [--cremi] [--touching-only] [--json OUT]
// FILE: any format retina-shard reads (PNG, TIFF, HDF5 file.h5:/path, NIfTI, NRRD).
// --mode 2d: IoU per plane (image) with 1e-5 smoothing, averaged; 3d: per volume.
// --labels applies to the ground truth (the prediction holds class indices).
#include <cmath>
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/cli.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/data/readers.h"
#include "trainer/eval/metrics.h"

namespace retina::trainer {
namespace {

constexpr char kUsage[] =
    "usage: retina-eval --pred FILE --gt FILE [--classes 1,2] [--num-classes N] [--spacing z,y,x]\n"
    "                   [--mode 2d|3d] [--labels index|binary|cremi] [--cremi] [--touching-only] [--json OUT]\n";

absl::Status Evaluate(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(CliFlags f, ParseCliFlags(args, {"--pred", "--gt", "--classes", "--num-classes", "--spacing", "--mode",
                                                    "--labels", "--json"},
                                             {"--cremi", "--touching-only"}));
  RETURN_IF_ERROR(f.Require({"--pred", "--gt"}));
  MetricOptions o;
  for (absl::string_view c : absl::StrSplit(f.Get("--classes"), ',', absl::SkipEmpty())) {
    int v;
    if (!absl::SimpleAtoi(c, &v) || v < 0 || v > 255) {
      return absl::InvalidArgumentError("--classes: '" + std::string(c) + "' is not a class id 0..255");
    }
    o.classes.push_back(v);
  }
  const std::string mode = f.Get("--mode", "3d");
  if (mode != "2d" && mode != "3d") return absl::InvalidArgumentError("--mode: 2d or 3d, got '" + mode + "'");
  o.per_plane_iou = mode == "2d";
  o.cremi = f.Has("--cremi");
  o.touching_only = f.Has("--touching-only");
  MaskConvention gt_labels = MaskConvention::kClassIndex;
  const std::string labels = f.Get("--labels", "index");
  if (labels == "binary") gt_labels = MaskConvention::kBinary;
  else if (labels == "cremi") gt_labels = MaskConvention::kCremiClefts;
  else if (labels != "index") return absl::InvalidArgumentError("--labels: index, binary or cremi, got '" + labels + "'");

  ASSIGN_OR_RETURN(RawArray raw_pred, ReadArray(f.Get("--pred")));
  ASSIGN_OR_RETURN(RawArray raw_gt, ReadArray(f.Get("--gt")));
  ASSIGN_OR_RETURN(Volume pred, ToMask(raw_pred, MaskConvention::kClassIndex), "--pred");
  ASSIGN_OR_RETURN(Volume gt, ToMask(raw_gt, gt_labels), "--gt");
  int num_classes = 0;
  RETURN_IF_ERROR(f.GetInt("--num-classes", &num_classes));
  if (num_classes > 0) {
    for (const auto& [name, vol] : {std::pair<const char*, const Volume*>{"--pred", &pred}, {"--gt", &gt}}) {
      const uint8_t top = *std::max_element(vol->data.begin(), vol->data.end());
      if (top >= num_classes) {
        return absl::InvalidArgumentError(std::string(name) + ": holds class " + std::to_string(top) +
                                          " but --num-classes is " + std::to_string(num_classes));
      }
    }
  }
  if (f.Has("--spacing")) {
    std::vector<std::string> parts = absl::StrSplit(f.Get("--spacing"), ',');
    bool ok = parts.size() == 3;
    for (size_t i = 0; ok && i < 3; ++i) ok = absl::SimpleAtod(parts[i], &gt.spacing[i]) && gt.spacing[i] > 0;
    if (!ok) return absl::InvalidArgumentError("--spacing: three positive numbers z,y,x, got '" + f.Get("--spacing") + "'");
  } else if (!raw_gt.has_spacing) {
    gt.spacing = {1, 1, 1};
  }
  ASSIGN_OR_RETURN(std::vector<ClassMetrics> metrics, ComputeMetrics(pred, gt, o));

  std::printf("%-6s %8s %8s %9s %8s %8s", "class", "IoU", "F1", "precision", "recall", "MFD");
  if (o.cremi) std::printf(" %8s %8s %8s %8s %8s %8s", "ADGT", "ADF", "CREMI", "FP", "FN", "tol.F1");
  std::printf("\n");
  nlohmann::ordered_json j;
  j["pred"] = f.Get("--pred");
  j["gt"] = f.Get("--gt");
  j["mode"] = mode;
  j["spacing"] = {gt.spacing[0], gt.spacing[1], gt.spacing[2]};
  j["classes"] = nlohmann::ordered_json::array();
  double mean_iou = 0;
  auto num = [](double v) { return std::isnan(v) ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(v); };
  for (const ClassMetrics& m : metrics) {
    std::printf("%-6d %8.4f %8.4f %9.4f %8.4f %8.3f", m.cls, m.iou, m.f1, m.precision, m.recall, m.mfd);
    if (o.cremi) std::printf(" %8.2f %8.2f %8.2f %8lld %8lld %8.4f", m.adgt, m.adf, m.cremi_score,
                             static_cast<long long>(m.fp), static_cast<long long>(m.fn), m.tolerant_f1);
    std::printf("\n");
    mean_iou += m.iou / metrics.size();
    nlohmann::ordered_json c = {{"class", m.cls}, {"iou", m.iou}, {"f1", m.f1}, {"precision", m.precision},
                                {"recall", m.recall}, {"mfd", num(m.mfd)}, {"pred_voxels", m.pred_voxels},
                                {"gt_voxels", m.gt_voxels}};
    if (o.cremi) {
      c["adgt"] = num(m.adgt);
      c["adf"] = num(m.adf);
      c["cremi_score"] = num(m.cremi_score);
      c["fp"] = m.fp;
      c["fn"] = m.fn;
      c["tolerant_f1"] = m.tolerant_f1;
    }
    j["classes"].push_back(c);
  }
  std::printf("mean IoU %.4f\n", mean_iou);
  j["mean_iou"] = mean_iou;
  if (f.Has("--json")) RETURN_IF_ERROR(WriteFileAtomic(f.Get("--json"), j.dump(2) + "\n"));
  return absl::OkStatus();
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) {
  return retina::RunCommand("retina-eval", retina::trainer::kUsage, {argv + 1, argv + argc}, retina::trainer::Evaluate);
}
