// The coordinator's Slurm executor (coordinator.h, "The Slurm executor";
// slurm_executor.h for the commands and Slurm's vocabulary).
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/store_layout.h"
#include "services/coordinator/attempt_rule.h"
#include "services/coordinator/coordinator.h"
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

void Coordinator::EndSlurmAttempt(JobEntry* e, v1::JobState state, const std::string& message, int64_t now) {
  v1::Job job = e->job;
  // The same rule as the worker agents' attempts (attempt_rule.h).
  const AttemptEnd end = DecideAttemptEnd(job,
                                          state == v1::SUCCEEDED   ? AttemptOutcome::kSucceeded
                                          : state == v1::CANCELLED ? AttemptOutcome::kCancelled
                                                                   : AttemptOutcome::kFailed,
                                          message);
  const std::string& result = end.result;
  job.set_state(end.state);
  job.set_message(end.message);
  if (end.requeued()) e->queued_ms = now;
  else job.set_end_unix_ms(now);
  const std::string id = job.id();
  if (absl::Status s = Commit(e, std::move(job)); !s.ok()) {
    RETINA_LOG(Error) << "cannot commit " << id << ": " << s << " (the next poll retries)";
    return;
  }
  RETINA_LOG(Info) << id << " attempt " << e->job.attempt() << " -> " << JobStateName(e->job.state()) << ": "
                   << e->job.message();
  slurm_runs_.erase(id);
  if (!result.empty() && metrics_) {
    metrics_->JobFinished(result);
    metrics_->DropJob(id);
  }
}

void Coordinator::ApplySlurmInfo(JobEntry* e, SlurmRun* run, const SlurmJobInfo& info, int64_t now) {
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
    if (!Commit(e, std::move(next)).ok()) return;
    run->events_offset = 0;
    if (metrics_) metrics_->AttemptStarted("preempted");
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
        (void)Commit(e, std::move(next));  // on failure still SCHEDULED: the next poll commits it
      }
      return;
    case SlurmPhase::kSucceeded:
      EndSlurmAttempt(e, v1::SUCCEEDED, "", now);
      return;
    case SlurmPhase::kCancelled:
      EndSlurmAttempt(e, v1::CANCELLED,
                      e->job.cancel_requested()
                          ? absl::StrCat("cancelled (scancel of Slurm job ", info.slurm_id, ")")
                          : absl::StrCat("cancelled outside the service: ", where),
                      now);
      return;
    case SlurmPhase::kFailed:
      EndSlurmAttempt(e, v1::FAILED,
                      absl::StrCat(where, ", exit code ", info.exit_code,
                                   info.exit_signal ? absl::StrCat(", signal ", info.exit_signal) : ""),
                      now);
      return;
  }
}

void Coordinator::SlurmTick() {
  const SlurmOptions& so = options_.slurm;
  const StoreLayout layout(options_.store);
  struct Submission {
    std::string id;
    SlurmAttempt attempt;
    std::string config_yaml;
  };
  std::vector<std::string> cancels, orphans;
  std::vector<std::tuple<std::string, int, int64_t>> event_files;  // job, attempt, offset
  bool queued = false;
  {
    StateLock lock(this);
    const int64_t now = NowMs();
    for (const auto& [id, e] : jobs_) {
      if (e->job.state() == v1::QUEUED && e->job.spec().kind() != v1::STUDY) queued = true;
    }
    for (auto& [id, run] : slurm_runs_) {
      JobEntry* e = jobs_.at(id).get();
      if (e->job.cancel_requested() && !run.cancel_sent && !run.slurm_id.empty()) cancels.push_back(run.slurm_id);
      event_files.emplace_back(id, e->job.attempt(), run.events_offset);
    }
    orphans.swap(slurm_orphans_);
    if (cancels.empty() && orphans.empty() && now < next_slurm_poll_ms_) return;
    if (!queued && slurm_runs_.empty() && cancels.empty() && orphans.empty()) return;  // nothing to follow
    next_slurm_poll_ms_ =
        now + absl::ToInt64Milliseconds(slurm_backoff_ > absl::ZeroDuration() ? slurm_backoff_ : so.poll);
  }

  // Slurm's answers, without the lock.
  std::vector<std::pair<std::string, absl::Status>> cancelled;
  for (const std::string& id : cancels) {
    absl::StatusOr<CommandResult> r = RunCommand({so.bin_dir.empty() ? "scancel" : so.bin_dir + "/scancel", id}, {},
                                                 so.command_timeout);
    cancelled.emplace_back(id, !r.ok() ? r.status()
                                       : r->exit_code == 0 ? absl::OkStatus()
                                                           : absl::UnavailableError(r->output));
  }
  for (const std::string& id : orphans) {
    absl::StatusOr<CommandResult> r =
        RunCommand({so.bin_dir.empty() ? "scancel" : so.bin_dir + "/scancel", id}, {}, so.command_timeout);
    const bool done = r.ok() && r->exit_code == 0;
    RETINA_LOG(Warning) << "Slurm job " << id << ": its job ended or was cancelled while sbatch ran; scancel "
                        << (done ? "issued" : "failed (retried): " + (r.ok() ? r->output : std::string(r.status().message())));
    if (!done) {
      StateLock lock(this);
      slurm_orphans_.push_back(id);
    }
  }
  absl::StatusOr<CommandResult> shown =
      RunCommand({so.bin_dir.empty() ? "scontrol" : so.bin_dir + "/scontrol", "show", "job", "-o"}, {}, so.command_timeout);
  std::vector<SlurmJobInfo> infos;
  const bool listed = shown.ok() && shown->exit_code == 0;
  {
    // Back-off while Slurm does not answer (slurmctld restarting, overloaded):
    // double the interval up to max_poll; back to `poll` once it answers.
    StateLock lock(this);
    const absl::Duration now_interval = slurm_backoff_ > absl::ZeroDuration() ? slurm_backoff_ : so.poll;
    slurm_backoff_ = listed ? so.poll : std::min(so.max_poll, now_interval * 2);
  }
  if (listed) {
    infos = ParseScontrolJobs(shown->output);
  } else {
    RETINA_LOG(Warning) << "scontrol show job: "
                        << (shown.ok() ? absl::StrCat("exit ", shown->exit_code, ": ", shown->output)
                                       : std::string(shown.status().message()))
                        << " (polling again later)";
  }
  // Rank 0's events from the store, through the same path as a worker's reports.
  std::map<std::string, int64_t> offsets;
  for (auto& [id, attempt, offset] : event_files) {
    std::vector<std::string> lines = ReadNewLines(layout.EventsPath(id), &offset);
    offsets[id] = offset;
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
      if (absl::Status s = ReportEvents(report); !s.ok()) RETINA_LOG(Warning) << id << ": events.jsonl: " << s;
    }
  }

  std::vector<Submission> submit;
  {
    StateLock lock(this);
    const int64_t now = NowMs();
    for (const auto& [slurm_id, status] : cancelled) {
      for (auto& [id, run] : slurm_runs_) {
        if (run.slurm_id != slurm_id) continue;
        if (status.ok()) {
          run.cancel_sent = true;
        } else {
          RETINA_LOG(Warning) << id << ": scancel " << slurm_id << ": " << status << " (retried)";
        }
      }
    }
    for (const auto& [id, offset] : offsets) {
      auto run = slurm_runs_.find(id);
      if (run != slurm_runs_.end()) run->second.events_offset = offset;
    }
    std::map<std::string, const SlurmJobInfo*> by_name, by_id;
    for (const SlurmJobInfo& info : infos) {
      by_name[info.name] = &info;
      by_id[info.slurm_id] = &info;
    }
    if (listed) {
      for (auto it = slurm_runs_.begin(); it != slurm_runs_.end();) {
        const std::string id = it->first;
        SlurmRun& run = it->second;
        ++it;  // ApplySlurmInfo may erase the entry
        JobEntry* e = jobs_.at(id).get();
        const SlurmJobInfo* info = nullptr;
        if (!run.slurm_id.empty() && by_id.count(run.slurm_id)) info = by_id.at(run.slurm_id);
        if (info == nullptr && run.slurm_id.empty()) {  // after a restart: by the name of its attempt
          for (int a = e->job.attempt(); a >= 1 && info == nullptr; --a) {
            auto n = by_name.find(SlurmJobName(id, a));
            if (n != by_name.end()) info = n->second;
          }
        }
        if (info != nullptr) {
          ApplySlurmInfo(e, &run, *info, now);
        } else if (++run.missing_polls >= 3) {
          EndSlurmAttempt(e, e->job.cancel_requested() ? v1::CANCELLED : v1::FAILED,
                          absl::StrCat("Slurm job ", run.slurm_id.empty() ? "?" : run.slurm_id,
                                       " is no longer known to Slurm and its end was not seen (purged: raise MinJobAge?)"),
                          now);
        }
      }
    }
    // QUEUED jobs: re-attach to a Slurm job of the next attempt's name (an
    // sbatch whose commit a crash cut off), else submit.
    for (auto& [id, e] : jobs_) {
      if (e->job.state() != v1::QUEUED || e->job.spec().kind() == v1::STUDY) continue;
      const int attempt = e->job.attempt() + 1;
      auto n = by_name.find(SlurmJobName(id, attempt));
      if (n != by_name.end() && MapSlurmState(n->second->state) != SlurmPhase::kCancelled) {
        v1::Job next = e->job;
        next.set_attempt(attempt);
        next.set_state(v1::SCHEDULED);
        next.set_executor_job_id(n->second->slurm_id);
        next.set_message(absl::StrCat("re-attached to Slurm job ", n->second->slurm_id));
        if (Commit(e.get(), std::move(next)).ok()) {
          SlurmRun& run = slurm_runs_[id];
          run.slurm_id = n->second->slurm_id;
          run.name_attempt = attempt;
          ApplySlurmInfo(e.get(), &run, *n->second, now);
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
      a.gpu = e->job.spec().slot_type() == v1::SLOT_GPU;
      a.config = layout.SubmittedConfigPath(id);
      a.store = options_.store;
      a.allowed_roots = options_.allowed_roots;
      a.output_roots = options_.output_roots;
      for (const auto& [k, v] : e->job.spec().labels()) a.labels[k] = v;
      s.config_yaml = e->job.spec().config_yaml();
      submit.push_back(std::move(s));
    }
  }

  // sbatch, without the lock; then the commit of each Slurm job id.
  std::vector<std::tuple<std::string, int, absl::StatusOr<std::string>>> submitted;
  for (Submission& s : submit) {
    absl::Status written = CreateDirectories(layout.JobDir(s.id) / "logs");
    if (written.ok()) written = WriteFileAtomic(s.attempt.config, s.config_yaml);
    if (!written.ok()) {
      submitted.emplace_back(s.id, s.attempt.attempt, written);
      continue;
    }
    const SlurmCommand cmd = SbatchCommand(so, s.attempt);
    absl::StatusOr<CommandResult> r = RunCommand(cmd.argv, cmd.env, so.command_timeout);
    if (!r.ok()) {
      submitted.emplace_back(s.id, s.attempt.attempt, r.status());
    } else if (r->exit_code != 0) {
      submitted.emplace_back(s.id, s.attempt.attempt,
                             absl::FailedPreconditionError(absl::StrCat("sbatch: ", absl::StripAsciiWhitespace(r->output))));
    } else {
      // --parsable: "<id>" or "<id>;<cluster>"
      const std::string out(absl::StripAsciiWhitespace(r->output));
      submitted.emplace_back(s.id, s.attempt.attempt, std::string(out.substr(0, out.find(';'))));
      RETINA_LOG(Info) << s.id << " attempt " << s.attempt.attempt << ": sbatch -> Slurm job " << out;
    }
  }
  if (submitted.empty()) return;
  StateLock lock(this);
  const int64_t now = NowMs();
  for (auto& [id, attempt, result] : submitted) {
    JobEntry* e = jobs_.at(id).get();
    if (e->job.state() != v1::QUEUED || e->job.attempt() + 1 != attempt) {
      if (result.ok()) slurm_orphans_.push_back(*result);  // cancelled while sbatch ran
      continue;
    }
    v1::Job next = e->job;
    next.set_attempt(attempt);
    if (!result.ok()) {
      // Slurm refused the job (a bad partition, account, limits): the attempt fails.
      next.set_state(v1::SCHEDULED);
      if (!Commit(e, std::move(next)).ok()) continue;
      EndSlurmAttempt(e, v1::FAILED, std::string(result.status().message()), now);
      continue;
    }
    next.set_state(v1::SCHEDULED);
    next.set_executor_job_id(*result);
    next.set_start_unix_ms(0);
    next.set_message(absl::StrCat("submitted as Slurm job ", *result));
    if (!Commit(e, std::move(next)).ok()) continue;  // still QUEUED: the next poll re-attaches by name
    SlurmRun& run = slurm_runs_[id];
    run = SlurmRun{};
    run.slurm_id = *result;
    run.name_attempt = attempt;
    run.restarts = 0;
    if (metrics_) metrics_->AttemptStarted(attempt == 1 ? "first" : "retry");
  }
}

}  // namespace retina::coordinator
