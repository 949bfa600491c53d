// The annotation loop's parts (docs/evaluation.md "The annotation loop"):
// the uncertainty map's definition and its OME-Zarr (read by python3-zarr),
// the suggestions' diversity rule, versioned labelled datasets that refuse
// bad blocks and never change an earlier version, kind: loop end to end with
// its resume, and loop studies' plan and tests at every budget.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/dataset_manifest.h"
#include "common/file_util.h"
#include "common/job_config.h"
#include "common/records.h"
#include "common/study/study.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"
#include "trainer/data/shards.h"
#include "trainer/data/tools/import.h"
#include "trainer/data/tools/synth.h"
#include "trainer/engine/run.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/prediction/inference.h"
#include "trainer/prediction/suggest.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// --- the uncertainty map's definition, in float64 ------------------------------
TEST(Uncertainty, NormalisedEntropyIsTheStatedDefinition) {
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  // Three classes, four voxels: uniform, certain, two-way split, skewed.
  const torch::Tensor p = torch::tensor({1.0 / 3, 1.0, 0.5, 0.7, 1.0 / 3, 0.0, 0.5, 0.2, 1.0 / 3, 0.0, 0.0, 0.1}, opts)
                              .reshape({3, 4});
  const torch::Tensor h = NormalisedEntropy(p);
  auto entropy = [](std::vector<double> q) {
    double s = 0;
    for (double x : q) s -= x > 0 ? x * std::log(x) : 0;
    return s / std::log(3.0);
  };
  EXPECT_NEAR(h[0].item<double>(), 1.0, 1e-15);
  EXPECT_EQ(h[1].item<double>(), 0.0);
  EXPECT_NEAR(h[2].item<double>(), entropy({0.5, 0.5, 0}), 1e-15);
  EXPECT_NEAR(h[3].item<double>(), entropy({0.7, 0.2, 0.1}), 1e-15);
  // One sigmoid channel: the two classes (1 - p, p), divided by log 2.
  const torch::Tensor s = NormalisedEntropy(torch::tensor({0.5, 0.0, 0.9}, opts).reshape({1, 3}));
  EXPECT_NEAR(s[0].item<double>(), 1.0, 1e-15);
  EXPECT_EQ(s[1].item<double>(), 0.0);
  EXPECT_NEAR(s[2].item<double>(), -(0.9 * std::log(0.9) + 0.1 * std::log(0.1)) / std::log(2.0), 1e-15);
}

// --- suggestions -----------------------------------------------------------------
std::vector<float> RandomMap(const std::array<int64_t, 3>& shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<float> m(static_cast<size_t>(shape[0] * shape[1] * shape[2]));
  for (float& v : m) v = u(rng);
  // A smooth bump so the top blocks cluster (what the diversity rule is for).
  for (int64_t z = 0; z < shape[0]; ++z) {
    for (int64_t y = 0; y < shape[1]; ++y) {
      for (int64_t x = 0; x < shape[2]; ++x) {
        m[(z * shape[1] + y) * shape[2] + x] += 3.0f * std::exp(-((y - 40) * (y - 40) + (x - 40) * (x - 40)) / 800.0f);
      }
    }
  }
  return m;
}

double BlockMean(const std::vector<float>& m, const std::array<int64_t, 3>& shape, const LabelBlock& b) {
  double s = 0;
  for (int64_t y = b.y; y < b.y + b.height; ++y) {
    for (int64_t x = b.x; x < b.x + b.width; ++x) s += m[(b.z * shape[1] + y) * shape[2] + x];
  }
  return s / static_cast<double>(b.height * b.width);
}

TEST(Suggest, TheDiversityRuleHoldsAndScoresAreBlockMeans) {
  const std::array<int64_t, 3> shape{6, 160, 144};
  const std::vector<float> map = RandomMap(shape, 3);
  SuggestOptions o;
  o.block = 32;
  o.count = 12;
  o.min_distance = 40;
  o.labelled = {{2, 0, 0, 32, 32}};
  absl::StatusOr<std::vector<Suggestion>> s = SuggestBlocks(map, shape, o);
  ASSERT_TRUE(s.ok()) << s.status();
  // The rule leaves room for about (160 / 40) x (144 / 40) blocks whatever
  // the planes (they are 1 voxel apart): fewer than asked come back.
  ASSERT_GE(s->size(), 8u);
  ASSERT_LT(s->size(), 12u);
  for (size_t i = 0; i < s->size(); ++i) {
    const Suggestion& a = (*s)[i];
    EXPECT_EQ(a.rank, static_cast<int>(i) + 1);
    EXPECT_NEAR(a.score, BlockMean(map, shape, a.block), 1e-4);
    EXPECT_FALSE(a.block.Overlaps(o.labelled[0])) << "rank " << a.rank << " overlaps a labelled block";
    EXPECT_GE(a.block.Distance(o.labelled[0]), 40.0) << "rank " << a.rank << " is too close to a labelled block";
    if (i > 0) EXPECT_LE(a.score, (*s)[i - 1].score);
    for (size_t j = 0; j < i; ++j) {
      const LabelBlock& b = (*s)[j].block;
      EXPECT_FALSE(a.block.Overlaps(b)) << "ranks " << j + 1 << " and " << i + 1 << " overlap";
      EXPECT_GE(a.block.Distance(b), 40.0) << "ranks " << j + 1 << " and " << i + 1 << " are too close";
    }
  }
  // The default distance: half the block side.
  SuggestOptions d = o;
  d.min_distance = 0;
  d.count = 40;
  absl::StatusOr<std::vector<Suggestion>> by_default = SuggestBlocks(map, shape, d);
  ASSERT_TRUE(by_default.ok());
  EXPECT_GT(by_default->size(), s->size());
  for (size_t i = 0; i < by_default->size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      EXPECT_FALSE((*by_default)[i].block.Overlaps((*by_default)[j].block));
      EXPECT_GE((*by_default)[i].block.Distance((*by_default)[j].block), 16.0);
    }
  }
  // Without the rule: the top blocks by score alone, which here overlap.
  o.strategy = SelectionStrategy::kUncertaintyNoDiversity;
  absl::StatusOr<std::vector<Suggestion>> top = SuggestBlocks(map, shape, o);
  ASSERT_TRUE(top.ok());
  bool overlapping = false;
  for (size_t i = 0; i < top->size(); ++i) {
    for (size_t j = 0; j < i; ++j) overlapping |= (*top)[i].block.Overlaps((*top)[j].block);
  }
  EXPECT_TRUE(overlapping) << "the map's bump should put overlapping blocks at the top";
  EXPECT_GE(top->back().score, s->back().score);
  // Random: no overlaps, deterministic for a seed, different for another.
  o.strategy = SelectionStrategy::kRandom;
  o.seed = 5;
  absl::StatusOr<std::vector<Suggestion>> r1 = SuggestBlocks(map, shape, o), r2 = SuggestBlocks(map, shape, o);
  o.seed = 6;
  absl::StatusOr<std::vector<Suggestion>> r3 = SuggestBlocks(map, shape, o);
  ASSERT_TRUE(r1.ok() && r2.ok() && r3.ok());
  bool differs = false;
  for (size_t i = 0; i < r1->size(); ++i) {
    EXPECT_EQ((*r1)[i].block.y, (*r2)[i].block.y);
    differs |= (*r1)[i].block.z != (*r3)[i].block.z || (*r1)[i].block.y != (*r3)[i].block.y;
    for (size_t j = 0; j < i; ++j) EXPECT_FALSE((*r1)[i].block.Overlaps((*r1)[j].block));
  }
  EXPECT_TRUE(differs);
  // Bad input is named.
  EXPECT_THAT(std::string(SuggestBlocks({1.0f}, shape, o).status().message()), HasSubstr("uncertainty map"));
}

TEST(Suggest, FilesForAPersonAndTheViewers) {
  retina::testing::ScopedTempDir tmp("suggest-");
  Volume image;
  image.shape = {3, 64, 80};
  image.spacing = {30, 4, 4};
  image.data.resize(static_cast<size_t>(image.numel()));
  for (size_t i = 0; i < image.data.size(); ++i) image.data[i] = static_cast<uint8_t>(i * 7);
  const std::vector<Suggestion> s = {{1, {2, 16, 40, 32, 32}, 0.75}, {2, {0, 0, 0, 32, 32}, 0.5}};
  ASSERT_TRUE(WriteSuggestions(tmp.path() / "out", s, image, "nm").ok());
  absl::StatusOr<std::vector<LabelBlock>> back = ReadSuggestionBlocks(tmp.path() / "out/suggestions.csv");
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ((*back)[0].z, 2);
  EXPECT_EQ((*back)[0].x, 40);
  // The crop is the image under the block.
  absl::StatusOr<RawArray> crop = ReadArray((tmp.path() / "out/crops/rank-001.tif").string());
  ASSERT_TRUE(crop.ok()) << crop.status();
  ASSERT_EQ(crop->shape[1], 32);
  EXPECT_EQ(crop->bytes[5 * 32 + 3], image.data[(2 * 64 + 16 + 5) * 80 + 40 + 3]);
  // napari shapes: four vertices per rectangle, axes z, y, x.
  absl::StatusOr<std::string> napari = ReadFile(tmp.path() / "out/suggestions.napari.csv");
  ASSERT_TRUE(napari.ok());
  EXPECT_THAT(*napari, HasSubstr("index,shape-type,vertex-index,axis-0,axis-1,axis-2\n0,rectangle,0,2,16,40\n"));
  EXPECT_THAT(*napari, HasSubstr("0,rectangle,2,2,48,72\n"));
  // neuroglancer: boxes in x, y, z, dimensions in metres.
  absl::StatusOr<std::string> ng = ReadFile(tmp.path() / "out/suggestions.neuroglancer.json");
  ASSERT_TRUE(ng.ok());
  const nlohmann::json j = nlohmann::json::parse(*ng);
  EXPECT_EQ(j["type"], "annotation");
  EXPECT_EQ(j["annotations"][0]["pointA"], nlohmann::json({40, 16, 2}));
  EXPECT_EQ(j["annotations"][0]["pointB"], nlohmann::json({72, 48, 3}));
  EXPECT_NEAR(j["source"]["transform"]["outputDimensions"]["z"][0].get<double>(), 30e-9, 1e-20);
  EXPECT_EQ(j["source"]["transform"]["outputDimensions"]["z"][1], "m");
}

// --- versioned datasets -------------------------------------------------------------
class Versions : public ::testing::Test {
 protected:
  void SetUp() override { tmp_ = std::make_unique<retina::testing::ScopedTempDir>("versions-"); }
  fs::path Blocks(const std::string& name, int count, uint64_t seed, int64_t side = 48) {
    const fs::path dir = tmp_->path() / name;
    fs::create_directories(dir / "images");
    fs::create_directories(dir / "masks");
    for (int i = 0; i < count; ++i) {
      SynthOptions o;
      o.shape = {1, side, side};
      o.seed = seed + i;
      const SynthVolume v = Synthesize(o);
      EXPECT_TRUE(WriteTiff((dir / "images" / absl::StrCat("b", i, ".tif")).string(), v.image, false).ok());
      EXPECT_TRUE(WriteTiff((dir / "masks" / absl::StrCat("b", i, ".tif")).string(), v.mask, false).ok());
    }
    return dir;
  }
  // Every file of the dataset with its SHA-256.
  std::map<std::string, std::string> Files() {
    std::map<std::string, std::string> out;
    for (const auto& e : fs::directory_iterator(dataset())) {
      absl::StatusOr<FileDigest> d = Sha256File(e.path());
      out[e.path().filename().string()] = d.ok() ? d->sha256 : "?";
    }
    return out;
  }
  AddBlocksOptions Options(const fs::path& input) {
    AddBlocksOptions a;
    a.dataset = dataset();
    a.input = input;
    a.size = 32;
    a.classes = 2;
    return a;
  }
  fs::path dataset() const { return tmp_->path() / "labelled"; }
  std::unique_ptr<retina::testing::ScopedTempDir> tmp_;
};

TEST_F(Versions, AddingBlocksMakesANewVersionAndNeverChangesAnEarlierOne) {
  absl::StatusOr<AddBlocksResult> v1 = AddLabelledBlocks(Options(Blocks("round0", 3, 10)));
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(v1->version, 1);
  EXPECT_EQ(v1->tiles, 3 * 4);  // 48 x 48 blocks: 2 x 2 tiles of 32 (border-aligned)
  const std::map<std::string, std::string> before = Files();
  absl::StatusOr<AddBlocksResult> v2 = AddLabelledBlocks(Options(Blocks("round1", 2, 20)));
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(v2->version, 2);
  const std::map<std::string, std::string> after = Files();
  for (const auto& [file, sha] : before) {
    if (file == DatasetManifest::kFileName) continue;
    ASSERT_TRUE(after.count(file)) << file << " disappeared";
    EXPECT_EQ(after.at(file), sha) << file << " changed";
  }
  EXPECT_EQ(after.size(), before.size() + 1);  // one new shard
  absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(dataset());
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->versions.size(), 2u);
  EXPECT_EQ(m->versions[0].digest, v1->manifest.versions[0].digest);
  EXPECT_EQ(m->count, 12 + 8);
  EXPECT_EQ(m->mean, v1->manifest.mean);  // the first version's normalisation stays
  // Each version opens as it was.
  absl::StatusOr<std::unique_ptr<ShardedDataset>> at1 = ShardedDataset::Open(dataset(), true, 1);
  absl::StatusOr<std::unique_ptr<ShardedDataset>> at2 = ShardedDataset::Open(dataset(), true, 0);
  ASSERT_TRUE(at1.ok() && at2.ok());
  EXPECT_EQ((*at1)->size(), 12);
  EXPECT_EQ((*at2)->size(), 20);
  EXPECT_THAT(std::string(ShardedDataset::Open(dataset(), false, 3).status().message()), HasSubstr("no version 3"));
  // NAME@k references.
  absl::StatusOr<std::pair<std::string, int>> ref = SplitDatasetVersion("jobs/a/labelled@2", "data.dataset");
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(ref->first, "jobs/a/labelled");
  EXPECT_EQ(ref->second, 2);
  EXPECT_FALSE(SplitDatasetVersion("mito@0", "data.dataset").ok());
  // A version whose shard entries were edited is caught by its digest.
  nlohmann::json edited = nlohmann::json::parse(*ReadFile(dataset() / DatasetManifest::kFileName));
  edited["shards"][0]["sha256"] = std::string(64, 'a');
  absl::StatusOr<DatasetManifest> bad = DatasetManifest::FromJson(edited.dump(), "m");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("version 1 was altered"));
}

TEST_F(Versions, BadBlocksAreRefusedNamingTheFileAndNothingIsWritten) {
  ASSERT_TRUE(AddLabelledBlocks(Options(Blocks("round0", 2, 10))).ok());
  const std::map<std::string, std::string> before = Files();
  struct Case {
    std::string what, want;
    std::function<void(const fs::path&)> spoil;
  };
  const std::vector<Case> cases = {
      {"a mask of another shape", "b1.tif",
       [](const fs::path& d) {
         Volume v;
         v.shape = {1, 40, 48};
         v.data.assign(40 * 48, 0);
         ASSERT_TRUE(WriteTiff((d / "masks/b1.tif").string(), v, false).ok());
       }},
      {"a class the dataset lacks", "label 3 but the dataset has 2 classes",
       [](const fs::path& d) {
         Volume v;
         v.shape = {1, 48, 48};
         v.data.assign(48 * 48, 3);
         ASSERT_TRUE(WriteTiff((d / "masks/b0.tif").string(), v, false).ok());
       }},
      {"a block smaller than the tiles", "smaller than the dataset's tiles",
       [](const fs::path& d) {
         SynthOptions o;
         o.shape = {1, 16, 48};
         const SynthVolume v = Synthesize(o);
         ASSERT_TRUE(WriteTiff((d / "images/b1.tif").string(), v.image, false).ok());
         ASSERT_TRUE(WriteTiff((d / "masks/b1.tif").string(), v.mask, false).ok());
       }},
      {"a missing mask", "no mask", [](const fs::path& d) { fs::remove(d / "masks/b0.tif"); }},
  };
  int k = 0;
  for (const Case& c : cases) {
    const fs::path input = Blocks(absl::StrCat("bad", k++), 2, 30);
    c.spoil(input);
    absl::StatusOr<AddBlocksResult> r = AddLabelledBlocks(Options(input));
    ASSERT_FALSE(r.ok()) << c.what << " was accepted";
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.want)) << c.what;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(input.string())) << c.what << ": the file is not named";
    EXPECT_EQ(Files(), before) << c.what << ": the dataset changed";
  }
  // Two adds at once (two people, or a person and a loop) both land, one after the other.
  {
    const fs::path x = Blocks("concurrent-a", 2, 50), y = Blocks("concurrent-b", 2, 60);
    absl::StatusOr<AddBlocksResult> ra, rb;
    std::thread ta([&] { ra = AddLabelledBlocks(Options(x)); });
    std::thread tb([&] { rb = AddLabelledBlocks(Options(y)); });
    ta.join();
    tb.join();
    ASSERT_TRUE(ra.ok()) << ra.status();
    ASSERT_TRUE(rb.ok()) << rb.status();
    EXPECT_NE(ra->version, rb->version);
    absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(dataset());
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->latest_version(), 3);
    EXPECT_TRUE(VerifyDatasetChecksums(dataset(), *m).ok());
    for (const auto& [file, sha] : before) {
      if (file != DatasetManifest::kFileName) EXPECT_EQ(Files().at(file), sha) << file << " changed";
    }
  }
  const std::map<std::string, std::string> after_adds = Files();
  // Another tile size or class count than the dataset's.
  AddBlocksOptions o = Options(Blocks("other", 1, 40));
  o.size = 16;
  EXPECT_THAT(std::string(AddLabelledBlocks(o).status().message()), HasSubstr("--size"));
  o = Options(Blocks("other2", 1, 40));
  o.classes = 3;
  EXPECT_THAT(std::string(AddLabelledBlocks(o).status().message()), HasSubstr("--classes"));
  EXPECT_EQ(Files(), after_adds);
}

TEST_F(Versions, AResumeRefusesADatasetThatGainedAVersionSinceItsCheckpoint) {
  ASSERT_TRUE(AddLabelledBlocks(Options(Blocks("round0", 2, 10))).ok());  // 8 tiles of 32
  const fs::path store = tmp_->path() / "store";
  fs::create_directories(store);
  auto yaml = [&](const std::string& dataset, int iters) {
    return absl::StrCat("kind: finetune\nmodel: {name: tiny, image_size: 32, classes: 1}\ndata: {dataset: ", dataset,
                        ", loader_threads: 1}\nfinetune: {iters: ", iters, ", global_batch: 4, save_every_iters: 2}\n");
  };
  auto run = [&](const std::string& dataset, int iters) {
    RunOptions o;
    o.store = store;
    o.job_id = "ft";
    o.config_text = yaml(dataset, iters);
    return RunJob(*ParseJobConfig(o.config_text, "ft"), o);
  };
  ASSERT_TRUE(run(dataset().string(), 2).ok());
  ASSERT_TRUE(AddLabelledBlocks(Options(Blocks("round1", 1, 20))).ok());
  absl::StatusOr<RunOutcome> resumed = run(dataset().string(), 4);
  ASSERT_FALSE(resumed.ok());
  EXPECT_THAT(std::string(resumed.status().message()), HasSubstr("trained on version 1"));
  EXPECT_THAT(std::string(resumed.status().message()), HasSubstr("@1"));
  ASSERT_TRUE(run(dataset().string() + "@1", 4).ok());  // pinned: it resumes
}

// --- kind: loop -------------------------------------------------------------------
class Loop : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new retina::testing::ScopedTempDir("loop-");
    const fs::path bench = tmp_->path() / "bench";
    for (const char* split : {"train", "test"}) {
      for (const char* sub : {"images", "masks"}) fs::create_directories(bench / split / sub);
      SynthOptions o;
      o.shape = {4, 128, 128};
      o.seed = split[1] == 'r' ? 7 : 8;
      const SynthVolume v = Synthesize(o);
      ASSERT_TRUE(WriteTiff((bench / split / "images/v.tif").string(), v.image, false).ok());
      ASSERT_TRUE(WriteTiff((bench / split / "masks/v.tif").string(), v.mask, false).ok());
    }
    ImportOptions io;
    io.kind = *LookupImportKind("folder");
    io.input = bench;
    io.out = store() / "datasets/mito";
    io.size = 64;
    ASSERT_TRUE(ImportBenchmark(io).ok());
    SynthOptions o;
    o.shape = {5, 128, 128};
    o.spacing = {30, 6, 6};
    o.seed = 9;
    pool_ = Synthesize(o);
    ASSERT_TRUE(WriteTiff((store() / "pool.tif").string(), pool_.image, false).ok());
    ASSERT_TRUE(WriteTiff((store() / "pool-labels.tif").string(), pool_.mask, false).ok());
  }
  static void TearDownTestSuite() {
    delete tmp_;
    tmp_ = nullptr;
  }
  static fs::path store() { return tmp_->path() / "store"; }
  static std::string Yaml(const std::string& strategy, int rounds = 3) {
    return absl::StrCat(
        "kind: loop\nseed: 3\nmodel: {name: tiny, image_size: 64, classes: 1}\n"
        "data: {test_dataset: mito-test, loader_threads: 1}\noptimizer: {lr: 0.01}\n"
        "finetune: {iters: 4, global_batch: 4, save_every_iters: 4}\nevaluate: {mode: stack, overlap: 0.5}\n"
        "checkpoint: {keep_last: 1}\n"
        "loop: {pool: pool.tif, pool_labels: pool-labels.tif, rounds: ", rounds,
        ", initial_blocks: 4, blocks_per_round: 2, strategy: ",
        strategy, "}\n");
  }
  static absl::StatusOr<RunOutcome> Run(const std::string& job, const std::string& strategy, int rounds = 3) {
    absl::StatusOr<JobConfig> c = ParseJobConfig(Yaml(strategy, rounds), job);
    if (!c.ok()) return c.status();
    RunOptions o;
    o.store = store();
    o.job_id = job;
    o.config_text = Yaml(strategy, rounds);
    return RunJob(*c, o);
  }
  static retina::testing::ScopedTempDir* tmp_;
  static SynthVolume pool_;
};
retina::testing::ScopedTempDir* Loop::tmp_ = nullptr;
SynthVolume Loop::pool_;

TEST_F(Loop, RoundsAddVersionsScoreEachBudgetAndResume) {
  absl::StatusOr<RunOutcome> r = Run("lu", "uncertainty");
  ASSERT_TRUE(r.ok()) << r.status();
  const fs::path job = store() / "jobs/lu";
  absl::StatusOr<std::string> text = ReadFile(job / "loop.json");
  ASSERT_TRUE(text.ok());
  const nlohmann::json state = nlohmann::json::parse(*text);
  ASSERT_EQ(state["rounds"].size(), 3u);
  // Budgets 4, 6, 8 blocks: one eval each, what a loop study reads.
  for (int b : {4, 6, 8}) {
    EXPECT_TRUE(fs::exists(job / "evals" / absl::StrCat("step-", b, ".json"))) << b;
  }
  absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(job / "labelled");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->latest_version(), 3);
  // The last round trained on version 3 and says so (with its digest).
  absl::StatusOr<std::string> st = ReadFile(job / "rounds/jobs/r2/checkpoints/step-00000004/state.json");
  ASSERT_TRUE(st.ok()) << st.status();
  absl::StatusOr<CheckpointState> cs = DecodeCheckpointState(*st, "state.json");
  ASSERT_TRUE(cs.ok());
  EXPECT_EQ(cs->dataset_version, 3);
  EXPECT_EQ(cs->dataset_digest, m->versions[2].digest);
  EXPECT_EQ(state["rounds"][2]["dataset_digest"], m->versions[2].digest);
  // Round 1 said which version it used: 2.
  absl::StatusOr<std::string> st1 = ReadFile(job / "rounds/jobs/r1/checkpoints/step-00000004/state.json");
  ASSERT_TRUE(st1.ok());
  EXPECT_EQ(DecodeCheckpointState(*st1, "s")->dataset_version, 2);
  // The simulated annotator revealed the pool's labels exactly in the chosen
  // blocks, which never overlap.
  std::vector<LabelBlock> blocks;
  for (const auto& b : state["labelled"]) blocks.push_back({b[0], b[1], b[2], b[3], b[4]});
  ASSERT_EQ(blocks.size(), 8u);
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (size_t j = 0; j < i; ++j) EXPECT_FALSE(blocks[i].Overlaps(blocks[j])) << i << " " << j;
  }
  absl::StatusOr<std::vector<LabelBlock>> r1 = ReadSuggestionBlocks(job / "rounds/r1/suggestions/suggestions.csv");
  ASSERT_TRUE(r1.ok() && !r1->empty());
  const LabelBlock& b = (*r1)[0];
  absl::StatusOr<RawArray> mask = ReadArray(
      (job / "rounds/r1/blocks/masks" / absl::StrFormat("z%05d-y%05d-x%05d.tif", b.z, b.y, b.x)).string());
  ASSERT_TRUE(mask.ok()) << mask.status();
  for (int64_t y = 0; y < b.height; y += 7) {
    for (int64_t x = 0; x < b.width; x += 5) {
      ASSERT_EQ(mask->bytes[y * b.width + x], pool_.mask.data[(b.z * 128 + b.y + y) * 128 + b.x + x]);
    }
  }
  // Rounds after the first continue the whole model, encoder included (a
  // random init freezes nothing).
  {
    absl::StatusOr<StateDict> r0 = ReadStateDictFile(job / "rounds/jobs/r0/checkpoints/step-00000004/model.pt");
    absl::StatusOr<StateDict> r1 = ReadStateDictFile(job / "rounds/jobs/r1/checkpoints/step-00000004/model.pt");
    ASSERT_TRUE(r0.ok() && r1.ok());
    std::map<std::string, torch::Tensor> later(r1->begin(), r1->end());
    int encoder = 0, changed = 0;
    for (const auto& [name, t] : *r0) {
      if (name.rfind("transformer.encoder", 0) != 0 || !t.is_floating_point()) continue;
      ++encoder;
      changed += !torch::equal(t, later.at(name));
    }
    EXPECT_GT(encoder, 0);
    EXPECT_GT(changed, 0) << "round 1 left the encoder as round 0 did (frozen)";
  }
  // Run again: every round is recorded, nothing is added or trained twice.
  const std::string csv = *ReadFile(job / "loop.csv");
  ASSERT_TRUE(Run("lu", "uncertainty").ok());
  EXPECT_EQ(*ReadFile(job / "loop.csv"), csv);
  EXPECT_EQ(DatasetManifest::Load(job / "labelled")->latest_version(), 3);
  // Another strategy in the same job directory is refused, not mixed in.
  EXPECT_THAT(std::string(Run("lu", "random").status().message()), HasSubstr("other settings"));
}

TEST_F(Loop, EveryStrategyStartsFromTheSameBlocksAtOneSeed) {
  ASSERT_TRUE(Run("lr", "random", 2).ok());  // two rounds: round 1's blocks are where strategies part
  ASSERT_TRUE(Run("ln", "uncertainty-nodiversity", 2).ok());
  auto first = [](const std::string& job) {
    return *ReadFile(store() / "jobs" / job / "rounds/r0/suggestions/suggestions.csv");
  };
  EXPECT_EQ(first("lr"), first("ln"));
  EXPECT_NE(*ReadFile(store() / "jobs/lr/rounds/r1/suggestions/suggestions.csv"),
            *ReadFile(store() / "jobs/ln/rounds/r1/suggestions/suggestions.csv"));
}

TEST_F(Loop, AnInferJobWritesAnUncertaintyMapThatPython3ZarrReads) {
  if (const std::string missing = retina::testing::PythonMissing("zarr, numpy"); !missing.empty()) {
    GTEST_SKIP() << missing;
  }
  if (!fs::exists(store() / "jobs/lu/loop.json")) ASSERT_TRUE(Run("lu", "uncertainty").ok());
  const std::string yaml =
      "kind: infer\ninfer: {weights: jobs/lu/rounds/jobs/r2, inputs: [pool.tif], chunks: [2, 64, 48], "
      "probabilities: float32, uncertainty: entropy}\n";
  RunOptions o;
  o.store = store();
  o.job_id = "unc";
  o.config_text = yaml;
  absl::StatusOr<RunOutcome> r = RunJob(*ParseJobConfig(yaml, "infer"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  const fs::path out = store() / "jobs/unc/predictions";
  std::string py;
  EXPECT_EQ(retina::testing::RunPython("zarr_peer.py",
                                       absl::StrCat("check-uncertainty ", (out / "pool.uncertainty.ome.zarr").string(),
                                                    " ", (out / "pool.probabilities.ome.zarr").string(), " ",
                                                    (out / "pool.ome.zarr").string(), " 5 128 128 - 1 1 1"),
                                       &py),
            0)
      << py;
  EXPECT_THAT(py, HasSubstr("ok"));
  // The job's report names the map (what retina suggest --job reads).
  EXPECT_THAT(*ReadFile(store() / "jobs/unc/predictions.json"), HasSubstr("pool.uncertainty.ome.zarr"));
  // A config that asks for a map where it cannot go is refused, naming the key.
  EXPECT_THAT(std::string(ParseJobConfig("kind: infer\ninfer: {weights: w, inputs: [a], format: tiff, uncertainty: "
                                         "entropy}\n",
                                         "f")
                              .status()
                              .message()),
              HasSubstr("infer.uncertainty"));
}

// --- loop studies ------------------------------------------------------------------
TEST(LoopStudy, PlansLoopChildrenAndTestsEveryBudget) {
  const std::string yaml =
      "kind: study\nmodel: {name: tiny, image_size: 64, classes: 1}\n"
      "data: {test_dataset: mito-test}\nfinetune: {iters: 4, global_batch: 4}\n"
      "loop: {pool: pool.tif, pool_labels: pool-labels.tif, rounds: 3, initial_blocks: 4, blocks_per_round: 2}\n"
      "study: {strategies: [uncertainty, random], seed_count: 3}\n";
  absl::StatusOr<StudyPlan> plan = PlanStudy(yaml, "study.yaml");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->loop);
  EXPECT_EQ(plan->eval_at, (std::vector<int64_t>{4, 6, 8}));
  ASSERT_EQ(plan->arms.size(), 2u);
  EXPECT_EQ(plan->arms[1].strategy, "random");
  absl::StatusOr<std::string> child = StudyChildYaml(yaml, *plan, plan->children[4], "study.yaml");
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<JobConfig> c = ParseJobConfig(*child, "child");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, JobKind::kLoop);
  EXPECT_EQ(c->loop.strategy, SelectionStrategy::kRandom);
  // Aggregation: a Mann-Whitney test of every metric at every budget.
  std::vector<StudyChildResult> results;
  for (const StudyChild& ch : plan->children) {
    StudyChildResult r;
    r.child = ch;
    r.job_id = absl::StrCat("c", ch.index);
    r.state = "SUCCEEDED";
    for (int64_t b : plan->eval_at) {
      EvalReport e;
      e.items.push_back({"v", {{1, 0.1 * ch.arm + 0.01 * b + 0.001 * ch.seed, 0.5, 0.5, 0.5, 1.0, {}}}});
      r.evals[b] = e;
    }
    results.push_back(r);
  }
  const StudyReport report = AggregateStudy("s", *plan, results);
  EXPECT_EQ(report.axis, "blocks labelled");
  std::set<int64_t> tested;
  for (const StudyTest& t : report.tests) {
    if (t.metric == "iou" && t.cls == "mean") tested.insert(t.step);
  }
  EXPECT_EQ(tested, (std::set<int64_t>{4, 6, 8}));
  absl::StatusOr<StudyReport> back = DecodeStudyReport(EncodeStudyReport(report), "r");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->axis, "blocks labelled");
  EXPECT_EQ(back->arms[0].strategy, "uncertainty");
  // What a loop study may not say.
  std::string with_eval_at = yaml;
  with_eval_at.replace(with_eval_at.find("seed_count: 3}"), 14, "seed_count: 3, eval_at: [1]}");
  EXPECT_THAT(std::string(PlanStudy(with_eval_at, "s").status().message()), HasSubstr("study.eval_at"));
  const std::string no_pool =
      "kind: loop\nmodel: {name: tiny, image_size: 64}\ndata: {test_dataset: t, dataset: d}\n";
  const std::string why = std::string(ParseJobConfig(no_pool, "l").status().message());
  EXPECT_THAT(why, HasSubstr("loop.pool"));
  EXPECT_THAT(why, HasSubstr("data.dataset"));
  // Blocks smaller than a tile, too few tiles for one batch, a version of a test split.
  const std::string small =
      "kind: loop\nmodel: {name: tiny, image_size: 64}\ndata: {test_dataset: t@2}\nfinetune: {global_batch: 16}\n"
      "loop: {pool: p, pool_labels: q, block: 32, initial_blocks: 4}\n";
  const std::string why2 = std::string(ParseJobConfig(small, "l").status().message());
  EXPECT_THAT(why2, HasSubstr("loop.block"));
  EXPECT_THAT(why2, HasSubstr("loop.initial_blocks"));
  EXPECT_THAT(why2, HasSubstr("data.test_dataset"));
}

}  // namespace
}  // namespace retina::trainer
