#include "services/coordinator/placement.h"

#include <algorithm>
#include <deque>

namespace retina::coordinator {

std::vector<int> ElasticSizes(int world_size, int min_world_size) {
  if (min_world_size <= 0 || min_world_size >= world_size || world_size % min_world_size != 0) return {world_size};
  std::vector<int> sizes;
  for (int w = world_size; w >= min_world_size; w -= min_world_size) {
    if (world_size % w == 0) sizes.push_back(w);
  }
  return sizes;
}

namespace {

GangPlan PlanGangOfSize(const QueuedJob& job, const std::vector<FreeWorker>& free, int size) {
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
  int remaining = size;
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
  plan.world_size = size;
  return plan;
}

}  // namespace

GangPlan PlanGang(const QueuedJob& job, const std::vector<FreeWorker>& free, int max_ranks) {
  for (int size : ElasticSizes(job.world_size, job.min_world_size)) {
    if (max_ranks > 0 && size > max_ranks) continue;
    GangPlan plan = PlanGangOfSize(job, free, size);
    if (!plan.ranks_per_worker.empty()) return plan;
  }
  GangPlan none;
  none.job_id = job.id;
  return none;
}

std::vector<GangPlan> PlanPass(std::vector<QueuedJob> queue, std::vector<FreeWorker> free, const FairShare& share) {
  std::stable_sort(queue.begin(), queue.end(), [](const QueuedJob& a, const QueuedJob& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.seq < b.seq;
  });
  std::map<std::string, int> held = share.running_slots;  // slots per user, updated as the pass places
  std::map<std::string, size_t> by_id;
  for (size_t i = 0; i < free.size(); ++i) by_id[free[i].id] = i;
  std::vector<GangPlan> plans;
  auto slots = [&](const std::string& u) {
    auto h = held.find(u);
    return h == held.end() ? 0 : h->second;
  };
  for (size_t begin = 0; begin < queue.size();) {
    // The jobs of the highest priority left, [begin, end), as one queue per
    // user in submission order: a placement costs O(users), not O(queue).
    size_t end = begin;
    std::map<std::string, std::deque<size_t>> by_user;
    while (end < queue.size() && queue[end].priority == queue[begin].priority) by_user[queue[end].user].push_back(end++);
    begin = end;
    while (!by_user.empty()) {
      auto pick = by_user.end();
      for (auto it = by_user.begin(); it != by_user.end(); ++it) {
        if (pick == by_user.end() || slots(it->first) < slots(pick->first) ||
            (slots(it->first) == slots(pick->first) && queue[it->second.front()].seq < queue[pick->second.front()].seq)) {
          pick = it;
        }
      }
      const QueuedJob& job = queue[pick->second.front()];
      const int per_rank = std::max(1, job.slots_per_rank);
      const int smallest = ElasticSizes(job.world_size, job.min_world_size).back();
      const bool limited = share.max_running_slots_per_user > 0;
      if (limited && slots(job.user) + smallest * per_rank > share.max_running_slots_per_user) {
        by_user.erase(pick);  // held by the per-user limit: this user's jobs wait; the others go on
        continue;
      }
      GangPlan plan =
          PlanGang(job, free, limited ? (share.max_running_slots_per_user - slots(job.user)) / per_rank : 0);
      if (plan.ranks_per_worker.empty()) return plans;  // no starvation: nothing overtakes it
      const int needed = plan.world_size * per_rank;
      for (const auto& [id, ranks] : plan.ranks_per_worker) free[by_id.at(id)].free_slots -= ranks * per_rank;
      held[job.user] += needed;
      plans.push_back(std::move(plan));
      pick->second.pop_front();
      if (pick->second.empty()) by_user.erase(pick);
    }
  }
  return plans;
}

namespace {

// `free` with the slots of `victims` given back.
std::vector<FreeWorker> FreedBy(const std::vector<FreeWorker>& free, const std::vector<const RunningJob*>& victims) {
  std::vector<FreeWorker> out = free;
  for (const RunningJob* v : victims) {
    for (const auto& [worker, slots] : v->slots) {
      auto it = std::find_if(out.begin(), out.end(), [&](const FreeWorker& w) { return w.id == worker; });
      if (it == out.end()) it = out.insert(out.end(), FreeWorker{worker, v->kind, 0});
      it->free_slots += slots;
    }
  }
  return out;
}

}  // namespace

std::vector<std::string> PlanPreemption(const QueuedJob& job, const std::vector<FreeWorker>& free,
                                        const std::vector<RunningJob>& running, const PreemptionRules& rules) {
  std::vector<const RunningJob*> candidates;
  for (const RunningJob& r : running) {
    if (r.priority < job.priority && r.preemptible && r.kind == job.kind && rules.now_ms - r.started_ms >= rules.min_run_ms) {
      candidates.push_back(&r);
    }
  }
  std::sort(candidates.begin(), candidates.end(), [](const RunningJob* a, const RunningJob* b) {
    if (a->priority != b->priority) return a->priority < b->priority;
    if (a->started_ms != b->started_ms) return a->started_ms > b->started_ms;
    return a->seq > b->seq;
  });
  auto fits = [&](const std::vector<const RunningJob*>& victims) {
    return !PlanGang(job, FreedBy(free, victims)).ranks_per_worker.empty();
  };
  std::vector<const RunningJob*> victims;
  for (const RunningJob* c : candidates) {  // one that suffices alone
    if (fits({c})) {
      victims = {c};
      break;
    }
  }
  if (victims.empty()) {
    for (const RunningJob* c : candidates) {
      victims.push_back(c);
      if (fits(victims)) break;
    }
    if (!fits(victims)) return {};
    for (size_t i = victims.size(); i-- > 0;) {  // give back what the job can do without
      std::vector<const RunningJob*> without = victims;
      without.erase(without.begin() + static_cast<std::ptrdiff_t>(i));
      if (fits(without)) victims = std::move(without);
    }
  }
  std::vector<std::string> ids;
  for (const RunningJob* v : victims) ids.push_back(v->id);
  return ids;
}

std::optional<GrowPlan> PlanGrowth(const std::vector<RunningJob>& running, const std::vector<FreeWorker>& free,
                                   const std::vector<QueuedJob>& queue, const GrowthRules& rules, bool* later) {
  std::vector<const RunningJob*> candidates;
  for (const RunningJob& r : running) {
    if (r.world_size >= r.full_world_size || ElasticSizes(r.full_world_size, r.min_world_size).size() < 2) continue;
    const bool queued = std::any_of(queue.begin(), queue.end(), [&](const QueuedJob& q) { return q.kind == r.kind; });
    if (!queued) candidates.push_back(&r);
  }
  std::sort(candidates.begin(), candidates.end(), [](const RunningJob* a, const RunningJob* b) {
    return a->priority != b->priority ? a->priority > b->priority : a->seq < b->seq;
  });
  for (const RunningJob* r : candidates) {
    const std::vector<FreeWorker> freed = FreedBy(free, {r});
    QueuedJob q{r->id, r->priority, r->seq, r->kind, r->full_world_size, r->slots_per_rank, "", r->min_world_size};
    const GangPlan plan = PlanGang(q, freed);
    if (plan.world_size <= r->world_size) continue;
    if (rules.now_ms - r->started_ms < rules.min_interval_ms) {
      if (later != nullptr) *later = true;
      continue;
    }
    return GrowPlan{r->id, r->world_size, plan.world_size};
  }
  return std::nullopt;
}

}  // namespace retina::coordinator
