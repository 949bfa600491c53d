#include "services/coordinator/placement.h"

#include <algorithm>

namespace retina::coordinator {

GangPlan PlanGang(const QueuedJob& job, const std::vector<FreeWorker>& free) {
  const int per_rank = std::max(1, job.slots_per_rank);
  struct Fit {
    const FreeWorker* w;
    int ranks;
  };
  std::vector<Fit> candidates;
  int capacity = 0;
  for (const FreeWorker& w : free) {
    const int fit = w.kind == job.kind ? w.free_slots / per_rank : 0;
    if (fit > 0) {
      candidates.push_back({&w, fit});
      capacity += fit;
    }
  }
  GangPlan plan;
  plan.job_id = job.id;
  int remaining = job.world_size;
  if (remaining < 1 || capacity < remaining) return plan;
  std::sort(candidates.begin(), candidates.end(), [](const Fit& a, const Fit& b) {
    return a.ranks != b.ranks ? a.ranks > b.ranks : a.w->id < b.w->id;
  });
  size_t next = 0;  // the largest not yet taken
  while (remaining > 0) {
    const Fit* best = nullptr;  // the smallest that holds the rest (lowest id among equals)
    for (size_t k = next; k < candidates.size(); ++k) {
      if (candidates[k].ranks >= remaining && (best == nullptr || candidates[k].ranks < best->ranks)) best = &candidates[k];
    }
    if (best != nullptr) {
      plan.ranks_per_worker.emplace_back(best->w->id, remaining);
      remaining = 0;
    } else {
      plan.ranks_per_worker.emplace_back(candidates[next].w->id, candidates[next].ranks);
      remaining -= candidates[next].ranks;
      ++next;
    }
  }
  return plan;
}

std::vector<GangPlan> PlanPass(std::vector<QueuedJob> queue, std::vector<FreeWorker> free) {
  std::stable_sort(queue.begin(), queue.end(), [](const QueuedJob& a, const QueuedJob& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.seq < b.seq;
  });
  std::vector<GangPlan> plans;
  for (const QueuedJob& job : queue) {
    GangPlan plan = PlanGang(job, free);
    if (plan.ranks_per_worker.empty()) break;  // no starvation: nothing overtakes it
    const int per_rank = std::max(1, job.slots_per_rank);
    for (const auto& [id, ranks] : plan.ranks_per_worker) {
      for (FreeWorker& w : free) {
        if (w.id == id) w.free_slots -= ranks * per_rank;
      }
    }
    plans.push_back(std::move(plan));
  }
  return plans;
}

}  // namespace retina::coordinator
