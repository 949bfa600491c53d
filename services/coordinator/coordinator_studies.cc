// The coordinator's studies (coordinator.h, "Studies"; common/study.h).
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/store_layout.h"
#include "services/coordinator/coordinator.h"
#include "services/coordinator/job_spec.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

namespace {

std::string ChildRequestId(const std::string& study, int index) { return absl::StrCat("study:", study, "/", index); }

// The study a job belongs to and its grid index, from its labels.
bool StudyOf(const v1::Job& job, std::string* study, int* index) {
  const auto& labels = job.spec().labels();
  auto s = labels.find("study");
  auto i = labels.find("study.index");
  if (s == labels.end() || i == labels.end() || !absl::SimpleAtoi(i->second, index)) return false;
  *study = s->second;
  return true;
}

}  // namespace

void Coordinator::RecoverStudies() {
  for (auto& [id, e] : jobs_) {
    if (e->job.spec().kind() != v1::STUDY || IsTerminal(e->job.state())) continue;
    absl::StatusOr<StudyPlan> plan = PlanStudy(e->job.spec().config_yaml(), id);
    StudyEntry& st = studies_[id];
    if (!plan.ok()) {  // parsed at submission, not now (a newer version's rules?): the tick ends it
      st.broken = absl::StrCat("its job file no longer expands: ", plan.status().message());
      continue;
    }
    st.plan = std::move(*plan);
  }
  for (auto& [id, e] : jobs_) {
    std::string study;
    int index = 0;
    if (!StudyOf(e->job, &study, &index) || e->job.request_id() != ChildRequestId(study, index)) continue;
    auto s = studies_.find(study);
    if (s == studies_.end()) continue;
    if (!s->second.broken.empty() || index < 0 || index >= static_cast<int>(s->second.plan.children.size())) continue;
    s->second.children[index] = id;
    if (IsTerminal(e->job.state())) NoteStudyChild(e.get());
  }
  // Children a crash kept from being created are created by the first tick.
}

void Coordinator::StartStudy(JobEntry* study) {
  const std::string& id = study->job.id();
  StudyEntry& st = studies_[id];
  if (!st.broken.empty()) return;
  if (st.plan.children.empty()) {
    absl::StatusOr<StudyPlan> plan = PlanStudy(study->job.spec().config_yaml(), id);
    if (!plan.ok()) {
      st.broken = absl::StrCat("its job file does not expand: ", plan.status().message());
      return;
    }
    st.plan = std::move(*plan);
  }
  if (st.children.size() == st.plan.children.size() || study->job.cancel_requested()) return;
  absl::StatusOr<std::vector<StudyChildSpec>> specs =
      StudyChildSpecs(study->job.spec(), id, options_.store, options_.allowed_roots, options_.output_roots);
  if (!specs.ok()) {
    // A child that was valid at submission no longer is (a dataset removed,
    // an allowed root dropped): no retry will help; the tick ends the study.
    st.broken = absl::StrCat("cannot create its children: ", specs.status().message());
    RETINA_LOG(Error) << id << ": " << st.broken;
    return;
  }
  for (StudyChildSpec& c : *specs) {
    if (st.children.count(c.index)) continue;
    const std::string request_id = ChildRequestId(id, c.index);
    auto existing = by_request_.find(RequestKey(study->job.user(), request_id));
    if (existing != by_request_.end()) {  // created before a restart (clients cannot use "study:" ids)
      st.children[c.index] = existing->second->job.id();
      if (IsTerminal(existing->second->job.state())) NoteStudyChild(existing->second);
      continue;
    }
    absl::StatusOr<JobEntry*> child = InsertJob(std::move(c.spec), study->job.user(), request_id);
    if (!child.ok()) {
      RETINA_LOG(Error) << id << ": cannot create child " << c.index << ": " << child.status() << " (retried)";
      return;
    }
    st.children[c.index] = (*child)->job.id();
  }
  RETINA_LOG(Info) << id << ": " << st.children.size() << " children";
}

void Coordinator::NoteStudyChild(JobEntry* child) {
  std::string study;
  int index = 0;
  if (!StudyOf(child->job, &study, &index) || child->job.request_id() != ChildRequestId(study, index)) return;
  auto s = studies_.find(study);
  if (s == studies_.end()) return;
  StudyEntry& st = s->second;
  if (index < 0 || index >= static_cast<int>(st.plan.children.size())) return;
  st.dirty = true;  // its state shows in study.json
  if (!IsTerminal(child->job.state())) return;
  StudyChildResult r;
  r.child = st.plan.children[index];
  r.job_id = child->job.id();
  r.state = JobStateName(child->job.state());
  r.message = child->job.message();
  // The scores, read once (a few small files) now that the child is done.
  const StoreLayout layout(options_.store);
  for (int64_t step : st.plan.eval_at) {
    const std::filesystem::path path = layout.StepEvalPath(r.job_id, step);
    absl::StatusOr<std::string> text = ReadFile(path);
    if (!text.ok()) continue;
    absl::StatusOr<EvalReport> report = DecodeEvalReport(*text, path.string());
    if (!report.ok()) {
      RETINA_LOG(Warning) << study << ": " << report.status() << " (counted as missing)";
      continue;
    }
    r.evals[step] = std::move(*report);
  }
  st.ended[index] = std::move(r);
}

void Coordinator::RereadMissingScores(StudyEntry* st) {
  // A SUCCEEDED child without a score at some step (a read failed, or the
  // shared file system was behind when it ended): read again, at most once
  // per aggregation.
  const StoreLayout layout(options_.store);
  for (auto& [index, r] : st->ended) {
    if (r.state != "SUCCEEDED" || r.evals.size() == st->plan.eval_at.size()) continue;
    for (int64_t step : st->plan.eval_at) {
      if (r.evals.count(step)) continue;
      const std::filesystem::path path = layout.StepEvalPath(r.job_id, step);
      absl::StatusOr<std::string> text = ReadFile(path);
      if (!text.ok()) continue;
      absl::StatusOr<EvalReport> report = DecodeEvalReport(*text, path.string());
      if (report.ok()) r.evals[step] = std::move(*report);
    }
  }
}

void Coordinator::TickStudies(int64_t now) {
  std::vector<JobEntry*> active;
  for (auto& [id, st] : studies_) {
    auto e = jobs_.find(id);
    if (e != jobs_.end()) active.push_back(e->second.get());
  }
  for (JobEntry* e : active) TickStudy(e, now);
}

void Coordinator::TickStudy(JobEntry* e, int64_t now) {
  const std::string id = e->job.id();
  auto it = studies_.find(id);
  if (it == studies_.end() || IsTerminal(e->job.state())) return;
  StudyEntry& st = it->second;
  if (st.broken.empty() && (st.plan.children.empty() || st.children.size() < st.plan.children.size())) StartStudy(e);
  const bool stopping = e->job.cancel_requested() || !st.broken.empty();
  if (stopping) {  // cancelled, or it cannot go on: its children stop too
    for (const auto& [index, child_id] : st.children) {
      JobEntry* child = jobs_.at(child_id).get();
      if (IsTerminal(child->job.state()) || child->job.cancel_requested()) continue;
      if (absl::Status s = CancelEntry(child); !s.ok()) RETINA_LOG(Error) << id << ": cancelling " << child_id << ": " << s;
    }
  }
  const bool all_created = !st.plan.children.empty() && st.children.size() == st.plan.children.size();
  const bool all_ended = (all_created || stopping) && st.ended.size() == st.children.size();

  // How the study ends, once every child has.
  v1::JobState final_state = v1::RUNNING;
  std::string final_message, result;
  if (all_ended) {
    int succeeded = 0;
    std::vector<std::string> failed;
    for (const auto& [index, r] : st.ended) {
      if (r.state == "SUCCEEDED") {
        ++succeeded;
      } else {
        failed.push_back(absl::StrCat(r.job_id, " ", r.state));
      }
    }
    const std::string counts = absl::StrCat(succeeded, " of ", st.plan.children.size(), " children succeeded");
    if (!st.broken.empty()) {
      final_state = v1::FAILED;
      final_message = absl::StrCat(st.broken, "; ", counts);
      result = "failed";
    } else if (e->job.cancel_requested()) {
      final_state = v1::CANCELLED;
      final_message = absl::StrCat("cancelled; ", counts);
      result = "cancelled";
    } else if (succeeded > 0) {
      final_state = v1::SUCCEEDED;
      final_message = failed.empty() ? counts : absl::StrCat(counts, "; missing from the report: ", absl::StrJoin(failed, ", "));
      result = "succeeded";
    } else {
      final_state = v1::FAILED;
      final_message = absl::StrCat("no child succeeded: ", absl::StrJoin(failed, ", "));
      result = "failed";
    }
  }
  if ((st.dirty || all_ended) && !st.plan.children.empty()) {
    RereadMissingScores(&st);
    std::vector<StudyChildResult> results;
    for (const auto& [index, child_id] : st.children) {
      auto ended = st.ended.find(index);
      if (ended != st.ended.end()) {
        results.push_back(ended->second);
        continue;
      }
      StudyChildResult r;
      r.child = st.plan.children[index];
      r.job_id = child_id;
      r.state = JobStateName(jobs_.at(child_id)->job.state());
      results.push_back(std::move(r));
    }
    StudyReport report = AggregateStudy(id, st.plan, results);
    report.state = all_ended ? JobStateName(final_state) : stopping ? "CANCELLING" : "RUNNING";
    const StoreLayout layout(options_.store);
    absl::Status written = WriteFileAtomic(layout.StudyReportPath(id), EncodeStudyReport(report));
    if (written.ok()) written = WriteFileAtomic(layout.StudyCsvPath(id), StudyCsv(report));
    if (!written.ok()) {
      RETINA_LOG(Error) << id << ": cannot write the study's aggregate: " << written << " (retried)";
      return;  // the end waits for its final aggregate
    }
    st.dirty = false;
    v1::Job next = e->job;
    next.mutable_progress()->set_step(report.children_ended);
    next.mutable_progress()->set_total_steps(report.children_total);
    if (!all_ended && (next.progress().step() != e->job.progress().step() ||
                       next.progress().total_steps() != e->job.progress().total_steps())) {
      if (absl::Status s = Commit(e, std::move(next), v1::JobEvent::PROGRESS); !s.ok()) {
        RETINA_LOG(Error) << id << ": " << s << " (retried)";
        st.dirty = true;
        return;
      }
    }
  }
  if (!all_ended) return;
  v1::Job next = e->job;
  next.set_state(final_state);
  next.set_message(final_message);
  next.set_end_unix_ms(now);
  next.mutable_progress()->set_step(static_cast<int64_t>(st.ended.size()));
  next.mutable_progress()->set_total_steps(static_cast<int64_t>(st.plan.children.size()));
  if (absl::Status s = Commit(e, std::move(next)); !s.ok()) {
    RETINA_LOG(Error) << id << ": cannot commit its end: " << s << " (retried)";
    return;
  }
  RETINA_LOG(Info) << id << " -> " << JobStateName(e->job.state()) << ": " << e->job.message();
  if (metrics_) metrics_->JobFinished(result);
  studies_.erase(id);
}

}  // namespace retina::coordinator
