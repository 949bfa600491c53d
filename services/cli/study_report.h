// `retina study report`: a study's aggregate (common/study.h) as the RETINA
// paper shows its experiments, with no plotting library:
//
//   report.md     per dataset, the table of the paper's form at the last eval
//                 step (mean ± std of N runs per init, best per column in
//                 bold, n shown where runs are missing), IoU per class, the
//                 Mann-Whitney U tests with effect sizes, IoU per step, and
//                 the missing children;
//   report.html   the same, self-contained (the SVGs inline, no scripts);
//   curves*.svg   Fig 3a: IoU against fine-tuning iterations, mean and a
//                 ±1 std band per init;
//   boxplot*.svg  Fig 3b: per-seed IoU at the last step per init, with
//                 `*`/`**` brackets where p < 0.05/0.01;
//   study.json, study.csv   the aggregate itself.
//
// One curves/boxplot pair per dataset: curves.svg for a study of one
// dataset, curves-<dataset>.svg otherwise.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "common/study/study.h"

namespace retina::cli {

struct StudyReportFiles {
  std::string markdown, html;
  std::map<std::string, std::string> svgs;  // file name -> SVG document
};
StudyReportFiles RenderStudyReport(const StudyReport& report);

// Writes the files above into `dir` (created), each atomically.
absl::Status WriteStudyReport(const StudyReport& report, const std::string& study_json, const std::filesystem::path& dir);

}  // namespace retina::cli
