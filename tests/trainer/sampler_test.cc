#include "trainer/data/sampler.h"

#include <map>
#include <random>
#include <set>

#include <gtest/gtest.h>

namespace retina::trainer {
namespace {

std::vector<DistributedSampler> Ranks(int64_t n, uint64_t seed, int world) {
  std::vector<DistributedSampler> out;
  for (int r = 0; r < world; ++r) out.push_back(*DistributedSampler::Create(n, seed, world, r));
  return out;
}

TEST(EpochPermutation, DeterministicAndVaried) {
  const std::vector<int64_t> a = EpochPermutation(1000, 7, 3);
  EXPECT_EQ(a, EpochPermutation(1000, 7, 3));
  EXPECT_NE(a, EpochPermutation(1000, 7, 4));
  EXPECT_NE(a, EpochPermutation(1000, 8, 3));
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  // Element 0 lands in each tenth of the order about equally often.
  std::vector<int> hist(10, 0);
  for (int e = 0; e < 2000; ++e) {
    const std::vector<int64_t> p = EpochPermutation(100, 1, e);
    hist[(std::find(p.begin(), p.end(), 0) - p.begin()) / 10]++;
  }
  for (int h : hist) EXPECT_NEAR(h, 200, 60);
}

TEST(DistributedSampler, RanksPartitionTheEpoch) {
  for (int world : {1, 3, 4, 7}) {
    auto ranks = Ranks(100, 5, world);
    std::multiset<int64_t> seen;
    const int64_t per = ranks[0].per_rank();
    for (auto& s : ranks) {
      EXPECT_EQ(s.per_rank(), per);
      for (int64_t i : s.indices()) seen.insert(i);
    }
    EXPECT_EQ(static_cast<int64_t>(seen.size()), per * world);
    EXPECT_EQ(per, (100 + world - 1) / world);
    std::set<int64_t> distinct(seen.begin(), seen.end());
    EXPECT_EQ(distinct.size(), 100u) << "world " << world;  // all samples, repeats only from padding
    EXPECT_LT(seen.size() - distinct.size(), static_cast<size_t>(world));
  }
  EXPECT_FALSE(DistributedSampler::Create(0, 1, 1, 0).ok());
  EXPECT_FALSE(DistributedSampler::Create(10, 1, 2, 2).ok());
}

TEST(DistributedSampler, ResumeOnAnyWorldSizeSeesExactlyTheUnseen) {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t n = 50 + rng() % 200;
    const int w1 = 1 + rng() % 6, w2 = 1 + rng() % 6;
    const int64_t batch = 1 + rng() % 4;
    auto ranks = Ranks(n, 11, w1);
    ranks[0].NextEpoch();  // epoch 1, to exercise the epoch in the state
    for (int r = 1; r < w1; ++r) ranks[r].NextEpoch();
    std::set<int64_t> consumed;
    const int64_t steps = rng() % (ranks[0].per_rank() / batch + 1);
    for (int64_t s = 0; s < steps; ++s) {
      for (auto& r : ranks) for (int64_t i : r.Next(batch)) consumed.insert(i);
    }
    // Every rank reports the same state; it is all a resumed run needs.
    const SamplerState state = ranks[0].state();
    for (auto& r : ranks) EXPECT_EQ(r.state().offset, state.offset);
    EXPECT_EQ(state.epoch, 1);

    auto resumed = Ranks(n, 11, w2);
    std::set<int64_t> rest;
    for (auto& r : resumed) {
      ASSERT_TRUE(r.Restore(state).ok());
      for (int64_t i : r.indices()) rest.insert(i);
    }
    // Consumed + rest = everything; they overlap only where the old epoch's
    // padding repeated samples (only possible once the epoch had ended).
    std::set<int64_t> all = consumed;
    all.insert(rest.begin(), rest.end());
    EXPECT_EQ(static_cast<int64_t>(all.size()), n) << "trial " << trial;
    if (state.offset < n) {
      for (int64_t i : rest) EXPECT_FALSE(consumed.count(i)) << "sample " << i << " seen twice, trial " << trial;
    }
  }
}

TEST(DistributedSampler, RestoreValidates) {
  auto s = *DistributedSampler::Create(10, 1, 2, 0);
  EXPECT_FALSE(s.Restore({0, 11}).ok());
  EXPECT_FALSE(s.Restore({-1, 0}).ok());
  EXPECT_TRUE(s.Restore({2, 10}).ok());
  EXPECT_TRUE(s.EpochDone());
  s.NextEpoch();
  EXPECT_EQ(s.state().epoch, 3);
  EXPECT_EQ(s.per_rank(), 5);
}

// Elastic gangs: a W-rank run that shrinks to w ranks (w | W, a = W / w
// micro-batches per step) and grows back, resuming at step boundaries, gives
// every virtual rank v = m w + r exactly the samples, in order, that rank v
// of the uninterrupted W-rank run takes at the same step: the same batches,
// split the same way, and so nothing repeated or skipped across a resize.
TEST(DistributedSampler, ElasticResizesGiveEveryVirtualRankTheUninterruptedRunsBatch) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 30; ++trial) {
    const std::vector<int> fulls = {2, 4, 6, 8};
    const int full = fulls[rng() % fulls.size()];
    std::vector<int> divisors;
    for (int w = 1; w <= full; ++w) if (full % w == 0) divisors.push_back(w);
    const int64_t b = 1 + rng() % 3, global = b * full;
    const int64_t n = global * (3 + rng() % 4) + rng() % global;  // a partial last batch is dropped
    const int64_t steps = n / global * 2;                        // two epochs
    // The uninterrupted run: batches[step][v].
    std::vector<std::vector<std::vector<int64_t>>> expected;
    {
      auto ranks = Ranks(n, 5, full);
      for (int64_t s = 0; s < steps; ++s) {
        if (ranks[0].per_rank() < b || ranks[0].state().offset + global > n) for (auto& r : ranks) r.NextEpoch();
        expected.emplace_back();
        for (auto& r : ranks) expected.back().push_back(r.Next(b));
      }
    }
    // The elastic run: a new world size every few steps, resumed from the state.
    SamplerState state;
    int64_t s = 0;
    while (s < steps) {
      const int w = divisors[rng() % divisors.size()];
      const int64_t a = full / w;
      auto ranks = Ranks(n, 5, w);
      for (auto& r : ranks) ASSERT_TRUE(r.Restore(state).ok());
      for (int64_t k = 0, until = std::min<int64_t>(steps, s + 1 + rng() % 3); s < until; ++s, ++k) {
        if (ranks[0].per_rank() < b * a || ranks[0].state().offset + global > n) for (auto& r : ranks) r.NextEpoch();
        for (int r = 0; r < w; ++r) {
          const std::vector<int64_t> order = MicroBatchOrder(ranks[r].Next(b * a), a);
          for (int64_t m = 0; m < a; ++m) {
            const std::vector<int64_t> micro(order.begin() + m * b, order.begin() + (m + 1) * b);
            EXPECT_EQ(micro, expected[s][VirtualRank(r, w, static_cast<int>(m))])
                << "trial " << trial << ", step " << s << ", " << w << " of " << full << " ranks, micro-batch " << m;
          }
        }
      }
      state = ranks[0].state();
    }
  }
}

}  // namespace
}  // namespace retina::trainer
