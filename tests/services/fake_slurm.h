// An in-memory Slurm for the Slurm executor's tests (SlurmClient,
// services/coordinator/slurm_commands.h). The executor submits, lists and
// cancels as it would with slurmctld; the test plays the cluster: it starts
// and ends jobs, requeues them (Slurm's restart count), cancels them from
// outside, purges them (MinJobAge), refuses submissions, loses sbatch's
// answer after queueing the job, or stops answering.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "services/coordinator/slurm_commands.h"

namespace retina::coordinator {

class FakeSlurm {
 public:
  struct Job {
    SlurmJobInfo info;
    SlurmAttempt attempt;  // what sbatch was given
    int cancels = 0;       // scancel calls
  };

  // A client of this Slurm (any number; they share it).
  std::unique_ptr<SlurmClient> Client() { return std::make_unique<ClientImpl>(this); }

  // The cluster's side.
  void SetState(const std::string& id, const std::string& state, int exit_code = 0) {
    absl::MutexLock lock(&mu_);
    jobs_.at(id).info.state = state;
    jobs_.at(id).info.exit_code = exit_code;
  }
  void Requeue(const std::string& id) {  // scontrol requeue, a preemption
    absl::MutexLock lock(&mu_);
    jobs_.at(id).info.state = "PENDING";
    jobs_.at(id).info.restarts++;
  }
  void Purge(const std::string& id) {
    absl::MutexLock lock(&mu_);
    jobs_.erase(id);
  }
  void Answering(bool on) {
    absl::MutexLock lock(&mu_);
    answering_ = on;
  }
  void Refuse(const std::string& why) {  // sbatch exits non-zero with `why`
    absl::MutexLock lock(&mu_);
    refuse_ = why;
  }
  void LoseNextSbatchAnswer() {  // queued, but sbatch times out
    absl::MutexLock lock(&mu_);
    lose_answer_ = true;
  }
  std::vector<Job> Jobs() {
    absl::MutexLock lock(&mu_);
    std::vector<Job> out;
    for (const auto& [id, j] : jobs_) out.push_back(j);
    return out;
  }
  Job Get(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return jobs_.at(id);
  }

 private:
  class ClientImpl : public SlurmClient {
   public:
    explicit ClientImpl(FakeSlurm* s) : s_(s) {}
    absl::StatusOr<std::string> Submit(const SlurmAttempt& a) override {
      absl::MutexLock lock(&s_->mu_);
      if (!s_->answering_) return absl::DeadlineExceededError("sbatch: no answer within 30s");
      if (!s_->refuse_.empty()) return absl::FailedPreconditionError("sbatch: " + s_->refuse_);
      const std::string id = std::to_string(s_->next_id_++);
      Job& j = s_->jobs_[id];
      j.info.slurm_id = id;
      j.info.name = SlurmJobName(a.job_id, a.attempt);
      j.info.state = "PENDING";
      j.attempt = a;
      if (s_->lose_answer_) {
        s_->lose_answer_ = false;
        return absl::DeadlineExceededError("sbatch: no answer within 30s");
      }
      return id;
    }
    absl::StatusOr<std::vector<SlurmJobInfo>> List() override {
      absl::MutexLock lock(&s_->mu_);
      if (!s_->answering_) return absl::UnavailableError("slurm_load_jobs error: Unable to contact slurm controller");
      std::vector<SlurmJobInfo> out;
      for (const auto& [id, j] : s_->jobs_) out.push_back(j.info);
      return out;
    }
    absl::Status Cancel(const std::string& id) override {
      absl::MutexLock lock(&s_->mu_);
      if (!s_->answering_) return absl::UnavailableError("scancel: Unable to contact slurm controller");
      auto it = s_->jobs_.find(id);
      if (it == s_->jobs_.end()) return absl::UnavailableError(absl::StrCat("scancel: Invalid job id ", id));
      it->second.cancels++;
      it->second.info.state = "CANCELLED";  // by the user: Slurm ends it
      return absl::OkStatus();
    }

   private:
    FakeSlurm* const s_;
  };

  absl::Mutex mu_;
  std::map<std::string, Job> jobs_ ABSL_GUARDED_BY(mu_);
  int next_id_ ABSL_GUARDED_BY(mu_) = 41;
  bool answering_ ABSL_GUARDED_BY(mu_) = true;
  bool lose_answer_ ABSL_GUARDED_BY(mu_) = false;
  std::string refuse_ ABSL_GUARDED_BY(mu_);
};

}  // namespace retina::coordinator
