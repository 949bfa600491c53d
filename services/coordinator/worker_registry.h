// The worker agents the coordinator knows: their slots, the tasks placed on
// them, and their leases (docs/service.md "Leases").
//
// A worker registers its slots, heartbeats, and loses its lease after
// `lease` of *serving* time without a heartbeat: time the coordinator could
// not serve (a long hold of the state lock, a stalled process) is recorded in
// a NotServingLog and does not count, so a stalled database never fails a
// healthy worker, and a dead worker is still found one lease plus the stalls
// later. Renewals take their own small lock, never the state lock: a
// heartbeat renews its lease at once even while the state lock is busy.
//
// Not thread-safe except Renew and LastSeen: the rest is called with the
// coordinator's state lock held.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "retina/v1/worker_service.pb.h"
#include "services/coordinator/coordinator_metrics.h"
#include "services/coordinator/placement.h"

namespace retina::coordinator {

using TaskKey = std::pair<std::string, int>;  // (job id, attempt)

struct WorkerEntry {
  retina::v1::WorkerInfo info;
  int64_t last_seen_ms = 0;
  std::vector<int> slot_ids;  // e.g. GPU ids; 0..n-1 for CPU
  std::set<int> used;         // slot ids in use
  std::map<TaskKey, std::vector<int>> tasks;                 // -> slots
  std::map<TaskKey, retina::v1::Assignment> pending;         // not yet confirmed
  std::map<TaskKey, retina::v1::TaskRef> stopping;
};

// Intervals the coordinator did not serve, the last hour's.
class NotServingLog {
 public:
  // [from, to] was not served when longer than `threshold_ms` (a heartbeat).
  // Returns whether it counted.
  bool Note(int64_t from_ms, int64_t to_ms, int64_t threshold_ms);
  // How much of [since, now] was served.
  int64_t Served(int64_t since_ms, int64_t now_ms) const;

 private:
  std::deque<std::pair<int64_t, int64_t>> intervals_;  // ascending, disjoint
};

class WorkerRegistry {
 public:
  WorkerRegistry(CoordinatorMetrics* metrics, const NotServingLog* serving) : metrics_(metrics), serving_(serving) {}

  // A fresh entry for a registration (an old one of the same id is
  // replaced; its tasks are the caller's to settle first), its lease
  // renewed at `now`.
  WorkerEntry& Register(const retina::v1::RegisterWorkerRequest& r, int64_t now_ms);
  WorkerEntry* Find(const std::string& id);
  std::map<std::string, WorkerEntry>& all() { return workers_; }
  bool seen_any() const { return !workers_.empty(); }
  // Counts registrations, losses and released tasks: the changes that free
  // slots (a placement pass that placed nothing need not run again before).
  uint64_t slot_changes() const { return slot_changes_; }

  // Lease renewal of a heartbeat (a registered worker only); thread-safe.
  void Renew(const std::string& id, int64_t now_ms);
  int64_t LastSeen(const WorkerEntry& w);
  // How long `w` has been silent while the coordinator was serving.
  int64_t ServingSilence(const WorkerEntry& w, int64_t now_ms);

  // Frees the slots of a task and forgets it.
  void ReleaseTask(WorkerEntry* w, const TaskKey& task);
  // Marks `w` LOST and returns the tasks it held (now forgotten).
  std::map<TaskKey, std::vector<int>> Lose(WorkerEntry* w);
  // Slots of READY workers of `type` (CPU or GPU).
  int TotalSlots(retina::v1::SlotType type) const;
  // READY workers and their free slots, for a placement pass.
  std::vector<FreeWorker> FreeWorkers() const;
  // The worker and slot gauges (an O(workers) pass: the executor's tick).
  void UpdateGauges();

 private:
  CoordinatorMetrics* const metrics_;
  const NotServingLog* const serving_;
  std::map<std::string, WorkerEntry> workers_;
  uint64_t slot_changes_ = 0;
  absl::Mutex lease_mu_;
  std::map<std::string, int64_t> lease_seen_ms_ ABSL_GUARDED_BY(lease_mu_);
};

retina::v1::SlotType NormalType(retina::v1::SlotType t);  // SLOT_GPU or SLOT_CPU
// RegisterWorker's request within limits (limits.h), naming the field.
absl::Status ValidateRegistration(const retina::v1::RegisterWorkerRequest& r);
// A task a worker lists: within limits, naming `field`.
absl::Status ValidateTaskRef(const retina::v1::TaskRef& t, int max_slots, const char* field);

}  // namespace retina::coordinator
