// Packing, shards, manifest, verification and resume, checked against an
// independent Python peer (PIL/tifffile + numpy + h5py).
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/loader.h"
#include "trainer/data/tools/pack.h"
#include "trainer/data/shards.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

class Shards : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = retina::testing::PythonMissing("numpy, h5py, tifffile, PIL");
    if (!missing.empty()) GTEST_SKIP() << missing;
    fs::create_directories(in());
    std::string out;
    ASSERT_EQ(retina::testing::RunPython("pack_peer.py", "make " + in().string(), &out), 0) << out;
  }
  fs::path in() const { return tmp_.path() / "in"; }
  PackOptions Options(const std::string& name) const {
    PackOptions o;
    o.input = in().string();
    o.out = tmp_.path() / "store" / "datasets" / name;
    o.size = 64;
    o.shard_images = 3;
    o.threads = 2;
    return o;
  }
  // Flips one pixel's lowest bit in each of `samples` (64x64 images) of a
  // shard, where h5py says its images start.
  static void FlipPixel(const fs::path& shard, std::initializer_list<int> samples) {
    std::string out;
    ASSERT_EQ(retina::testing::RunPython("pack_peer.py", "offset " + shard.string(), &out), 0) << out;
    const int64_t images = std::stoll(out);
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    for (int sample : samples) {
      f.seekp(images + sample * 64 * 64 + 10);
      const char c = static_cast<char>(f.peek());
      f.put(static_cast<char>(c ^ 0x01));
    }
  }
  retina::testing::ScopedTempDir tmp_{"shards-"};
};

TEST(PatchOrigins, CoverWithBorderAlignedLastTile) {
  EXPECT_EQ(PatchOrigins(224, 224), (std::vector<int64_t>{0}));
  EXPECT_EQ(PatchOrigins(512, 224), (std::vector<int64_t>{0, 224, 288}));
  EXPECT_EQ(PatchOrigins(448, 224), (std::vector<int64_t>{0, 224}));
  EXPECT_TRUE(PatchOrigins(100, 224).empty());
}

TEST_F(Shards, PackedShardsMatchAnIndependentCutReadByH5py) {
  absl::StatusOr<PackResult> r = PackImages(Options("ds"));
  ASSERT_TRUE(r.ok()) << r.status();
  // 64x64 -> 1, 100x70 -> 4, 64x130 -> 3, 90x90 -> 4, 64x64 -> 1, 128x64 -> 2.
  EXPECT_EQ(r->manifest.count, 15);
  EXPECT_GE(r->manifest.shards.size(), 4u);
  std::string out;
  ASSERT_EQ(retina::testing::RunPython("pack_peer.py", absl::StrCat("check ", Options("ds").out.string(), " ",
                                                                    in().string(), " 64"), &out), 0)
      << out;

  absl::StatusOr<std::unique_ptr<ShardedDataset>> ds = ShardedDataset::Open(Options("ds").out, /*verify=*/true);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->size(), 15);
  EXPECT_FALSE((*ds)->labelled());
  EXPECT_EQ((*ds)->mask(0), nullptr);
  // The last sample's pixels through the memory map equal the first shard's layout rule.
  int64_t sum = 0;
  for (int i = 0; i < 64 * 64; ++i) sum += (*ds)->image(14)[i];
  EXPECT_GT(sum, 0);
}

TEST_F(Shards, InterruptedPackResumesToTheSameDataset) {
  absl::StatusOr<PackResult> whole = PackImages(Options("whole"));
  ASSERT_TRUE(whole.ok()) << whole.status();
  PackOptions o = Options("resumed");
  o.stop_after_shards = 2;
  absl::StatusOr<PackResult> first = PackImages(o);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->finished);
  EXPECT_EQ(DatasetManifest::Load(o.out).status().code(), absl::StatusCode::kNotFound);  // not a dataset yet
  o.stop_after_shards = -1;
  absl::StatusOr<PackResult> second = PackImages(o);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->resumed_shards, 2);
  ASSERT_EQ(second->manifest.shards.size(), whole->manifest.shards.size());
  for (size_t i = 0; i < whole->manifest.shards.size(); ++i) {
    EXPECT_EQ(second->manifest.shards[i].sha256, whole->manifest.shards[i].sha256) << i;
  }
  EXPECT_DOUBLE_EQ(second->manifest.mean, whole->manifest.mean);
  EXPECT_DOUBLE_EQ(second->manifest.std, whole->manifest.std);
  // A finished dataset is not packed over.
  EXPECT_EQ(PackImages(o).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(Shards, FlippedByteIsNamedByVerify) {
  PackOptions o = Options("ds");
  ASSERT_TRUE(PackImages(o).ok());
  absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(o.out);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(VerifyDatasetChecksums(o.out, *m).ok());
  {
    std::fstream f(o.out / "shard-00001.h5", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-100, std::ios::end);
    f.put('\x5a');
  }
  absl::Status s = VerifyDatasetChecksums(o.out, *m);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("shard-00001.h5: SHA-256 mismatch"));
  EXPECT_FALSE(ShardedDataset::Open(o.out, /*verify=*/true).ok());
  fs::resize_file(o.out / "shard-00002.h5", 500);
  EXPECT_THAT(std::string(ShardedDataset::Open(o.out, false).status().message()), HasSubstr("shard-00002.h5"));
}

// Training used to read a damaged shard without noticing (the dataset is
// opened without the full SHA-256 pass): every sample is now checked against
// its crc32 as the loader copies it, and a shard without crc32 (an older
// pack) is hashed once when the dataset opens.
TEST_F(Shards, ADamagedSampleIsCaughtWhenReadAndAnOldShardWhenOpened) {
  PackOptions o = Options("ds");
  ASSERT_TRUE(PackImages(o).ok());
  const fs::path shard = o.out / "shard-00001.h5";
  FlipPixel(shard, {1});
  absl::StatusOr<std::unique_ptr<ShardedDataset>> ds = ShardedDataset::Open(o.out, /*verify=*/false);
  ASSERT_TRUE(ds.ok()) << ds.status();
  absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(o.out);
  const int64_t first = m->shards[0].count;  // dataset index of shard 1's sample 0
  EXPECT_TRUE((*ds)->CheckSample(first).ok());
  const absl::Status bad = (*ds)->CheckSample(first + 1);
  EXPECT_EQ(bad.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("shard-00001.h5: sample 1 (dataset index " + std::to_string(first + 1)));
  LoaderOptions lo;
  lo.threads = 1;
  absl::StatusOr<std::unique_ptr<Loader>> loader = Loader::Create(ds->get(), {{0, 1}, {first, first + 1}}, lo);
  ASSERT_TRUE(loader.ok());
  EXPECT_TRUE((*loader)->Next()->status.ok());
  EXPECT_EQ((*loader)->Next()->status.code(), absl::StatusCode::kDataLoss);

  // An older shard (no crc32): checked whole at open.
  PackOptions old = Options("old");
  ASSERT_TRUE(PackImages(old).ok());
  const fs::path old_shard = old.out / "shard-00000.h5";
  std::string out;
  ASSERT_EQ(retina::testing::RunPython("pack_peer.py", "strip " + old_shard.string() + " " +
                                                           (old.out / "manifest.json").string(), &out), 0) << out;
  ASSERT_TRUE(ShardedDataset::Open(old.out, false).ok());
  ASSERT_EQ(retina::testing::RunPython("pack_peer.py", "offset " + old_shard.string(), &out), 0) << out;
  {
    std::fstream f(old_shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::stoll(out) + 5);
    const char c = static_cast<char>(f.peek());
    f.put(static_cast<char>(c ^ 0x01));
  }
  const absl::Status opened = ShardedDataset::Open(old.out, false).status();
  EXPECT_EQ(opened.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(opened.message()), HasSubstr("shard-00000.h5: SHA-256"));
  EXPECT_THAT(std::string(opened.message()), HasSubstr("does not match the manifest"));
}

// Whoever changes a shard can recompute its SHA-256 in the manifest; verify
// (retina-shard verify, Open with verify) also checks every sample's CRC-32
// inside the shard, naming the shard, the sample and how many are damaged.
TEST_F(Shards, VerifyChecksEverySampleEvenWhenTheManifestHashWasRecomputed) {
  PackOptions o = Options("ds");
  ASSERT_TRUE(PackImages(o).ok());
  const fs::path shard = o.out / "shard-00001.h5";
  FlipPixel(shard, {1, 2});
  absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(o.out);
  ASSERT_TRUE(m.ok());
  absl::StatusOr<FileDigest> digest = Sha256File(shard);
  ASSERT_TRUE(digest.ok());
  m->shards[1].sha256 = digest->sha256;  // the hash recomputed over the damaged shard
  ASSERT_TRUE(WriteFileAtomic(o.out / DatasetManifest::kFileName, m->ToJson()).ok());
  ASSERT_TRUE(VerifyDatasetChecksums(o.out, *m).ok());  // the manifest alone is fooled

  absl::StatusOr<std::unique_ptr<ShardedDataset>> ds = ShardedDataset::Open(o.out, /*verify=*/false);
  ASSERT_TRUE(ds.ok()) << ds.status();
  int64_t checked = 0;
  const absl::Status all = (*ds)->CheckAllSamples(&checked);
  EXPECT_EQ(all.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(all.message()), HasSubstr("shard-00001.h5: sample 1 "));
  EXPECT_THAT(std::string(all.message()), HasSubstr("(2 damaged samples in this shard)"));
  EXPECT_EQ(checked, (*ds)->size());
  const absl::Status opened = ShardedDataset::Open(o.out, /*verify=*/true).status();
  EXPECT_EQ(opened.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(opened.message()), HasSubstr("shard-00001.h5: sample 1 "));
}

// A shard whose crc32 dataset keeps its values in an external raw file
// (rewritten with h5py, the manifest hash recomputed) would have had
// another file's bytes echoed in verify's messages: a shard's datasets
// must be stored in the shard.
TEST_F(Shards, AShardsDatasetsMustBeStoredInTheShard) {
  PackOptions o = Options("ds");
  ASSERT_TRUE(PackImages(o).ok());
  const fs::path shard = o.out / "shard-00000.h5";
  const fs::path secret = tmp_.path() / "secret.raw";
  ASSERT_TRUE(WriteFileAtomic(secret, std::string(64, 's')).ok());
  const std::string code =
      "import h5py, sys; f = h5py.File(sys.argv[1], 'a'); n = f['crc32'].shape[0]; del f['crc32']; "
      "f.create_dataset('crc32', (n,), 'u4', external=[(sys.argv[2].encode(), 0, 4 * n)]); f.close()";
  const std::string cmd = retina::testing::Python() + " -c \"" + code + "\" " + shard.string() + " " + secret.string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(o.out);
  ASSERT_TRUE(m.ok());
  absl::StatusOr<FileDigest> digest = Sha256File(shard);
  ASSERT_TRUE(digest.ok());
  m->shards[0].sha256 = digest->sha256;
  m->shards[0].bytes = digest->size;
  ASSERT_TRUE(WriteFileAtomic(o.out / DatasetManifest::kFileName, m->ToJson()).ok());
  const absl::Status opened = ShardedDataset::Open(o.out, /*verify=*/true).status();
  EXPECT_EQ(opened.code(), absl::StatusCode::kDataLoss) << opened;
  EXPECT_THAT(std::string(opened.message()), HasSubstr("crc32: not a dataset stored in the shard"));
  EXPECT_THAT(std::string(opened.message()), Not(HasSubstr("73737373")));
}

TEST_F(Shards, BadInputsAreNamedOrSkippedOnRequest) {
  ASSERT_TRUE(WriteFileAtomic(in() / "zz-broken.png", "\x89PNG\r\n\x1a\n garbage").ok());
  absl::StatusOr<PackResult> r = PackImages(Options("bad"));
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("zz-broken.png"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("--skip-bad"));
  PackOptions o = Options("skipping");
  o.skip_bad = true;
  r = PackImages(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->skipped, 1);
  EXPECT_EQ(r->manifest.count, 15);
  PackOptions big = Options("toolarge");
  big.size = 96;  // several inputs are smaller than 96
  EXPECT_THAT(std::string(PackImages(big).status().message()), HasSubstr("smaller than the 96x96 patch"));
  PackOptions empty = Options("empty");
  empty.input = (tmp_.path() / "nothing-here").string();
  EXPECT_EQ(PackImages(empty).status().code(), absl::StatusCode::kNotFound);
}

TEST(DatasetManifest, RejectsInconsistentJson) {
  EXPECT_THAT(std::string(DatasetManifest::FromJson("{", "m.json").status().message()), HasSubstr("m.json: not valid JSON"));
  EXPECT_THAT(std::string(DatasetManifest::FromJson(R"({"format":"x"})", "m.json").status().message()),
              HasSubstr("format is 'x'"));
  DatasetManifest m;
  m.name = "d";
  m.height = m.width = 4;
  m.count = 3;
  m.shards.push_back({"shard-00000.h5", 2, 10, std::string(64, 'a')});
  EXPECT_THAT(std::string(DatasetManifest::FromJson(m.ToJson(), "m.json").status().message()),
              HasSubstr("count 3 != sum of shard counts 2"));
  m.count = 2;
  EXPECT_TRUE(DatasetManifest::FromJson(m.ToJson(), "m.json").ok());
}

TEST(DatasetNames, ResolveInTheStoreAndNeverEscapeIt) {
  EXPECT_EQ(*ResolveDataset("em", "/s", "data.dataset"), std::filesystem::path("/s/datasets/em"));
  EXPECT_EQ(*ResolveDataset("/data/em", "/s", "data.dataset"), std::filesystem::path("/data/em"));
  for (const char* bad : {"..", ".", "", ".hidden"}) {
    const absl::Status s = ResolveDataset(bad, "/s", "data.val_dataset").status();
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << bad;
    EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("data.val_dataset")) << bad;
  }
}

}  // namespace
}  // namespace retina::trainer
