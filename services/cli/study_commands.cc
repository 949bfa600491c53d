#include "services/cli/study_commands.h"

#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/study/study.h"
#include "services/cli/study_report.h"

namespace retina::cli {
namespace v1 = retina::v1;
namespace {

// The study's aggregate (jobs/<id>/study.json through GetJobMetrics).
absl::StatusOr<std::pair<StudyReport, std::string>> FetchStudy(const Client& c, const std::string& id) {
  v1::GetJobMetricsRequest req;
  req.set_id(id);
  v1::JobMetrics m;
  RETURN_IF_ERROR(Call(c.stub->GetJobMetrics(c.Context().get(), req, &m)));
  if (m.study_json().empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        id, ": no study aggregate (jobs/", id, "/study.json) yet: not a study, or none of its children has ended"));
  }
  ASSIGN_OR_RETURN(StudyReport r, DecodeStudyReport(m.study_json(), "jobs/" + id + "/study.json"));
  return std::make_pair(std::move(r), m.study_json());
}

absl::Status StudyStatus(const Client& c, const StudyFlags& f) {
  ASSIGN_OR_RETURN(auto fetched, FetchStudy(c, f.id));
  const StudyReport& r = fetched.first;
  if (f.json) {
    std::cout << fetched.second;
    return absl::OkStatus();
  }
  std::printf("%s (%s): %d of %d children ended, %d succeeded\n", r.study.c_str(),
              r.state.empty() ? (r.complete ? "ended" : "running") : r.state.c_str(), r.children_ended,
              r.children_total, r.children_succeeded);
  const bool loop = r.axis != "iteration";
  std::printf("%-12s %-10s %-24s %6s  %s\n", "CHILD", "STATE", loop ? "STRATEGY" : "INIT", "SEED",
              loop ? "SCORED AT (blocks)" : "SCORED AT");
  for (const StudyChildStatus& ch : r.children) {
    std::printf("%-12s %-10s %-24s %6lld  %s\n", ch.job_id.empty() ? "-" : ch.job_id.c_str(), ch.state.c_str(),
                r.arms[ch.arm].name.c_str(), static_cast<long long>(ch.seed), absl::StrJoin(ch.steps, ",").c_str());
  }
  // The last step; a loop study's every budget (its claim is at equal budgets).
  std::vector<int64_t> steps = {r.eval_at.back()};
  if (loop) steps = r.eval_at;
  for (const std::string& d : r.datasets) {
    for (const int64_t step : steps) {
      std::printf("\ntest IoU at %s%lld%s%s:\n", loop ? "" : "iteration ", static_cast<long long>(step),
                  loop ? (" " + r.axis).c_str() : "", d.empty() ? "" : (" on " + d).c_str());
      for (size_t a = 0; a < r.arms.size(); ++a) {
        const StudyCell* cell = FindStudyCell(r, d, static_cast<int>(a), step);
        const auto m =
            cell ? cell->metrics.find("iou") : std::map<std::string, std::map<std::string, StudyValues>>::const_iterator();
        if (cell == nullptr || m == cell->metrics.end() || !m->second.count("mean")) {
          std::printf("  %-24s - (n=0/%zu)\n", r.arms[a].name.c_str(), r.seeds.size());
          continue;
        }
        const Summary& s = m->second.at("mean").summary;
        std::printf("  %-24s %.4f ± %.4f (n=%d/%d)\n", r.arms[a].name.c_str(), s.mean, s.std, s.n, cell->expected);
      }
      for (const StudyTest& t : r.tests) {
        if (t.dataset == d && t.step == step && t.metric == "iou" && t.cls == "mean") {
          std::printf("  %s vs %s: Mann-Whitney U %g, p %.4g %s\n", r.arms[t.a].name.c_str(),
                      r.arms[t.b].name.c_str(), t.result.u1, t.result.p, SignificanceMark(t.result.p));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status StudyReportCommand(const Client& c, const StudyFlags& f) {
  std::pair<StudyReport, std::string> fetched;
  if (!f.from.empty()) {  // a study.json copied out of the store: no coordinator needed
    ASSIGN_OR_RETURN(fetched.second, ReadFile(f.from), "--from");
    ASSIGN_OR_RETURN(fetched.first, DecodeStudyReport(fetched.second, f.from));
  } else {
    if (f.id.empty()) return absl::InvalidArgumentError("study report: give the study's id, or --from study.json");
    ASSIGN_OR_RETURN(fetched, FetchStudy(c, f.id));
  }
  const std::filesystem::path out =
      f.out.empty() ? std::filesystem::path(fetched.first.study + "-report") : std::filesystem::path(f.out);
  RETURN_IF_ERROR(WriteStudyReport(fetched.first, fetched.second, out), "--out " + out.string());
  std::cerr << "wrote " << (out / "report.md").string() << ", report.html and the SVGs"
            << (fetched.first.state == "RUNNING" || fetched.first.state == "CANCELLING"
                    ? " (partial: the study is still running)"
                    : "")
            << "\n";
  return absl::OkStatus();
}

}  // namespace

void AddStudyCommands(Cli& cli, CLI::App* study_group, const ConnectFlags* flags, StudyCommands* c) {
  CLI::App* status = cli.Command("status", "Children, and IoU and p-values at the last eval step",
                                 Connected(flags, [c](const Client& client) -> absl::StatusOr<int> {
                                   RETURN_IF_ERROR(StudyStatus(client, c->status));
                                   return 0;
                                 }),
                                 study_group);
  status->add_option("id", c->status.id, "study job id")->required();
  status->add_flag("--json", c->status.json, "the aggregate (study.json) as it is");
  CLI::App* report = cli.Command("report", "Write report.md, report.html, curves and box-plot SVGs, study.json/csv",
                                 Connected(flags, [c](const Client& client) -> absl::StatusOr<int> {
                                   RETURN_IF_ERROR(StudyReportCommand(client, c->report));
                                   return 0;
                                 }),
                                 study_group);
  report->add_option("id", c->report.id, "study job id");
  report->add_option("--from", c->report.from, "render this study.json instead (no coordinator needed)");
  report->add_option("--out", c->report.out, "directory (default <id>-report)");
}

}  // namespace retina::cli
