#include "services/coordinator/worker_registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "services/coordinator/limits.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

v1::SlotType NormalType(v1::SlotType t) { return t == v1::SLOT_GPU ? v1::SLOT_GPU : v1::SLOT_CPU; }

bool NotServingLog::Note(int64_t from, int64_t to, int64_t threshold_ms) {
  constexpr size_t kMax = 4096;
  if (to - from <= threshold_ms) return false;
  if (!intervals_.empty() && from <= intervals_.back().second) {
    intervals_.back().second = std::max(intervals_.back().second, to);
  } else {
    intervals_.emplace_back(from, to);
  }
  while (intervals_.size() > kMax || (!intervals_.empty() && intervals_.front().second < to - 3600 * 1000)) {
    intervals_.pop_front();
  }
  return true;
}

int64_t NotServingLog::Served(int64_t since, int64_t now) const {
  int64_t served = now - since;
  for (const auto& [from, to] : intervals_) served -= std::max<int64_t>(0, std::min(to, now) - std::max(from, since));
  return served;
}

WorkerEntry& WorkerRegistry::Register(const v1::RegisterWorkerRequest& r, int64_t now) {
  ++slot_changes_;
  WorkerEntry& w = workers_[r.worker_id()];
  w = WorkerEntry{};
  w.info.set_id(r.worker_id());
  w.info.set_host(r.host());
  w.info.set_slot_type(NormalType(r.slot_type()));
  w.info.set_slots(r.slots());
  *w.info.mutable_labels() = r.labels();
  w.info.set_version(r.version());
  w.info.set_state(v1::WorkerInfo::READY);
  w.info.set_metrics_address(r.metrics_address());
  w.last_seen_ms = now;
  {
    absl::MutexLock lease(&lease_mu_);
    lease_seen_ms_[r.worker_id()] = now;
  }
  for (int i = 0; i < r.slots(); ++i) w.slot_ids.push_back(r.slot_type() == v1::SLOT_GPU ? r.gpu_ids(i) : i);
  return w;
}

WorkerEntry* WorkerRegistry::Find(const std::string& id) {
  auto it = workers_.find(id);
  return it == workers_.end() ? nullptr : &it->second;
}

void WorkerRegistry::Renew(const std::string& id, int64_t now) {
  absl::MutexLock lease(&lease_mu_);
  auto seen = lease_seen_ms_.find(id);
  if (seen != lease_seen_ms_.end()) seen->second = now;
}

int64_t WorkerRegistry::LastSeen(const WorkerEntry& w) {
  absl::MutexLock lease(&lease_mu_);
  auto it = lease_seen_ms_.find(w.info.id());
  return it == lease_seen_ms_.end() ? w.last_seen_ms : std::max(w.last_seen_ms, it->second);
}

int64_t WorkerRegistry::ServingSilence(const WorkerEntry& w, int64_t now) { return serving_->Served(LastSeen(w), now); }

void WorkerRegistry::ReleaseTask(WorkerEntry* w, const TaskKey& key) {
  ++slot_changes_;
  auto t = w->tasks.find(key);
  if (t != w->tasks.end()) {
    for (int s : t->second) w->used.erase(s);
    w->tasks.erase(t);
  }
  w->pending.erase(key);
  w->stopping.erase(key);
}

std::map<TaskKey, std::vector<int>> WorkerRegistry::Lose(WorkerEntry* w) {
  ++slot_changes_;
  w->info.set_state(v1::WorkerInfo::LOST);
  if (metrics_) metrics_->LeaseMissed();
  std::map<TaskKey, std::vector<int>> tasks = std::move(w->tasks);
  w->tasks.clear();
  w->used.clear();
  w->pending.clear();
  w->stopping.clear();
  return tasks;
}

int WorkerRegistry::TotalSlots(v1::SlotType type) const {
  int total = 0;
  for (const auto& [id, w] : workers_) {
    if (w.info.state() == v1::WorkerInfo::READY && NormalType(w.info.slot_type()) == NormalType(type)) {
      total += static_cast<int>(w.slot_ids.size());
    }
  }
  return total;
}

std::vector<FreeWorker> WorkerRegistry::FreeWorkers() const {
  std::vector<FreeWorker> free;
  for (const auto& [id, w] : workers_) {
    if (w.info.state() != v1::WorkerInfo::READY) continue;
    free.push_back({id, NormalType(w.info.slot_type()) == v1::SLOT_GPU ? SlotKind::kGpu : SlotKind::kCpu,
                    static_cast<int>(w.slot_ids.size() - w.used.size())});
  }
  return free;
}

void WorkerRegistry::UpdateGauges() {
  if (metrics_ == nullptr) return;
  int ready = 0, lost = 0, free = 0, used = 0;
  for (const auto& [id, w] : workers_) {
    if (w.info.state() == v1::WorkerInfo::READY) {
      ++ready;
      used += static_cast<int>(w.used.size());
      free += static_cast<int>(w.slot_ids.size() - w.used.size());
    } else {
      ++lost;
    }
  }
  metrics_->SetWorkers(ready, lost);
  metrics_->SetSlots(free, used);
}

absl::Status ValidateTaskRef(const v1::TaskRef& t, int max_slots, const char* field) {
  if (t.job_id().empty() || t.job_id().size() > limits::kIdChars || t.attempt() < 1 ||
      t.ranks_size() > limits::kWorldSize || t.slot_ids_size() > max_slots) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": a task needs a job_id of 1-", limits::kIdChars,
                                                   " characters, an attempt >= 1 and at most ", max_slots, " slots"));
  }
  for (int s : t.slot_ids()) {
    if (s < 0) return absl::InvalidArgumentError(absl::StrCat(field, ".slot_ids: must be >= 0"));
  }
  return absl::OkStatus();
}

absl::Status ValidateRegistration(const v1::RegisterWorkerRequest& r) {
  if (r.worker_id().empty() || r.worker_id().size() > 128) {
    return absl::InvalidArgumentError("worker_id: 1-128 characters");
  }
  if (r.host().empty() || r.host().size() > limits::kHostChars) {
    return absl::InvalidArgumentError(
        absl::StrCat("host: 1-", limits::kHostChars, " characters, the address ranks reach this worker at"));
  }
  if (r.metrics_address().size() > limits::kHostChars || r.version().size() > limits::kVersionChars) {
    return absl::InvalidArgumentError(absl::StrCat("metrics_address/version: at most ", limits::kHostChars, "/",
                                                   limits::kVersionChars, " characters"));
  }
  if (r.labels_size() > limits::kLabels) {
    return absl::InvalidArgumentError(absl::StrCat("labels: at most ", limits::kLabels));
  }
  for (const auto& [key, value] : r.labels()) {
    if (key.empty() || key.size() > limits::kLabelKeyChars || value.size() > limits::kLabelValueChars) {
      return absl::InvalidArgumentError(absl::StrCat("labels: keys 1-", limits::kLabelKeyChars,
                                                     " characters, values at most ", limits::kLabelValueChars));
    }
  }
  if (!v1::SlotType_IsValid(r.slot_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat("slot_type: unknown value ", static_cast<int>(r.slot_type()), " (SLOT_CPU, SLOT_GPU)"));
  }
  if (r.slots() < 1 || r.slots() > limits::kWorkerSlots) {
    return absl::InvalidArgumentError(absl::StrCat("slots: must be 1-", limits::kWorkerSlots));
  }
  if (r.running_size() > r.slots()) return absl::InvalidArgumentError("running: more tasks than slots");
  for (const v1::TaskRef& t : r.running()) RETURN_IF_ERROR(ValidateTaskRef(t, r.slots(), "running"));
  if (r.slot_type() == v1::SLOT_GPU && r.gpu_ids_size() != r.slots()) {
    return absl::InvalidArgumentError("gpu_ids: one per GPU slot");
  }
  return absl::OkStatus();
}

}  // namespace retina::coordinator
