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

std::vector<GangPlan> PlanPass(std::vector<QueuedJob> queue, std::vector<FreeWorker> free, const FairShare& share) {
  std::stable_sort(queue.begin(), queue.end(), [](const QueuedJob& a, const QueuedJob& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.seq < b.seq;
  });
  std::map<std::string, int> held = share.running_slots;  // slots per user, updated as the pass places
  std::map<std::string, size_t> by_id;
  for (size_t i = 0; i < free.size(); ++i) by_id[free[i].id] = i;
  std::vector<bool> done(queue.size(), false);
  std::vector<GangPlan> plans;
  for (size_t begin = 0; begin < queue.size();) {
    // The jobs of the highest priority left: [begin, end).
    size_t end = begin;
    while (end < queue.size() && queue[end].priority == queue[begin].priority) ++end;
    // Each user's oldest job in the band (queue order is seq order within it).
    std::map<std::string, size_t> head;
    for (size_t i = begin; i < end; ++i) {
      if (!done[i] && !head.count(queue[i].user)) head[queue[i].user] = i;
    }
    if (head.empty()) {
      begin = end;
      continue;
    }
    size_t pick = queue.size();
    for (const auto& [user, i] : head) {
      auto slots = [&](const std::string& u) {
        auto h = held.find(u);
        return h == held.end() ? 0 : h->second;
      };
      if (pick == queue.size() || slots(user) < slots(queue[pick].user) ||
          (slots(user) == slots(queue[pick].user) && queue[i].seq < queue[pick].seq)) {
        pick = i;
      }
    }
    const QueuedJob& job = queue[pick];
    const int per_rank = std::max(1, job.slots_per_rank);
    const int needed = job.world_size * per_rank;
    if (share.max_running_slots_per_user > 0 && held[job.user] + needed > share.max_running_slots_per_user) {
      // Held by the per-user limit: this user's jobs wait; the others go on.
      for (size_t i = begin; i < end; ++i) {
        if (queue[i].user == job.user) done[i] = true;
      }
      continue;
    }
    GangPlan plan = PlanGang(job, free);
    if (plan.ranks_per_worker.empty()) break;  // no starvation: nothing overtakes it
    for (const auto& [id, ranks] : plan.ranks_per_worker) free[by_id.at(id)].free_slots -= ranks * per_rank;
    held[job.user] += needed;
    done[pick] = true;
    plans.push_back(std::move(plan));
  }
  return plans;
}

}  // namespace retina::coordinator
