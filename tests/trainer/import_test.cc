// retina-shard import on benchmark-shaped inputs written by nibabel, h5py and PIL.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/tools/import.h"
#include "trainer/data/tools/pack.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/shards.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class Import : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = retina::testing::PythonMissing("numpy, h5py, nibabel, PIL");
    if (!missing.empty()) GTEST_SKIP() << missing;
    std::string out;
    ASSERT_EQ(retina::testing::RunPython("make_benchmarks.py", tmp_.path().string(), &out), 0) << out;
  }
  ImportOptions Options(const std::string& kind, int size) {
    ImportOptions o;
    o.kind = *LookupImportKind(kind);
    o.input = tmp_.path() / kind;
    o.out = tmp_.path() / "store" / "datasets" / kind;
    o.size = size;
    o.shard_images = 64;
    return o;
  }
  retina::testing::ScopedTempDir tmp_{"import-"};
};

int64_t Tiles(int64_t h, int64_t w, int64_t size) {
  return static_cast<int64_t>(PatchOrigins(std::max(h, size), size).size() * PatchOrigins(std::max(w, size), size).size());
}

TEST_F(Import, IsotropicVolumesAreSlicedAlongAllThreeAxes) {
  absl::StatusOr<ImportResult> r = ImportBenchmark(Options("urocell", 32));
  ASSERT_TRUE(r.ok()) << r.status();
  // Two 20x30x40 volumes: 20 xy (30x40), 30 xz (20x40), 40 yz (20x30) slices each.
  EXPECT_EQ(r->train_slices, 2 * (20 + 30 + 40));
  EXPECT_EQ(r->train.count, 2 * (20 * Tiles(30, 40, 32) + 30 * Tiles(20, 40, 32) + 40 * Tiles(20, 30, 32)));
  EXPECT_EQ(r->test_items, 1);
  absl::StatusOr<std::unique_ptr<ShardedDataset>> ds = ShardedDataset::Open(tmp_.path() / "store/datasets/urocell", true);
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_TRUE((*ds)->labelled());
  for (int64_t i = 0; i < (*ds)->size(); i += 37) {
    for (int k = 0; k < 32 * 32; ++k) ASSERT_LT((*ds)->mask(i)[k], 3);
  }
  // The test volume is stored unchanged.
  absl::StatusOr<RawArray> original = ReadArray((tmp_.path() / "urocell/test/images/vol0.nii.gz").string());
  absl::StatusOr<RawArray> stored = ReadArray((tmp_.path() / "store/datasets/urocell-test/item-00000.h5").string() + ":/image");
  ASSERT_TRUE(original.ok() && stored.ok()) << stored.status();
  EXPECT_EQ(original->bytes, stored->bytes);
  const nlohmann::json tj = nlohmann::json::parse(*ReadFile(tmp_.path() / "store/datasets/urocell-test/test.json"));
  EXPECT_EQ(tj["classes"], 3);
  EXPECT_EQ(tj["items"][0]["source"], "vol0.nii.gz");
}

// --val-items: the last xy slices of the split are held out whole into
// NAME-val, and no training plane shares their voxels.
TEST_F(Import, ValidationSlicesAreHeldOutOfTrainingWhole) {
  ImportOptions o = Options("urocell", 32);
  o.val_items = 25;  // volume 1 entirely (20 xy slices) and z 15..19 of volume 0
  absl::StatusOr<ImportResult> r = ImportBenchmark(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->val_slices, 25);
  EXPECT_EQ(r->val.count, 25 * Tiles(30, 40, 32));
  // Volume 0 keeps z 0..14: 15 xy, 30 xz and 40 yz planes of height 15.
  EXPECT_EQ(r->train_slices, 15 + 30 + 40);
  EXPECT_EQ(r->train.count, 15 * Tiles(30, 40, 32) + 30 * Tiles(15, 40, 32) + 40 * Tiles(15, 30, 32));
  absl::StatusOr<std::unique_ptr<ShardedDataset>> val = ShardedDataset::Open(tmp_.path() / "store/datasets/urocell-val", true);
  ASSERT_TRUE(val.ok()) << val.status();
  EXPECT_TRUE((*val)->labelled());
  EXPECT_EQ((*val)->size(), r->val.count);
  EXPECT_DOUBLE_EQ((*val)->manifest().mean, r->train.mean);
  // A fraction of 0.1 of the 40 xy slices is 4.
  ImportOptions f = Options("urocell", 32);
  f.out = tmp_.path() / "store/datasets/uro2";
  f.val_fraction = 0.1;
  absl::StatusOr<ImportResult> rf = ImportBenchmark(f);
  ASSERT_TRUE(rf.ok()) << rf.status();
  EXPECT_EQ(rf->val_slices, 4);
  // Bad values name the flag.
  ImportOptions bad = Options("urocell", 32);
  bad.out = tmp_.path() / "store/datasets/uro3";
  bad.val_items = 40;
  EXPECT_THAT(std::string(ImportBenchmark(bad).status().message()), HasSubstr("leave nothing to train on"));
  bad.val_items = 0;
  bad.val_fraction = 1.5;
  EXPECT_THAT(std::string(ImportBenchmark(bad).status().message()), HasSubstr("--val-fraction"));
}

TEST_F(Import, CremiCleftsAnd2DMasks) {
  absl::StatusOr<ImportResult> r = ImportBenchmark(Options("cremi", 32));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->train_slices, 2 * 3);  // anisotropic: xy only
  absl::StatusOr<std::unique_ptr<ShardedDataset>> ds = ShardedDataset::Open(tmp_.path() / "store/datasets/cremi", false);
  ASSERT_TRUE(ds.ok());
  int64_t ones = 0;
  for (int64_t i = 0; i < (*ds)->size(); ++i) {
    for (int k = 0; k < 32 * 32; ++k) ones += (*ds)->mask(i)[k];
  }
  EXPECT_GT(ones, 0);
  r = ImportBenchmark(Options("perez", 64));  // 48x70 PNGs padded to 64 high
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->train.count, 2 * Tiles(48, 70, 64));
}

TEST_F(Import, MismatchedOrMissingMasksAreNamed) {
  fs::remove(tmp_.path() / "perez/train/masks/img1.png");
  absl::Status s = ImportBenchmark(Options("perez", 64)).status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("img1.png: no mask"));
  ImportOptions o = Options("urocell", 32);
  o.kind.classes = 2;  // labels go up to 2
  EXPECT_THAT(std::string(ImportBenchmark(o).status().message()), HasSubstr("label 2 but urocell has 2 classes"));
  EXPECT_FALSE(LookupImportKind("snemi").ok());
}

}  // namespace
}  // namespace retina::trainer
