#include "trainer/data/loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/sampler.h"

namespace retina::trainer {
namespace {

// A labelled dataset whose sample i has every pixel = i % 251 and mask = i % 3.
std::unique_ptr<ShardedDataset> MakeDataset(const std::filesystem::path& dir, int64_t n, int64_t per_shard) {
  EXPECT_TRUE(CreateDirectories(dir).ok());
  DatasetManifest m;
  m.name = "t";
  m.labelled = true;
  m.height = 8;
  m.width = 6;
  for (int64_t first = 0; first < n; first += per_shard) {
    ShardContents c;
    c.height = 8;
    c.width = 6;
    for (int64_t i = first; i < std::min(n, first + per_shard); ++i) {
      c.images.insert(c.images.end(), 48, static_cast<uint8_t>(i % 251));
      c.masks.insert(c.masks.end(), 48, static_cast<uint8_t>(i % 3));
      c.names.push_back(std::to_string(i));
    }
    absl::StatusOr<ShardInfo> info = WriteShard(dir / ("shard-" + std::to_string(m.shards.size()) + ".h5"), c);
    EXPECT_TRUE(info.ok()) << info.status();
    m.shards.push_back(*info);
    m.count += c.count();
  }
  EXPECT_TRUE(WriteFileAtomic(dir / DatasetManifest::kFileName, m.ToJson()).ok());
  absl::StatusOr<std::unique_ptr<ShardedDataset>> ds = ShardedDataset::Open(dir, true);
  EXPECT_TRUE(ds.ok()) << ds.status();
  return std::move(*ds);
}

TEST(Loader, DeliversEveryBatchInOrderWithTheRightPixels) {
  retina::testing::ScopedTempDir tmp("loader-");
  auto ds = MakeDataset(tmp.path() / "d", 103, 17);
  auto sampler = *DistributedSampler::Create(ds->size(), 4, 1, 0);
  std::vector<std::vector<int64_t>> batches;
  while (sampler.per_rank() >= 8) batches.push_back(sampler.Next(8));  // drop last
  LoaderOptions o;
  o.threads = 3;
  o.prefetch = 2;
  o.with_masks = true;
  auto loader = Loader::Create(ds.get(), batches, o);
  ASSERT_TRUE(loader.ok()) << loader.status();
  int64_t k = 0;
  while (std::optional<RawBatch> b = (*loader)->Next()) {
    ASSERT_EQ(b->index, k);
    ASSERT_EQ(b->samples, batches[k]);
    for (size_t i = 0; i < b->samples.size(); ++i) {
      const int64_t s = b->samples[i];
      EXPECT_TRUE(torch::all(b->images[i] == static_cast<uint8_t>(s % 251)).item<bool>()) << s;
      EXPECT_TRUE(torch::all(b->masks[i] == static_cast<uint8_t>(s % 3)).item<bool>()) << s;
    }
    ++k;
  }
  EXPECT_EQ(k, 12);  // 103 / 8, last partial batch dropped
  EXPECT_FALSE((*loader)->Next().has_value());
  EXPECT_GE((*loader)->wait_seconds(), 0.0);
}

TEST(Loader, StopsCleanlyMidEpochAndValidates) {
  retina::testing::ScopedTempDir tmp("loader-");
  auto ds = MakeDataset(tmp.path() / "d", 40, 40);
  std::vector<std::vector<int64_t>> batches(50, std::vector<int64_t>{1, 2, 3});
  {
    auto loader = Loader::Create(ds.get(), batches, LoaderOptions{});
    ASSERT_TRUE(loader.ok());
    ASSERT_TRUE((*loader)->Next().has_value());
  }  // destroyed with workers blocked on a full window: must not hang
  EXPECT_EQ(Loader::Create(ds.get(), {{0, 40}}, LoaderOptions{}).status().code(), absl::StatusCode::kOutOfRange);
  LoaderOptions bad;
  bad.threads = 0;
  EXPECT_FALSE(Loader::Create(ds.get(), batches, bad).ok());
}

}  // namespace
}  // namespace retina::trainer
