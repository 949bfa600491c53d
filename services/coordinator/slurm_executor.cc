#include "services/coordinator/slurm_executor.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/store_layout.h"
#include "services/coordinator/limits.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

namespace {

// New complete lines of `path` from `*offset` on; advances the offset past
// them (a partial last line waits for the next read). A file shorter than the
// offset was cut back (a resumed attempt): read again from its start.
std::vector<std::string> ReadNewLines(const std::filesystem::path& path, int64_t* offset) {
  std::vector<std::string> lines;
  std::error_code ec;
  const auto size = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (ec) return lines;
  if (size < *offset) *offset = 0;
  if (size == *offset) return lines;
  std::ifstream in(path, std::ios::binary);
  in.seekg(*offset);
  std::string text(static_cast<size_t>(size - *offset), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  const size_t end = text.rfind('\n');
  if (end == std::string::npos) return lines;
  for (absl::string_view l : absl::StrSplit(absl::string_view(text).substr(0, end), '\n', absl::SkipEmpty())) {
    lines.emplace_back(l);
  }
  *offset += static_cast<int64_t>(end + 1);
  return lines;
}

}  // namespace

SlurmExecutor::SlurmExecutor(SlurmOptions options, Paths paths, ExecutorContext context,
                             std::unique_ptr<SlurmClient> slurm)
    : options_(std::move(options)),
      paths_(std::move(paths)),
      ctx_(std::move(context)),
      jobs_(*ctx_.jobs),
      slurm_(std::move(slurm)) {}

void SlurmExecutor::Recover(JobEntry* e, int64_t) {
  // Followed again from Slurm's listing (by id, or by the attempt's name).
  Run& run = runs_[e->job.id()];
  run.slurm_id = e->job.executor_job_id();
  run.name_attempt = e->job.attempt();
}

void SlurmExecutor::Cancel(JobEntry* e, int64_t now) {
  // A followed job is cancelled by the next poll's scancel and ends when
  // Slurm says so; one not (yet) followed ends now.
  if (!runs_.count(e->job.id())) End(e, AttemptOutcome::kCancelled, "", now);
}

void SlurmExecutor::End(JobEntry* e, AttemptOutcome outcome, const std::string& message, int64_t now) {
  const std::string id = e->job.id();
  if (jobs_.EndAttempt(e, outcome, message, now)) runs_.erase(id);  // else the next poll ends it again
}

void SlurmExecutor::Poll() {
  Work work;
  bool todo = false;
  ctx_.locked([&] { todo = TakeWork(&work); });
  if (!todo) return;
  // Slurm's answers, without the lock.
  std::vector<std::pair<std::string, absl::Status>> cancelled;
  for (const std::string& id : work.cancels) cancelled.emplace_back(id, slurm_->Cancel(id));
  std::vector<std::string> orphans_left;
  for (const std::string& id : work.orphans) {
    const absl::Status s = slurm_->Cancel(id);
    RETINA_LOG(Warning) << "Slurm job " << id << ": its job ended or was cancelled while sbatch ran; scancel "
                        << (s.ok() ? "issued" : "failed (retried): " + std::string(s.message()));
    if (!s.ok()) orphans_left.push_back(id);
  }
  const absl::StatusOr<std::vector<SlurmJobInfo>> listed = slurm_->List();
  if (!listed.ok()) RETINA_LOG(Warning) << "scontrol show job: " << listed.status().message() << " (polling again later)";
  std::map<std::string, int64_t> offsets;
  FeedEvents(&work, &offsets);

  std::vector<Submission> submit;
  ctx_.locked([&] {
    orphans_.insert(orphans_.end(), orphans_left.begin(), orphans_left.end());
    submit = Apply(cancelled, offsets, listed);
  });

  // sbatch, without the lock; then the commit of each Slurm job id.
  std::vector<std::tuple<std::string, int, absl::StatusOr<std::string>>> submitted;
  const StoreLayout layout(paths_.store);
  for (Submission& s : submit) {
    absl::Status written = CreateDirectories(layout.JobDir(s.id) / "logs");
    if (written.ok()) written = WriteFileAtomic(s.attempt.config, s.config_yaml);
    absl::StatusOr<std::string> id = written.ok() ? slurm_->Submit(s.attempt) : absl::StatusOr<std::string>(written);
    if (id.ok()) RETINA_LOG(Info) << s.id << " attempt " << s.attempt.attempt << ": sbatch -> Slurm job " << *id;
    submitted.emplace_back(s.id, s.attempt.attempt, std::move(id));
  }
  if (!submitted.empty()) ctx_.locked([&] { Submitted(submitted); });
}

bool SlurmExecutor::TakeWork(Work* work) {
  const int64_t now = ctx_.now_ms();
  bool queued = false;
  for (const auto& [seq, e] : jobs_.by_seq()) {
    if (e->job.state() == v1::QUEUED && e->job.spec().kind() != v1::STUDY) queued = true;
  }
  for (auto& [id, run] : runs_) {
    const JobEntry* e = jobs_.Get(id);
    if (e->job.cancel_requested() && !run.cancel_sent && !run.slurm_id.empty()) work->cancels.push_back(run.slurm_id);
    work->event_files.emplace_back(id, e->job.attempt(), run.events_offset);
  }
  work->orphans.swap(orphans_);
  if (work->cancels.empty() && work->orphans.empty() && now < next_poll_ms_) return false;
  if (!queued && runs_.empty() && work->cancels.empty() && work->orphans.empty()) return false;  // nothing to follow
  next_poll_ms_ = now + absl::ToInt64Milliseconds(backoff_ > absl::ZeroDuration() ? backoff_ : options_.poll);
  return true;
}

void SlurmExecutor::FeedEvents(Work* work, std::map<std::string, int64_t>* offsets) {
  // Rank 0's events from the store, through the same path as a worker's reports.
  const StoreLayout layout(paths_.store);
  for (auto& [id, attempt, offset] : work->event_files) {
    std::vector<std::string> lines = ReadNewLines(layout.EventsPath(id), &offset);
    (*offsets)[id] = offset;
    for (size_t i = 0; i < lines.size(); i += limits::kEventsPerReport) {
      v1::ReportEventsRequest report;
      report.set_job_id(id);
      report.set_attempt(attempt);
      for (size_t k = i; k < std::min(lines.size(), i + limits::kEventsPerReport); ++k) {
        if (lines[k].size() <= limits::kEventBytes) {
          report.add_events_json(lines[k]);
        } else {
          RETINA_LOG(Warning) << id << ": " << layout.EventsPath(id).string() << ": a line of " << lines[k].size()
                              << " bytes is over the event limit of " << limits::kEventBytes << "; skipped";
        }
      }
      if (absl::Status s = ctx_.report_events(report); !s.ok()) RETINA_LOG(Warning) << id << ": events.jsonl: " << s;
    }
  }
}

std::vector<SlurmExecutor::Submission> SlurmExecutor::Apply(
    const std::vector<std::pair<std::string, absl::Status>>& cancelled, const std::map<std::string, int64_t>& offsets,
    const absl::StatusOr<std::vector<SlurmJobInfo>>& listed) {
  const int64_t now = ctx_.now_ms();
  // Back-off while Slurm does not answer (slurmctld restarting, overloaded):
  // double the interval up to max_poll; back to `poll` once it answers.
  const absl::Duration interval = backoff_ > absl::ZeroDuration() ? backoff_ : options_.poll;
  backoff_ = listed.ok() ? options_.poll : std::min(options_.max_poll, interval * 2);
  for (const auto& [slurm_id, status] : cancelled) {
    for (auto& [id, run] : runs_) {
      if (run.slurm_id != slurm_id) continue;
      if (status.ok()) {
        run.cancel_sent = true;
      } else {
        RETINA_LOG(Warning) << id << ": scancel " << slurm_id << ": " << status << " (retried)";
      }
    }
  }
  for (const auto& [id, offset] : offsets) {
    auto run = runs_.find(id);
    if (run != runs_.end()) run->second.events_offset = offset;
  }
  std::map<std::string, const SlurmJobInfo*> by_name, by_id;
  if (listed.ok()) {
    for (const SlurmJobInfo& info : *listed) {
      by_name[info.name] = &info;
      by_id[info.slurm_id] = &info;
    }
    Follow(by_id, by_name, now);
  }
  return Start(by_name, listed.ok(), now);
}

void SlurmExecutor::Follow(const std::map<std::string, const SlurmJobInfo*>& by_id,
                           const std::map<std::string, const SlurmJobInfo*>& by_name, int64_t now) {
  for (auto it = runs_.begin(); it != runs_.end();) {
    const std::string id = it->first;
    Run& run = it->second;
    ++it;  // ApplyInfo and End may erase the entry
    JobEntry* e = jobs_.Get(id);
    const SlurmJobInfo* info = nullptr;
    if (!run.slurm_id.empty() && by_id.count(run.slurm_id)) info = by_id.at(run.slurm_id);
    if (info == nullptr && run.slurm_id.empty()) {  // after a restart: by the name of its attempt
      for (int a = e->job.attempt(); a >= 1 && info == nullptr; --a) {
        auto n = by_name.find(SlurmJobName(id, a));
        if (n != by_name.end()) info = n->second;
      }
    }
    if (info != nullptr) {
      ApplyInfo(e, &run, *info, now);
    } else if (++run.missing_polls >= 3) {
      End(e, e->job.cancel_requested() ? AttemptOutcome::kCancelled : AttemptOutcome::kFailed,
          absl::StrCat("Slurm job ", run.slurm_id.empty() ? "?" : run.slurm_id,
                       " is no longer known to Slurm and its end was not seen (purged: raise MinJobAge?)"),
          now);
    }
  }
}

std::vector<SlurmExecutor::Submission> SlurmExecutor::Start(const std::map<std::string, const SlurmJobInfo*>& by_name,
                                                            bool listed, int64_t now) {
  // QUEUED jobs: re-attach to a Slurm job of the next attempt's name (an
  // sbatch whose commit a crash cut off), else submit.
  std::vector<Submission> submit;
  const StoreLayout layout(paths_.store);
  for (const auto& [seq, e] : jobs_.by_seq()) {
    if (e->job.state() != v1::QUEUED || e->job.spec().kind() == v1::STUDY) continue;
    const std::string id = e->job.id();  // a copy: a commit replaces e->job
    const int attempt = e->job.attempt() + 1;
    auto n = by_name.find(SlurmJobName(id, attempt));
    if (n != by_name.end() && MapSlurmState(n->second->state) != SlurmPhase::kCancelled) {
      v1::Job next = e->job;
      next.set_attempt(attempt);
      next.set_state(v1::SCHEDULED);
      next.set_executor_job_id(n->second->slurm_id);
      next.set_message(absl::StrCat("re-attached to Slurm job ", n->second->slurm_id));
      if (jobs_.Commit(e, std::move(next)).ok()) {
        Run& run = runs_[id];
        run.slurm_id = n->second->slurm_id;
        run.name_attempt = attempt;
        ApplyInfo(e, &run, *n->second, now);
      }
      continue;
    }
    if (!listed) continue;  // without Slurm's listing an sbatch could duplicate a lost one
    Submission s;
    s.id = id;
    SlurmAttempt& a = s.attempt;
    a.job_id = id;
    a.job_uid = e->job.uid();
    a.attempt = attempt;
    a.world_size = e->job.spec().world_size();
    a.slots_per_rank = e->job.spec().slots_per_rank();
    a.min_world_size = e->job.spec().min_world_size();
    a.gpu = e->job.spec().slot_type() == v1::SLOT_GPU;
    a.config = layout.SubmittedConfigPath(id);
    a.store = paths_.store;
    a.allowed_roots = paths_.allowed_roots;
    a.output_roots = paths_.output_roots;
    for (const auto& [k, v] : e->job.spec().labels()) a.labels[k] = v;
    s.config_yaml = e->job.spec().config_yaml();
    submit.push_back(std::move(s));
  }
  return submit;
}

void SlurmExecutor::Submitted(const std::vector<std::tuple<std::string, int, absl::StatusOr<std::string>>>& submitted) {
  const int64_t now = ctx_.now_ms();
  for (const auto& [id, attempt, result] : submitted) {
    JobEntry* e = jobs_.Get(id);
    if (e->job.state() != v1::QUEUED || e->job.attempt() + 1 != attempt) {
      if (result.ok()) orphans_.push_back(*result);  // cancelled while sbatch ran
      continue;
    }
    if (absl::IsDeadlineExceeded(result.status()) || absl::IsUnavailable(result.status())) {
      // No answer: Slurm may have queued it. Still QUEUED: the next poll
      // re-attaches to it by name, or submits again if Slurm never had it.
      RETINA_LOG(Warning) << id << " attempt " << attempt << ": sbatch: " << result.status()
                          << " (the next poll looks for the Slurm job by name)";
      continue;
    }
    v1::Job next = e->job;
    next.set_attempt(attempt);
    next.set_state(v1::SCHEDULED);
    if (!result.ok()) {
      // Slurm refused the job (a bad partition, account, limits): the attempt fails.
      if (!jobs_.Commit(e, std::move(next)).ok()) continue;
      End(e, AttemptOutcome::kFailed, std::string(result.status().message()), now);
      continue;
    }
    next.set_executor_job_id(*result);
    next.set_start_unix_ms(0);
    next.set_message(absl::StrCat("submitted as Slurm job ", *result));
    if (!jobs_.Commit(e, std::move(next)).ok()) continue;  // still QUEUED: the next poll re-attaches by name
    Run& run = runs_[id];
    run = Run{};
    run.slurm_id = *result;
    run.name_attempt = attempt;
    run.restarts = 0;
    if (ctx_.metrics) ctx_.metrics->AttemptStarted(attempt == 1 ? "first" : "retry");
  }
}

void SlurmExecutor::ApplyInfo(JobEntry* e, Run* run, const SlurmJobInfo& info, int64_t now) {
  run->missing_polls = 0;
  run->slurm_id = info.slurm_id;
  std::string name_job;
  (void)ParseSlurmJobName(info.name, &name_job, &run->name_attempt);
  const int attempt = run->name_attempt + info.restarts;  // the script logs to attempt-<this>
  if (attempt > e->job.attempt()) {
    // Requeued by Slurm (scontrol requeue, preemption, the job's own USR1
    // requeue): a new attempt of the same Slurm job, resumed from LATEST.
    v1::Job next = e->job;
    next.set_attempt(attempt);
    next.set_state(v1::SCHEDULED);
    next.set_start_unix_ms(0);
    next.set_message(absl::StrCat("requeued by Slurm (restart ", info.restarts, " of Slurm job ", info.slurm_id,
                                  "); attempt ", attempt, " resumes from LATEST"));
    if (!jobs_.Commit(e, std::move(next)).ok()) return;
    run->events_offset = 0;
    if (ctx_.metrics) ctx_.metrics->AttemptStarted("preempted");
  }
  run->restarts = info.restarts;
  const std::string where = absl::StrCat("Slurm job ", info.slurm_id, " ", info.state,
                                         info.reason.empty() || info.reason == "None" ? "" : " (" + info.reason + ")");
  switch (MapSlurmState(info.state)) {
    case SlurmPhase::kPending:  // queued in Slurm (or held after a requeue): SCHEDULED, as committed
      return;
    case SlurmPhase::kRunning:
      if (e->job.state() == v1::SCHEDULED) {
        v1::Job next = e->job;
        next.set_state(v1::RUNNING);
        next.set_start_unix_ms(now);
        next.set_message(absl::StrCat("running as Slurm job ", info.slurm_id));
        (void)jobs_.Commit(e, std::move(next));  // on failure still SCHEDULED: the next poll commits it
      }
      return;
    case SlurmPhase::kSucceeded:
      End(e, AttemptOutcome::kSucceeded, "", now);
      return;
    case SlurmPhase::kCancelled:
      End(e, AttemptOutcome::kCancelled,
          e->job.cancel_requested() ? absl::StrCat("cancelled (scancel of Slurm job ", info.slurm_id, ")")
                                    : absl::StrCat("cancelled outside the service: ", where),
          now);
      return;
    case SlurmPhase::kFailed:
      End(e, AttemptOutcome::kFailed,
          absl::StrCat(where, ", exit code ", info.exit_code,
                       info.exit_signal ? absl::StrCat(", signal ", info.exit_signal) : ""),
          now);
      return;
  }
}

}  // namespace retina::coordinator
