// The gang scheduler's decision, as a pure function: a queue and the free
// slots in, a plan out. No protos, no locks, no clock; the coordinator
// applies the plan (assignments, slot bookkeeping, the commit) and stops at
// the first plan it cannot commit.
//
// Policy (docs/service.md, "Scheduling"):
// - Order: priority (higher first), then submission (seq, lower first).
// - Gang: a job is placed whole (all world_size ranks at once) or not at all.
//   An elastic job (min_world_size) is placed at the largest of its sizes
//   (ElasticSizes) that fits, so it starts, or restarts after losing a
//   host, with fewer ranks rather than wait; PlanGrowth grows it back.
// - No starvation: the first job in that order that does not fit ends the
//   pass, so smaller jobs behind it cannot overtake it forever (no backfill).
// - Fewest workers, then least fragmentation: while the remaining ranks fit
//   on no single worker, take the worker with the most free ranks; the last
//   share goes to the worker with the fewest free ranks that suffice (best
//   fit). Ties by worker id, so a plan is deterministic.
// - slots_per_rank: a worker with F free slots holds floor(F / slots_per_rank)
//   ranks; workers only serve jobs of their slot type.
// - Fair share between users (FairShare): among the jobs of the highest
//   priority still queued, the next is the oldest job of the user who holds
//   the fewest slots (running before the pass plus placed in it; ties: the
//   user whose oldest job is older). So at equal priority users alternate
//   instead of one user's long queue going first. A user at
//   max_running_slots_per_user has their jobs held for the pass (they do not
//   block other users: the limit is policy, not capacity); the first job that
//   does not fit still ends the pass.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace retina::coordinator {

enum class SlotKind { kCpu, kGpu };

struct FreeWorker {
  std::string id;
  SlotKind kind = SlotKind::kCpu;
  int free_slots = 0;
};

struct QueuedJob {
  std::string id;
  int priority = 0;
  int64_t seq = 0;  // submission order
  SlotKind kind = SlotKind::kCpu;
  int world_size = 1;
  int slots_per_rank = 1;  // < 1 counts as 1
  std::string user;        // fair share and per-user limits
  int min_world_size = 0;  // elastic: fewest ranks (0: world_size)
};

// An elastic job's sizes, largest first: the multiples of min_world_size
// that divide world_size (so the global batch splits into whole
// micro-batches and BatchNorm groups of min_world_size ranks tile every
// size). {world_size} when min_world_size is 0, equal, or does not divide it.
std::vector<int> ElasticSizes(int world_size, int min_world_size);

struct FairShare {
  std::map<std::string, int> running_slots;  // per user, held before the pass
  int max_running_slots_per_user = 0;        // 0 = no limit
};

struct GangPlan {
  std::string job_id;
  // (worker id, ranks there) in rank order: ranks 0..n0-1 on the first
  // worker (the rendezvous host), and so on.
  std::vector<std::pair<std::string, int>> ranks_per_worker;
  int world_size = 0;  // the ranks placed (an elastic job's size)
};

// The placement of one job on `free` at the largest of its sizes that fits
// and is at most `max_ranks` (0: no cap), or an empty plan when none does.
GangPlan PlanGang(const QueuedJob& job, const std::vector<FreeWorker>& free, int max_ranks = 0);

// One scheduling pass: plans in the order they are to be applied (each
// accounted against the free slots before the next is planned).
std::vector<GangPlan> PlanPass(std::vector<QueuedJob> queue, std::vector<FreeWorker> free,
                               const FairShare& share = {});

// ---- Priority preemption (issue 32, first part: the pure decision) ----

// A running job, as preemption sees it.
struct RunningJob {
  std::string id;
  int priority = 0;
  int64_t seq = 0;         // submission order
  int64_t started_ms = 0;  // when its current attempt started
  SlotKind kind = SlotKind::kCpu;
  bool preemptible = true;
  std::vector<std::pair<std::string, int>> slots;  // (worker id, slots it holds there)
  // Elastic growth: the ranks of its attempt, and its spec's sizes.
  int world_size = 1, full_world_size = 1, min_world_size = 0, slots_per_rank = 1;
};

struct PreemptionRules {
  int64_t now_ms = 0;
  int64_t min_run_ms = 0;  // a job runs at least this long before it can be preempted
};

// The running jobs to stop so that `job`, which does not fit on `free`, can
// be placed whole. Candidates: strictly lower priority, preemptible, of the
// job's slot kind, running for at least min_run_ms. Preferred victims: the
// lowest priority, then the most recently started (the least work lost),
// then the latest submitted. The set is irreducible: candidates are taken in
// that order until the job fits, then each taken one that the job can do
// without is given back, the least preferred victims first; a single
// candidate that suffices alone is always the answer when there is one.
// Empty when even every candidate together would not make room (preempting
// then would only lose work).
std::vector<std::string> PlanPreemption(const QueuedJob& job, const std::vector<FreeWorker>& free,
                                        const std::vector<RunningJob>& running, const PreemptionRules& rules);

// ---- Elastic growth ----

struct GrowthRules {
  int64_t now_ms = 0;
  int64_t min_interval_ms = 0;  // an attempt runs this long before its job grows (no thrashing)
};

struct GrowPlan {
  std::string job_id;
  int from = 0, to = 0;  // ranks
};

// An elastic job running below its full size to stop (checkpoint, exit 75)
// so that it is placed again with more ranks: the largest of its sizes that
// fits on `free` plus the slots it holds. Only into idle capacity: never
// while a job of the same slot kind is queued (queued jobs have the first
// claim on free slots), and only after its attempt ran min_interval_ms.
// Among candidates: the highest priority, then the earliest submitted. One
// at a time (the caller waits for the stop). `*later` (when given) is set
// when a candidate would grow but has not yet run min_interval_ms, so the
// caller plans again.
std::optional<GrowPlan> PlanGrowth(const std::vector<RunningJob>& running, const std::vector<FreeWorker>& free,
                                   const std::vector<QueuedJob>& queue, const GrowthRules& rules, bool* later = nullptr);

}  // namespace retina::coordinator
