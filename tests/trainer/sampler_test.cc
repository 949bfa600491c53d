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

}  // namespace
}  // namespace retina::trainer
