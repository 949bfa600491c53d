// The gang scheduler's policy (services/coordinator/placement.h), table by
// table, with no coordinator, network or clock.
#include "services/coordinator/placement.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace retina::coordinator {
namespace {

using Plan = std::vector<std::pair<std::string, int>>;

FreeWorker Cpu(const std::string& id, int free) { return {id, SlotKind::kCpu, free}; }
FreeWorker Gpu(const std::string& id, int free) { return {id, SlotKind::kGpu, free}; }
QueuedJob Job(const std::string& id, int world, int priority = 0, int64_t seq = 0, int per_rank = 1,
              SlotKind kind = SlotKind::kCpu) {
  return {id, priority, seq, kind, world, per_rank};
}

struct GangCase {
  const char* what;
  QueuedJob job;
  std::vector<FreeWorker> free;
  Plan expected;  // empty: does not fit
};

TEST(Placement, OneGangTableOfFitsAndMisfits) {
  const std::vector<GangCase> cases = {
      {"fits on one worker", Job("a", 2), {Cpu("w1", 4)}, {{"w1", 2}}},
      {"best fit: the fullest worker that suffices, not the emptiest",
       Job("a", 2), {Cpu("w1", 8), Cpu("w2", 2), Cpu("w3", 3)}, {{"w2", 2}}},
      {"fewest workers: largest first, then the best fit for the rest",
       Job("a", 7), {Cpu("w1", 2), Cpu("w2", 5), Cpu("w3", 3), Cpu("w4", 2)}, {{"w2", 5}, {"w1", 2}}},
      {"gang: all ranks or none", Job("a", 5), {Cpu("w1", 2), Cpu("w2", 2)}, {}},
      {"exactly the capacity", Job("a", 4), {Cpu("w1", 2), Cpu("w2", 2)}, {{"w1", 2}, {"w2", 2}}},
      {"slots_per_rank: 3 free slots hold one 2-slot rank", Job("a", 2, 0, 0, 2), {Cpu("w1", 3), Cpu("w2", 3)},
       {{"w1", 1}, {"w2", 1}}},
      {"slots_per_rank: too few whole ranks", Job("a", 3, 0, 0, 2), {Cpu("w1", 3), Cpu("w2", 3)}, {}},
      {"slot type: GPU jobs only on GPU workers", Job("g", 2, 0, 0, 1, SlotKind::kGpu), {Cpu("c1", 8), Gpu("g1", 2)},
       {{"g1", 2}}},
      {"slot type: no GPU worker", Job("g", 1, 0, 0, 1, SlotKind::kGpu), {Cpu("c1", 8)}, {}},
      {"ties broken by worker id", Job("a", 1), {Cpu("w2", 1), Cpu("w1", 1)}, {{"w1", 1}}},
      {"no workers", Job("a", 1), {}, {}},
  };
  for (const GangCase& c : cases) {
    EXPECT_EQ(PlanGang(c.job, c.free).ranks_per_worker, c.expected) << c.what;
  }
}

TEST(Placement, APassOrdersByPriorityThenSubmissionAndAccountsEachPlan) {
  // b (priority 5) first, then a and c in submission order; each takes its share.
  const std::vector<GangPlan> plans =
      PlanPass({Job("a", 2, 0, 1), Job("b", 2, 5, 3), Job("c", 2, 0, 2)}, {Cpu("w1", 4), Cpu("w2", 2)});
  ASSERT_EQ(plans.size(), 3u);
  EXPECT_EQ(plans[0].job_id, "b");
  EXPECT_EQ(plans[0].ranks_per_worker, (Plan{{"w2", 2}}));  // best fit leaves w1 whole
  EXPECT_EQ(plans[1].job_id, "a");
  EXPECT_EQ(plans[1].ranks_per_worker, (Plan{{"w1", 2}}));
  EXPECT_EQ(plans[2].job_id, "c");
  EXPECT_EQ(plans[2].ranks_per_worker, (Plan{{"w1", 2}}));
}

TEST(Placement, AJobThatDoesNotFitIsNotOvertakenBySmallerOnes) {
  // big (first in order) needs 6 of 4 free: the pass ends, small waits behind it.
  std::vector<GangPlan> plans = PlanPass({Job("big", 6, 0, 1), Job("small", 1, 0, 2)}, {Cpu("w1", 4)});
  EXPECT_TRUE(plans.empty());
  // A higher priority still goes first; then the same rule holds.
  plans = PlanPass({Job("big", 6, 0, 1), Job("small", 1, 0, 2), Job("urgent", 2, 9, 3)}, {Cpu("w1", 4)});
  ASSERT_EQ(plans.size(), 1u);
  EXPECT_EQ(plans[0].job_id, "urgent");
  // Once slots free up, big goes before small.
  plans = PlanPass({Job("big", 6, 0, 1), Job("small", 1, 0, 2)}, {Cpu("w1", 4), Cpu("w2", 3)});
  ASSERT_EQ(plans.size(), 2u);
  EXPECT_EQ(plans[0].job_id, "big");
  EXPECT_EQ(plans[0].ranks_per_worker, (Plan{{"w1", 4}, {"w2", 2}}));
  EXPECT_EQ(plans[1].job_id, "small");
  EXPECT_EQ(plans[1].ranks_per_worker, (Plan{{"w2", 1}}));
}

TEST(Placement, FragmentationIsKeptLowSoALargeGangStillFitsLater) {
  // Two 1-rank jobs on {4, 1, 1}: best fit puts them on the 1-slot workers,
  // leaving the 4-slot worker whole for the 4-rank job behind them.
  const std::vector<GangPlan> plans =
      PlanPass({Job("s1", 1, 0, 1), Job("s2", 1, 0, 2), Job("big", 4, 0, 3)}, {Cpu("w1", 4), Cpu("w2", 1), Cpu("w3", 1)});
  ASSERT_EQ(plans.size(), 3u);
  EXPECT_EQ(plans[0].ranks_per_worker, (Plan{{"w2", 1}}));
  EXPECT_EQ(plans[1].ranks_per_worker, (Plan{{"w3", 1}}));
  EXPECT_EQ(plans[2].ranks_per_worker, (Plan{{"w1", 4}}));
}

QueuedJob UserJob(const std::string& id, const std::string& user, int world, int64_t seq, int priority = 0) {
  QueuedJob j = Job(id, world, priority, seq);
  j.user = user;
  return j;
}

std::vector<std::string> Order(const std::vector<GangPlan>& plans) {
  std::vector<std::string> ids;
  for (const GangPlan& p : plans) ids.push_back(p.job_id);
  return ids;
}

TEST(Placement, FairShareAlternatesUsersAtEqualPriority) {
  // alice queued three jobs before bob's one; 3 slots: a1, then bob (he holds
  // nothing, alice 1 slot), then a2.
  const std::vector<GangPlan> plans =
      PlanPass({UserJob("a1", "alice", 1, 1), UserJob("a2", "alice", 1, 2), UserJob("a3", "alice", 1, 3),
                UserJob("b1", "bob", 1, 4)},
               {Cpu("w1", 3)});
  EXPECT_EQ(Order(plans), (std::vector<std::string>{"a1", "b1", "a2"}));
  // Slots already running count: alice holds 4, so bob's later job goes first.
  FairShare share;
  share.running_slots["alice"] = 4;
  EXPECT_EQ(Order(PlanPass({UserJob("a1", "alice", 1, 1), UserJob("b1", "bob", 1, 2)}, {Cpu("w1", 1)}, share)),
            (std::vector<std::string>{"b1"}));
  // Priority still comes first: alice's urgent job beats bob's.
  EXPECT_EQ(Order(PlanPass({UserJob("a1", "alice", 1, 1, 5), UserJob("b1", "bob", 1, 2)}, {Cpu("w1", 1)}, share)),
            (std::vector<std::string>{"a1"}));
  // Without users (one user) the order is the plain submission order.
  EXPECT_EQ(Order(PlanPass({Job("x", 1, 0, 2), Job("y", 1, 0, 1)}, {Cpu("w1", 2)})),
            (std::vector<std::string>{"y", "x"}));
}

TEST(Placement, PerUserRunningSlotLimitHoldsThatUserOnly) {
  FairShare share;
  share.max_running_slots_per_user = 2;
  share.running_slots["alice"] = 1;
  // alice's 2-rank job would take her to 3 > 2: held; bob's jobs go on.
  std::vector<GangPlan> plans = PlanPass(
      {UserJob("a1", "alice", 2, 1), UserJob("b1", "bob", 2, 2), UserJob("b2", "bob", 1, 3)}, {Cpu("w1", 8)}, share);
  EXPECT_EQ(Order(plans), (std::vector<std::string>{"b1"})) << "b2 would take bob past 2 too";
  // Within the limit alice runs; the pass counts what it places.
  share.running_slots.clear();
  plans = PlanPass({UserJob("a1", "alice", 1, 1), UserJob("a2", "alice", 1, 2), UserJob("a3", "alice", 1, 3)},
                   {Cpu("w1", 8)}, share);
  EXPECT_EQ(Order(plans), (std::vector<std::string>{"a1", "a2"}));
}

TEST(Placement, TheFairShareHeadThatDoesNotFitEndsThePass) {
  // bob holds nothing, so his 6-rank job is next; it does not fit in 4: the
  // pass ends and alice's small job does not overtake it (no starvation).
  FairShare share;
  share.running_slots["alice"] = 2;
  EXPECT_TRUE(PlanPass({UserJob("a1", "alice", 1, 1), UserJob("b1", "bob", 6, 2)}, {Cpu("w1", 4)}, share).empty());
}

// Priority preemption, table by table: which running jobs are stopped so
// that a higher-priority job fits (issue 32). Two workers of 4 CPU slots,
// full unless a case frees some; the clock is at 10 000 ms, minimum run
// 1 000 ms unless a case says otherwise.
RunningJob Running(const std::string& id, int priority, int64_t started_ms, Plan slots, int64_t seq = 0,
                   bool preemptible = true, SlotKind kind = SlotKind::kCpu) {
  return {id, priority, seq, started_ms, kind, preemptible, std::move(slots)};
}

struct PreemptCase {
  const char* what;
  QueuedJob job;
  std::vector<FreeWorker> free;
  std::vector<RunningJob> running;
  std::vector<std::string> victims;  // in the order chosen; empty: nothing is preempted
  int64_t min_run_ms = 1000;
};

TEST(Placement, PreemptionStopsTheFewestLowestPriorityMostRecentJobsThatMakeRoom) {
  const std::vector<PreemptCase> cases = {
      {"no lower priority: nothing", Job("hi", 2, 5), {}, {Running("a", 5, 0, {{"w1", 4}}), Running("b", 7, 0, {{"w2", 4}})}, {}},
      {"one low-priority job frees enough", Job("hi", 2, 5), {}, {Running("a", 0, 0, {{"w1", 4}}), Running("b", 9, 0, {{"w2", 4}})}, {"a"}},
      {"of two that suffice, the most recently started (least work lost)", Job("hi", 2, 5), {},
       {Running("old", 0, 1000, {{"w1", 4}}), Running("new", 0, 5000, {{"w2", 4}})}, {"new"}},
      {"the lowest priority first, even if it started earlier", Job("hi", 2, 5), {},
       {Running("p1", 1, 1000, {{"w1", 4}}), Running("p3", 3, 5000, {{"w2", 4}})}, {"p1"}},
      {"minimum run time: a job started 500 ms ago is spared", Job("hi", 2, 5), {},
       {Running("young", 0, 9500, {{"w1", 4}}), Running("older", 0, 2000, {{"w2", 4}})}, {"older"}},
      {"preemptible: false is spared", Job("hi", 2, 5), {},
       {Running("pinned", 0, 5000, {{"w1", 4}}, 1, false), Running("other", 1, 2000, {{"w2", 4}})}, {"other"}},
      {"a GPU job never frees CPU slots", Job("hi", 2, 5), {},
       {Running("gpu", 0, 5000, {{"g1", 4}}, 1, true, SlotKind::kGpu), Running("cpu", 1, 2000, {{"w2", 4}})}, {"cpu"}},
      {"two small jobs on one worker free a whole gang of 4", Job("hi", 4, 5), {},
       {Running("s1", 0, 3000, {{"w1", 2}}), Running("s2", 0, 4000, {{"w1", 2}}), Running("keep", 9, 0, {{"w2", 4}})},
       {"s2", "s1"}},
      {"free slots count: one victim with the 2 already free", Job("hi", 4, 5), {Cpu("w2", 2)},
       {Running("x", 0, 4000, {{"w2", 2}}), Running("y", 0, 3000, {{"w1", 4}})}, {"x"}},
      {"irreducible: a victim taken first is given back when a later one alone suffices", Job("hi", 6, 5), {},
       {Running("tiny", 0, 8000, {{"w1", 1}}), Running("mid", 1, 3000, {{"w1", 3}}), Running("big", 2, 3000, {{"w2", 4}})},
       {"mid", "big"}},
      {"even all candidates are not enough: nothing", Job("hi", 8, 5), {},
       {Running("a", 0, 3000, {{"w1", 4}}), Running("keep", 5, 0, {{"w2", 4}})}, {}},
      {"equal priority is never preempted", Job("hi", 2, 5), {}, {Running("same", 5, 3000, {{"w1", 4}})}, {}},
      {"no minimum run time: the youngest goes", Job("hi", 2, 5), {},
       {Running("young", 0, 9999, {{"w1", 4}}), Running("older", 0, 2000, {{"w2", 4}})}, {"young"}, 0},
  };
  for (const PreemptCase& c : cases) {
    PreemptionRules rules;
    rules.now_ms = 10000;
    rules.min_run_ms = c.min_run_ms;
    EXPECT_EQ(PlanPreemption(c.job, c.free, c.running, rules), c.victims) << c.what;
  }
}

QueuedJob Elastic(const std::string& id, int world, int min, int priority = 0, int64_t seq = 0) {
  QueuedJob j = Job(id, world, priority, seq);
  j.min_world_size = min;
  return j;
}

TEST(Placement, ElasticSizesAreTheMultiplesOfTheMinimumThatDivideTheWorldSize) {
  EXPECT_EQ(ElasticSizes(8, 2), (std::vector<int>{8, 4, 2}));
  EXPECT_EQ(ElasticSizes(6, 2), (std::vector<int>{6, 2}));  // 4 does not divide 6
  EXPECT_EQ(ElasticSizes(12, 3), (std::vector<int>{12, 6, 3}));
  EXPECT_EQ(ElasticSizes(4, 1), (std::vector<int>{4, 2, 1}));
  EXPECT_EQ(ElasticSizes(4, 4), (std::vector<int>{4}));
  EXPECT_EQ(ElasticSizes(4, 0), (std::vector<int>{4}));
  EXPECT_EQ(ElasticSizes(4, 3), (std::vector<int>{4}));  // refused at submission; never a partial size
}

TEST(Placement, AnElasticJobIsPlacedAtItsLargestSizeThatFits) {
  const std::vector<GangCase> cases = {
      {"all 8 fit: full size", Elastic("e", 8, 2), {Cpu("w1", 4), Cpu("w2", 4)}, {{"w1", 4}, {"w2", 4}}},
      {"7 free: 4, not 7 (7 does not divide 8)", Elastic("e", 8, 2), {Cpu("w1", 4), Cpu("w2", 3)}, {{"w1", 4}}},
      {"3 free: the minimum 2", Elastic("e", 8, 2), {Cpu("w1", 3)}, {{"w1", 2}}},
      {"below the minimum: not placed", Elastic("e", 8, 2), {Cpu("w1", 1)}, {}},
      {"not elastic: all or nothing", Job("a", 8), {Cpu("w1", 4), Cpu("w2", 3)}, {}},
  };
  for (const GangCase& c : cases) {
    const GangPlan plan = PlanGang(c.job, c.free);
    EXPECT_EQ(plan.ranks_per_worker, c.expected) << c.what;
    int ranks = 0;
    for (const auto& [w, n] : c.expected) ranks += n;
    if (!c.expected.empty()) EXPECT_EQ(plan.world_size, ranks) << c.what;
  }
  // In a pass, the per-user limit caps the size instead of holding the job.
  FairShare share;
  share.max_running_slots_per_user = 5;
  share.running_slots["alice"] = 1;
  const std::vector<GangPlan> plans = PlanPass({Elastic("e", 8, 2)}, {Cpu("w1", 8)}, share);
  ASSERT_EQ(plans.size(), 1u);
  EXPECT_EQ(plans[0].world_size, 4) << "alice holds 1 of her 5 slots: 8 ranks would exceed them, 4 do not";
}

RunningJob ElasticRunning(const std::string& id, int world, int full, int min, int64_t started,
                          std::vector<std::pair<std::string, int>> slots, int priority = 0, int64_t seq = 0) {
  RunningJob r = Running(id, priority, started, std::move(slots));
  r.seq = seq;
  r.world_size = world;
  r.full_world_size = full;
  r.min_world_size = min;
  return r;
}

struct GrowCase {
  const char* what;
  std::vector<RunningJob> running;
  std::vector<FreeWorker> free;
  std::vector<QueuedJob> queue;
  std::string job;  // "" when none grows
  int to = 0;
  bool later = false;
};

TEST(Placement, GrowthTakesOnlyIdleSlotsAfterTheIntervalToTheLargestSizeThatFits) {
  const std::vector<GrowCase> cases = {
      {"2 of 4 running, 2 idle: grows to 4", {ElasticRunning("e", 2, 4, 2, 0, {{"w1", 2}})}, {Cpu("w2", 2)}, {}, "e", 4},
      {"1 idle slot: 3 does not divide 4, nothing", {ElasticRunning("e", 2, 4, 2, 0, {{"w1", 2}})}, {Cpu("w2", 1)}, {}, "", 0},
      {"2 of 8 with 3 idle: to 4 (the largest that fits)", {ElasticRunning("e", 2, 8, 2, 0, {{"w1", 2}})},
       {Cpu("w2", 3)}, {}, "e", 4},
      {"a queued CPU job has the first claim: nothing", {ElasticRunning("e", 2, 4, 2, 0, {{"w1", 2}})}, {Cpu("w2", 2)},
       {Job("q", 4)}, "", 0},
      {"a queued GPU job does not block a CPU job's growth", {ElasticRunning("e", 2, 4, 2, 0, {{"w1", 2}})},
       {Cpu("w2", 2)}, {Job("g", 1, 0, 0, 1, SlotKind::kGpu)}, "e", 4},
      {"under the interval: not yet, plan again", {ElasticRunning("e", 2, 4, 2, 9000, {{"w1", 2}})}, {Cpu("w2", 2)}, {},
       "", 0, true},
      {"at full size: nothing", {ElasticRunning("e", 4, 4, 2, 0, {{"w1", 4}})}, {Cpu("w2", 4)}, {}, "", 0},
      {"not elastic: nothing", {Running("a", 0, 0, {{"w1", 2}})}, {Cpu("w2", 2)}, {}, "", 0},
      {"two candidates: the higher priority first",
       {ElasticRunning("lo", 2, 4, 2, 0, {{"w1", 2}}, 0, 1), ElasticRunning("hi", 2, 4, 2, 0, {{"w3", 2}}, 3, 2)},
       {Cpu("w2", 2)}, {}, "hi", 4},
  };
  for (const GrowCase& c : cases) {
    GrowthRules rules;
    rules.now_ms = 10000;
    rules.min_interval_ms = 5000;
    bool later = false;
    const std::optional<GrowPlan> plan = PlanGrowth(c.running, c.free, c.queue, rules, &later);
    EXPECT_EQ(plan ? plan->job_id : "", c.job) << c.what;
    if (plan) EXPECT_EQ(plan->to, c.to) << c.what;
    EXPECT_EQ(later, c.later) << c.what;
  }
}

}  // namespace
}  // namespace retina::coordinator
