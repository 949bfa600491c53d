#include "services/study/study_controller.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/store_layout.h"
#include "services/coordinator/job_spec.h"

namespace retina::study {
namespace v1 = retina::v1;
using coordinator::Origin;
using coordinator::StudyUpdate;

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

bool Ended(int state) { return state == v1::SUCCEEDED || state == v1::FAILED || state == v1::CANCELLED; }

}  // namespace

StudyController::StudyController(coordinator::Coordinator* jobs, StudyControllerOptions options)
    : jobs_(jobs), options_(std::move(options)) {}

StudyController::~StudyController() {
  if (!thread_.joinable()) return;
  stop_.Notify();
  thread_.join();
}

void StudyController::Start(absl::Duration period) {
  thread_ = std::thread([this, period] {
    while (!stop_.WaitForNotificationWithTimeout(period)) Tick();
  });
}

void StudyController::Tick() {
  if (absl::Now() >= next_discover_) {
    Discover();
    next_discover_ = absl::Now() + options_.discover;
  }
  for (auto it = studies_.begin(); it != studies_.end();) {
    it = Round(it->first, &it->second) ? studies_.erase(it) : std::next(it);
  }
}

void StudyController::Discover() {
  v1::ListJobsRequest req;
  req.set_filter("kind=STUDY state=RUNNING");
  req.set_page_size(1000);
  for (;;) {
    absl::StatusOr<v1::ListJobsResponse> page = jobs_->List(req);
    if (!page.ok()) {
      RETINA_LOG(Error) << "studies: cannot list the running studies: " << page.status() << " (retried)";
      return;
    }
    for (const v1::Job& job : page->jobs()) {
      if (studies_.count(job.id())) continue;
      Study& st = studies_[job.id()];
      absl::StatusOr<StudyPlan> plan = PlanStudy(job.spec().config_yaml(), job.id());
      if (!plan.ok()) {  // parsed at submission, not now (a newer version's rules?): it ends
        st.broken = absl::StrCat("its job file no longer expands: ", plan.status().message());
        continue;
      }
      st.plan = std::move(*plan);
    }
    if (page->next_page_token().empty()) return;
    req.set_page_token(page->next_page_token());
  }
}

bool StudyController::Round(const std::string& id, Study* st) {
  absl::StatusOr<v1::Job> study = jobs_->Get(id);
  if (!study.ok() || study->state() != v1::RUNNING) return true;
  if (!st->looked_up) FindChildren(*study, st);
  const bool cancelling = study->cancel_requested() || !st->broken.empty();
  if (!cancelling && st->children.size() < st->plan.children.size()) CreateChildren(*study, st);
  FollowChildren(cancelling, st);
  const size_t total = st->plan.children.size();
  const bool all_created = total > 0 && st->children.size() == total;
  const bool all_ended = (all_created || cancelling) && st->ended.size() == st->children.size();

  // How the study ends, once every child has.
  StudyUpdate update;
  update.children_ended = static_cast<int64_t>(st->ended.size());
  update.children_total = static_cast<int64_t>(total);
  if (all_ended) {
    int succeeded = 0;
    std::vector<std::string> failed;
    for (const auto& [index, r] : st->ended) {
      if (r.state == "SUCCEEDED") {
        ++succeeded;
      } else {
        failed.push_back(absl::StrCat(r.job_id, " ", r.state));
      }
    }
    const std::string counts = absl::StrCat(succeeded, " of ", total, " children succeeded");
    if (!st->broken.empty()) {
      update.state = v1::FAILED;
      update.message = absl::StrCat(st->broken, "; ", counts);
    } else if (study->cancel_requested()) {
      update.state = v1::CANCELLED;
      update.message = absl::StrCat("cancelled; ", counts);
    } else if (succeeded > 0) {
      update.state = v1::SUCCEEDED;
      update.message = failed.empty() ? counts : absl::StrCat(counts, "; missing from the report: ", absl::StrJoin(failed, ", "));
    } else {
      update.state = v1::FAILED;
      update.message = absl::StrCat("no child succeeded: ", absl::StrJoin(failed, ", "));
    }
  }
  if ((st->dirty || all_ended) && total > 0) {
    const std::string state = all_ended ? v1::JobState_Name(update.state) : cancelling ? "CANCELLING" : "RUNNING";
    if (!WriteReport(id, st, state)) return false;  // the end waits for its final aggregate
  }
  if (absl::Status s = jobs_->UpdateStudy(id, update); !s.ok()) {
    RETINA_LOG(Error) << id << ": " << s << " (retried)";
    st->dirty = true;
    return false;
  }
  return all_ended;
}

void StudyController::FindChildren(const v1::Job& study, Study* st) {
  // Children created before a restart (clients cannot use "study:" ids).
  v1::ListJobsRequest req;
  req.set_filter("label.study=" + study.id());
  req.set_page_size(1000);
  for (;;) {
    absl::StatusOr<v1::ListJobsResponse> page = jobs_->List(req);
    if (!page.ok()) return;  // looked up again next round
    for (const v1::Job& job : page->jobs()) {
      std::string of;
      int index = 0;
      if (!StudyOf(job, &of, &index) || of != study.id() || job.user() != study.user() ||
          job.request_id() != ChildRequestId(of, index) || index < 0 ||
          index >= static_cast<int>(st->plan.children.size())) {
        continue;
      }
      st->children[index] = job.id();
    }
    if (page->next_page_token().empty()) break;
    req.set_page_token(page->next_page_token());
  }
  st->looked_up = true;
}

void StudyController::CreateChildren(const v1::Job& study, Study* st) {
  absl::StatusOr<std::vector<coordinator::StudyChildSpec>> specs = coordinator::StudyChildSpecs(
      study.spec(), study.id(), options_.store, options_.allowed_roots, options_.output_roots);
  if (!specs.ok()) {
    // A child that was valid at submission no longer is (a dataset removed,
    // an allowed root dropped): no retry will help; the study ends.
    st->broken = absl::StrCat("cannot create its children: ", specs.status().message());
    RETINA_LOG(Error) << study.id() << ": " << st->broken;
    return;
  }
  for (coordinator::StudyChildSpec& c : *specs) {
    if (st->children.count(c.index)) continue;
    v1::SubmitJobRequest req;
    *req.mutable_spec() = std::move(c.spec);
    req.set_request_id(ChildRequestId(study.id(), c.index));
    absl::StatusOr<v1::Job> child = jobs_->Submit(req, study.user(), Origin::kStudy);
    if (!child.ok()) {
      RETINA_LOG(Error) << study.id() << ": cannot create child " << c.index << ": " << child.status() << " (retried)";
      return;
    }
    st->children[c.index] = child->id();
  }
  RETINA_LOG(Info) << study.id() << ": " << st->children.size() << " children";
}

void StudyController::FollowChildren(bool cancelling, Study* st) {
  for (const auto& [index, child_id] : st->children) {
    if (st->ended.count(index)) continue;
    absl::StatusOr<v1::Job> child = jobs_->Get(child_id);
    if (!child.ok()) continue;
    if (Ended(child->state())) {
      st->ended[index] = Result(*st, index, *child);
      st->seen.erase(index);
      st->dirty = true;
      continue;
    }
    auto [seen, fresh] = st->seen.emplace(index, child->state());
    if (fresh || seen->second != child->state()) st->dirty = true;  // its state shows in study.json
    seen->second = child->state();
    if (cancelling && !child->cancel_requested()) {  // cancelled, or it cannot go on: its children stop too
      if (absl::Status s = jobs_->Cancel(child_id).status(); !s.ok() && !absl::IsFailedPrecondition(s)) {
        RETINA_LOG(Error) << "cancelling " << child_id << ": " << s;
      }
    }
  }
}

StudyChildResult StudyController::Result(const Study& st, int index, const v1::Job& child) const {
  StudyChildResult r;
  r.child = st.plan.children[index];
  r.job_id = child.id();
  r.state = v1::JobState_Name(child.state());
  r.message = child.message();
  if (!Ended(child.state())) return r;
  // The scores, read once (a few small files) now that the child is done.
  const StoreLayout layout(options_.store);
  for (int64_t step : st.plan.eval_at) {
    const std::filesystem::path path = layout.StepEvalPath(r.job_id, step);
    absl::StatusOr<std::string> text = ReadFile(path);
    if (!text.ok()) continue;
    absl::StatusOr<EvalReport> report = DecodeEvalReport(*text, path.string());
    if (!report.ok()) {
      RETINA_LOG(Warning) << child.id() << ": " << report.status() << " (counted as missing)";
      continue;
    }
    r.evals[step] = std::move(*report);
  }
  return r;
}

void StudyController::RereadMissingScores(Study* st) const {
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

bool StudyController::WriteReport(const std::string& id, Study* st, const std::string& state) {
  RereadMissingScores(st);
  std::vector<StudyChildResult> results;
  for (const auto& [index, child_id] : st->children) {
    auto ended = st->ended.find(index);
    if (ended != st->ended.end()) {
      results.push_back(ended->second);
      continue;
    }
    StudyChildResult r;
    r.child = st->plan.children[index];
    r.job_id = child_id;
    auto seen = st->seen.find(index);
    r.state = v1::JobState_Name(seen == st->seen.end() ? v1::QUEUED : static_cast<v1::JobState>(seen->second));
    results.push_back(std::move(r));
  }
  StudyReport report = AggregateStudy(id, st->plan, results);
  report.state = state;
  const StoreLayout layout(options_.store);
  absl::Status written = WriteFileAtomic(layout.StudyReportPath(id), EncodeStudyReport(report));
  if (written.ok()) written = WriteFileAtomic(layout.StudyCsvPath(id), StudyCsv(report));
  if (!written.ok()) {
    RETINA_LOG(Error) << id << ": cannot write the study's aggregate: " << written << " (retried)";
    return false;
  }
  st->dirty = false;
  return true;
}

}  // namespace retina::study
