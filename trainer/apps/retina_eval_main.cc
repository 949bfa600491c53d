// retina-eval: score a segmentation against ground truth with the paper's
// metrics (METHOD.md section 4); a per-class table on stdout, JSON on request.
// Flags into ScoreFilesOptions, then trainer/scoring/score_files.h.
//
//   retina-eval --pred FILE --gt FILE [--classes 1,2] [--num-classes N] [--spacing z,y,x]
//               [--mode 2d|stack|orthoplane] [--labels index|binary|cremi] [--cremi] [--touching-only] [--json OUT]
// FILE: any format retina-shard reads (PNG, TIFF, HDF5 file.h5:/path, NIfTI, NRRD).
// --mode is how the prediction was made, in the job file's words: 2d scores
// IoU per plane (1e-5 smoothing) and averages; stack and orthoplane score the
// volume (3d, the name before this vocabulary, means stack).
#include <array>
#include <iostream>

#include "common/cli.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/scoring/score_files.h"

namespace retina::trainer {
namespace {

struct EvalFlags {
  ScoreFilesOptions score;
  std::string mode = "stack", labels = "index", json;
  std::vector<double> spacing;
};

absl::Status Evaluate(EvalFlags f) {
  ScoreFilesOptions& o = f.score;
  o.mode = *EnumFromName<PredictionMode>(f.mode == "3d" ? "stack" : f.mode);  // CLI11 checked the word
  o.gt_labels = f.labels == "binary"  ? MaskConvention::kBinary
                : f.labels == "cremi" ? MaskConvention::kCremiClefts
                                      : MaskConvention::kClassIndex;
  if (!f.spacing.empty()) o.spacing = std::array<double, 3>{f.spacing[0], f.spacing[1], f.spacing[2]};
  ASSIGN_OR_RETURN(ScoredFiles scored, ScoreFiles(o));
  std::cout << ScoreTable(scored);
  if (!f.json.empty()) RETURN_IF_ERROR(WriteFileAtomic(f.json, ScoreJson(scored)));
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  Cli cli("retina-eval",
          "Scores a segmentation against ground truth: IoU, F1, precision, recall, mean false distance\n"
          "(and the CREMI cleft scores) per class.");
  EvalFlags f;
  CLI::App& app = cli.app();
  app.add_option("--pred", f.score.pred, "the prediction (class indices); HDF5 as file.h5:/dataset")->required();
  app.add_option("--gt", f.score.gt, "the ground truth")->required();
  app.add_option("--classes", f.score.metrics.classes, "class ids to score (default: every class present but 0)")
      ->delimiter(',')
      ->check(CLI::Range(0, 255));
  app.add_option("--num-classes", f.score.num_classes, "both files must hold classes below this")->check(kPositiveInt);
  app.add_option("--spacing", f.spacing, "voxel spacing z,y,x for MFD (default: the ground truth's, else 1,1,1)")
      ->delimiter(',')
      ->expected(3)
      ->check(kPositiveNumber);
  app.add_option("--mode", f.mode, "how the prediction was made: 2d (IoU per plane) | stack | orthoplane (per volume)")
      ->check(CLI::IsMember({"2d", "stack", "orthoplane", "3d"}));
  app.add_option("--labels", f.labels, "the ground truth's labels: index | binary | cremi (clefts)")
      ->check(CLI::IsMember({"index", "binary", "cremi"}));
  app.add_flag("--cremi", f.score.metrics.cremi, "also ADGT, ADF, CREMI score, FP/FN at 200 nm");
  app.add_flag("--touching-only", f.score.metrics.touching_only,
               "drop predicted components that touch no ground truth (the Perez rule)");
  app.add_option("--json", f.json, "also write the scores as JSON here");
  cli.Root([&] { return Evaluate(f); });
  return cli.Run(argc, argv);
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) { return retina::trainer::Main(argc, argv); }
