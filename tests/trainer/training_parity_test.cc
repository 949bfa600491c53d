// Training fidelity against an independent Python implementation (issue 20):
//
// - Step parity: `retina-train run` itself (runtime.precision fp64, dropout
//   and augmentation off, the global batch = the whole dataset) runs 5 SGD
//   steps; py/training_reference.py, written from METHOD.md with PyTorch's own
//   modules and torch.optim.SGD, starts from the job's step-0 checkpoint and
//   runs the same 5 steps. The loss of every step and every parameter and
//   buffer at the end agree to kTolerance (relative), for MSE pre-training,
//   0.5 BCE + 0.5 Dice, 0.5 weighted CE + 0.5 soft Dice, and fine-tuning with
//   the transferred encoder frozen. Planted bugs in the Python side (a wrong
//   Dice smoothing, weight decay skipped on one group, the lr one step late, a
//   frozen tensor that moves) each exceed the tolerance by orders of
//   magnitude: the comparison is symmetric, so the same bug in our C++ fails.
// - Init parity: fresh random-init weights of every tensor of r50-vit-b16
//   follow the reference's scheme (py/init_reference.py).
#include <cstdlib>
#include <functional>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/tools/import.h"
#include "trainer/data/tools/pack.h"
#include "trainer/data/shards.h"
#include "trainer/data/tools/synth.h"
#include "trainer/data/formats/writers.h"
#include "trainer/model/model_config.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/model/transunet.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;

// Measured here: worst 2.4e-15 (loss) and 3.8e-14 (state) over the four cases;
// float64 rounding grows by orders of magnitude less than this over 5 steps
// on any CPU (a different summation order costs ~1e-16 per operation).
constexpr double kTolerance = 1e-10;
const std::string kTrain = std::string(RETINA_TEST_TRAINER_DIR) + "/retina-train";
constexpr double kMean = 0.5, kStd = 0.25;

class TrainingParity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new retina::testing::ScopedTempDir("parity-");
    fs::create_directories(Store() / "datasets");
  }
  static void TearDownTestSuite() { delete tmp_; }
  static fs::path Store() { return tmp_->path() / "store"; }

  // STORE/datasets/em4: four unlabelled 64 x 64 images.
  static void EnsureUnlabelled() {
    if (fs::exists(Store() / "datasets/em4/manifest.json")) return;
    const fs::path raw = tmp_->path() / "raw";
    fs::create_directories(raw);
    for (int i = 0; i < 4; ++i) {
      SynthOptions o;
      o.shape = {1, 64, 64};
      o.seed = 20 + i;
      ASSERT_TRUE(WriteTiff((raw / absl::StrCat("i", i, ".tif")).string(), Synthesize(o).image, false).ok());
    }
    PackOptions p;
    p.input = raw.string();
    p.out = Store() / "datasets/em4";
    p.size = 64;
    ASSERT_TRUE(PackImages(p).ok());
  }
  // STORE/datasets/NAME: four labelled 64 x 64 slices with `classes` classes.
  static void EnsureLabelled(const std::string& name, int classes) {
    if (fs::exists(Store() / "datasets" / name / "manifest.json")) return;
    const fs::path bench = tmp_->path() / ("bench-" + name);
    for (const char* sub : {"train/images", "train/masks", "test/images", "test/masks"}) {
      fs::create_directories(bench / sub);
    }
    SynthOptions o;
    o.shape = {4, 64, 64};
    o.seed = 30 + classes;
    o.classes = classes;
    o.cell_diameter = 40;
    const SynthVolume v = Synthesize(o);
    ASSERT_TRUE(WriteTiff((bench / "train/images/v.tif").string(), v.image, false).ok());
    ASSERT_TRUE(WriteTiff((bench / "train/masks/v.tif").string(), v.mask, false).ok());
    ASSERT_TRUE(WriteTiff((bench / "test/images/v.tif").string(), v.image, false).ok());
    ASSERT_TRUE(WriteTiff((bench / "test/masks/v.tif").string(), v.mask, false).ok());
    ImportOptions io;
    io.kind = *LookupImportKind("folder");
    io.kind.labels = MaskConvention::kClassIndex;
    io.kind.classes = classes;
    io.input = bench;
    io.out = Store() / "datasets" / name;
    io.size = 64;
    absl::StatusOr<ImportResult> r = ImportBenchmark(io);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  static int64_t Samples(const std::string& dataset) {
    absl::StatusOr<std::unique_ptr<ShardedDataset>> d = ShardedDataset::Open(Store() / "datasets" / dataset, false);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? (*d)->size() : 0;
  }

  // Runs `retina-train run` on `yaml` as job `job` (once per suite).
  static void Train(const std::string& job, const std::string& yaml) {
    if (fs::exists(Store() / "jobs" / job / "checkpoints/step-00000005")) return;
    const fs::path config = tmp_->path() / (job + ".yaml"), log = tmp_->path() / (job + ".log");
    ASSERT_TRUE(WriteFileAtomic(config, yaml).ok());
    const std::string cmd = absl::StrCat("OMP_NUM_THREADS=1 ", kTrain, " run --config ", config.string(), " --store ",
                                         Store().string(), " --job ", job, " > ", log.string(), " 2>&1");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << *ReadFile(log);
  }
  // The common part of every job: float64, one thread, no dropout, the
  // step-0 checkpoint, fixed normalisation.
  static std::string Common(int classes, const std::string& dataset) {
    return absl::StrCat("seed: 5\nmodel: {name: tiny, image_size: 64, classes: ", classes, ", dropout: 0}\n",
                        "data: {dataset: ", dataset, ", mean: ", kMean, ", std: ", kStd, ", loader_threads: 1}\n",
                        "runtime: {device: cpu, precision: fp64, threads: 1}\n",
                        "checkpoint: {save_initial: true, keep_last: 10}\n");
  }
  static std::string Finetune(const std::string& dataset, const std::string& extra) {
    return absl::StrCat("finetune: {iters: 5, global_batch: ", Samples(dataset), ", save_every_iters: 5, ",
                        "eval_every_iters: 0, crop: random, rotate_p: 0, rotate90_p: 0, hflip_p: 0, vflip_p: 0, ",
                        "brightness_contrast_p: 0, noise_p: 0, blur_p: 0, foreground_crop_p: 0", extra, "}\n");
  }

  static void EnsurePretrain() {
    EnsureUnlabelled();
    Train("pre", "kind: pretrain\n" + Common(1, "em4") +
                     "pretrain: {epochs: 5, global_batch: 4, checkpoint_every_epochs: 5, augment: "
                     "{hflip_p: 0, vflip_p: 0, rotate_p: 0, crop_scale: [1, 1], crop_ratio: [1, 1], "
                     "brightness_contrast_p: 0, noise_p: 0, blur_p: 0, dropout_p: 0}}\n");
  }
  static void EnsureBinary() {
    EnsureLabelled("bin", 2);
    Train("bin", "kind: finetune\n" + Common(1, "bin") + Finetune("bin", ", loss: bce_dice, init: random"));
  }
  static void EnsureMulti() {
    EnsureLabelled("multi", 3);
    Train("multi", "kind: finetune\n" + Common(3, "multi") +
                       Finetune("multi", ", loss: ce_dice, class_weights: [0.1, 1, 3], init: random"));
  }
  static void EnsureFrozen() {
    EnsurePretrain();
    EnsureLabelled("bin", 2);
    Train("frozen", "kind: finetune\n" + Common(1, "bin") +
                        Finetune("bin", ", loss: bce_dice, init: jobs/pre/checkpoints/LATEST, freeze_encoder: true"));
  }

  // The Python implementation's comparison with job `job`.
  static nlohmann::json Reference(const std::string& job, const std::string& dataset, const std::string& args,
                                  const std::string& mutate = "") {
    std::string out;
    const std::string cmd = absl::StrCat(Store().string(), " ", job, " ", (Store() / "datasets" / dataset).string(),
                                         " --iters 5 --mean ", kMean, " --std ", kStd, " ", args,
                                         mutate.empty() ? "" : " --mutate " + mutate);
    const int rc = retina::testing::RunPython("training_reference.py", cmd, &out);
    EXPECT_EQ(rc, 0) << out;
    const std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
    if (rc != 0 || lines.empty()) return nlohmann::json::object();
    return nlohmann::json::parse(lines.back());
  }
  static void ExpectParity(const nlohmann::json& r, const std::string& what) {
    ASSERT_TRUE(r.contains("loss_rel")) << what;
    std::printf("%s: loss %.2e, state %.2e (worst %s), losses %s\n", what.c_str(), r["loss_rel"].get<double>(),
                r["state_rel"].get<double>(), r["worst_tensor"].get<std::string>().c_str(), r["losses"].dump().c_str());
    EXPECT_LT(r["loss_rel"].get<double>(), kTolerance) << what;
    EXPECT_LT(r["state_rel"].get<double>(), kTolerance) << what << ": " << r["worst_tensor"];
  }
  static StateDict Checkpoint(const std::string& job, int step) {
    absl::StatusOr<StateDict> d =
        ReadStateDictFile(Store() / "jobs" / job / "checkpoints" / absl::StrFormat("step-%08d", step) / "model.pt");
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : StateDict{};
  }

  static retina::testing::ScopedTempDir* tmp_;
};
retina::testing::ScopedTempDir* TrainingParity::tmp_ = nullptr;

#define SKIP_WITHOUT_PYTHON()                                                                               \
  if (const std::string why = retina::testing::PythonMissing("torch, h5py"); !why.empty()) GTEST_SKIP() << why

TEST_F(TrainingParity, PretrainingMseStepsEqualPythonInFloat64) {
  SKIP_WITHOUT_PYTHON();
  EnsurePretrain();
  ExpectParity(Reference("pre", "em4", "--loss mse"), "pre-training, MSE");
}

TEST_F(TrainingParity, BinaryBceDiceStepsEqualPythonInFloat64) {
  SKIP_WITHOUT_PYTHON();
  EnsureBinary();
  ExpectParity(Reference("bin", "bin", "--loss bce_dice"), "binary, 0.5 BCE + 0.5 Dice");
}

TEST_F(TrainingParity, MultiClassWeightedCeDiceStepsEqualPythonInFloat64) {
  SKIP_WITHOUT_PYTHON();
  EnsureMulti();
  ExpectParity(Reference("multi", "multi", "--loss ce_dice --classes 3 --class-weights 0.1,1,3"),
               "3 classes, 0.5 weighted CE + 0.5 soft Dice");
}

TEST_F(TrainingParity, FrozenEncoderStepsEqualPythonAndTheEncoderStaysExactlyThePretrainedOne) {
  SKIP_WITHOUT_PYTHON();
  EnsureFrozen();
  const nlohmann::json r = Reference("frozen", "bin", "--loss bce_dice --freeze");
  ExpectParity(r, "fine-tuning from pre-training, encoder frozen");
  EXPECT_EQ(r.value("frozen", 0), 34);  // tiny: 2 blocks x 16 tensors + encoder_norm (2)
  // Ours, exactly: the encoder at steps 0 and 5 is the pre-trained one.
  const StateDict pre = Checkpoint("pre", 5), start = Checkpoint("frozen", 0), end = Checkpoint("frozen", 5);
  std::map<std::string, torch::Tensor> p(pre.begin(), pre.end()), s(start.begin(), start.end());
  int encoder = 0;
  for (const auto& [name, t] : end) {
    if (name.rfind("transformer.encoder", 0) != 0) continue;
    ++encoder;
    EXPECT_TRUE(torch::equal(t, s.at(name))) << name << " moved";
    EXPECT_TRUE(torch::equal(t, p.at(name))) << name << " is not the pre-trained tensor";
  }
  EXPECT_EQ(encoder, 34);
}

TEST_F(TrainingParity, EveryPlantedTrainingBugFailsTheParityByOrdersOfMagnitude) {
  SKIP_WITHOUT_PYTHON();
  EnsureBinary();
  EnsureMulti();
  EnsureFrozen();
  struct Case {
    std::string mutate, job, dataset, args;
  };
  for (const Case& c : std::vector<Case>{
           {"dice_smooth", "bin", "bin", "--loss bce_dice"},
           {"dice_smooth", "multi", "multi", "--loss ce_dice --classes 3 --class-weights 0.1,1,3"},
           {"wd_group", "multi", "multi", "--loss ce_dice --classes 3 --class-weights 0.1,1,3"},
           {"lr_late", "pre", "em4", "--loss mse"},
           {"frozen_moves", "frozen", "bin", "--loss bce_dice --freeze"}}) {
    const nlohmann::json r = Reference(c.job, c.dataset, c.args, c.mutate);
    ASSERT_TRUE(r.contains("state_rel")) << c.mutate;
    const double worst = std::max(r["loss_rel"].get<double>(), r["state_rel"].get<double>());
    std::printf("planted %s on %s: loss %.2e, state %.2e (%s) = %.0fx the tolerance\n", c.mutate.c_str(),
                c.job.c_str(), r["loss_rel"].get<double>(), r["state_rel"].get<double>(),
                r["worst_tensor"].get<std::string>().c_str(), worst / kTolerance);
    EXPECT_GT(worst, 1e3 * kTolerance) << c.mutate << " on " << c.job << " went unnoticed";
  }
}

// Fresh weights of the paper's model (the pre-training variant: every head).
class InitParity : public ::testing::Test {
 protected:
  // Writes the weights of a fresh model (seed 1) to DIR/model.pt, after
  // `tamper` (for the test that the check bites), and runs the peer.
  static std::pair<int, nlohmann::json> Check(const std::function<void(StateDict&)>& tamper) {
    retina::testing::ScopedTempDir tmp("init-");
    absl::StatusOr<TransUNetConfig> mc = NamedModelConfig("r50-vit-b16", 64, 1, ModelHead::kReconstruction);
    EXPECT_TRUE(mc.ok()) << mc.status();
    torch::manual_seed(1);
    VisionTransformer model(*mc);
    StateDict weights = GetStateDict(*model);
    tamper(weights);
    const std::vector<char> bytes = SerializeStateDict(weights);
    const fs::path file = tmp.path() / "model.pt";
    EXPECT_TRUE(WriteFileAtomic(file, absl::string_view(bytes.data(), bytes.size())).ok());
    std::string out;
    const int rc = retina::testing::RunPython("init_reference.py", file.string() + " r50-vit-b16 64 1 1", &out);
    const std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
    nlohmann::json r = nlohmann::json::object();
    if (!lines.empty() && lines.back().front() == '{') r = nlohmann::json::parse(lines.back());
    else ADD_FAILURE() << out;
    return {rc, r};
  }
};

TEST_F(InitParity, EveryFreshTensorFollowsTheReferenceScheme) {
  SKIP_WITHOUT_PYTHON();
  const auto [rc, r] = Check([](StateDict&) {});
  std::printf("%s\n", r.dump().c_str());
  EXPECT_EQ(rc, 0) << r.dump(1);
  EXPECT_EQ(r.value("tensors", 0), 411);  // METHOD.md: the pre-training model's state dict
  EXPECT_GT(r.value("uniform", 0), 100);
  EXPECT_EQ(r.value("normal", 0), 24);  // 12 blocks x fc1, fc2 biases
}

TEST_F(InitParity, AWrongSchemeIsNamed) {
  SKIP_WITHOUT_PYTHON();
  const auto [rc, r] = Check([](StateDict& w) {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : w) {
      if (name == "transformer.encoder.layer.0.ffn.fc1.weight") {  // kaiming-uniform instead of xavier
        torch::nn::init::kaiming_uniform_(t, std::sqrt(5.0));
      } else if (name == "decoder.conv_more.0.weight") {  // half the bound
        t.mul_(0.5);
      } else if (name == "transformer.embeddings.position_embeddings") {  // not zero-initialised
        t.normal_(0, 0.02);
      }
    }
  });
  EXPECT_EQ(rc, 3);
  const std::string failures = r["failures"].dump();
  std::printf("%s\n", failures.c_str());
  for (const char* name : {"layer.0.ffn.fc1.weight", "decoder.conv_more.0.weight", "position_embeddings"}) {
    EXPECT_NE(failures.find(name), std::string::npos) << name;
  }
}

}  // namespace
}  // namespace retina::trainer
