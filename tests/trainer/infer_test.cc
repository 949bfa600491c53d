// Infer jobs (trainer/engine/infer.h) as real `retina-train run` processes:
// data-parallel OME-Zarr output equal for 1, 2 and 3 Gloo ranks and to the
// in-memory prediction, python3-zarr reading it and checking the NGFF rules,
// a SIGKILLed attempt resuming past its committed rows, per-file outputs
// with units, and bad input named before any output exists.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/records.h"
#include "tests/trainer/mixed_labels.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"
#include "trainer/data/formats/zarr.h"
#include "trainer/data/tools/synth.h"
#include "trainer/engine/infer.h"
#include "trainer/prediction/inference.h"
#include "trainer/model/model_config.h"
#include "trainer/model/weights/state_dict.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const std::string kTrain = std::string(RETINA_TEST_TRAINER_DIR) + "/retina-train";

// A block of rendezvous ports held (flock) for this process's lifetime.
int PortBase() {
  static const int base = [] {
    for (int block = 0; block < 120; ++block) {
      const std::string lock = "/tmp/retina-test-ports-" + std::to_string(block) + ".lock";
      const int fd = ::open(lock.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0666);
      if (fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) == 0) return 20000 + block * 100;
      if (fd >= 0) ::close(fd);
    }
    return 20000;
  }();
  return base;
}

pid_t Start(const std::vector<std::string>& args, const fs::path& log, const std::vector<std::string>& env) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv{const_cast<char*>(kTrain.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::vector<uint8_t> ReadLevel(const fs::path& array) {
  absl::StatusOr<ZarrArrayMeta> m = ReadZarrArray(array);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return {};
  int64_t n = 1;
  for (int64_t s : m->shape) n *= s;
  std::vector<uint8_t> out(static_cast<size_t>(n) * m->item_size());
  std::vector<int64_t> origin(m->shape.size(), 0);
  EXPECT_TRUE(ReadZarrRegion(array, *m, origin, m->shape, out.data()).ok());
  return out;
}

class Infer : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    tmp_ = new retina::testing::ScopedTempDir("infer-");
    fs::create_directories(Store() / "models/seg");
    fs::create_directories(Store() / "models/pre");
    fs::create_directories(Store() / "in");
    // A random 2-class segmentation model (argmax labels are mixed) with its
    // normalisation in state.json, and a pre-training (reconstruction) one.
    torch::manual_seed(1);
    VisionTransformer seg(*NamedModelConfig("tiny", 32, 2, ModelHead::kSegmentation));
    // The volume: 10 planes (chunk rows of 3 do not divide it), 30 x 6 x 6 nm.
    SynthOptions o;
    o.shape = {10, 50, 70};
    o.seed = 4;
    input_ = Synthesize(o).image;
    input_.spacing = {30, 6, 6};
    retina::testing::MixLabels(seg, input_, 32, 0.5, 0.25);  // about half the voxels foreground
    ASSERT_TRUE(SaveStateDictFile(GetStateDict(*seg), Store() / "models/seg/model.pt").ok());
    CheckpointState state;
    state.kind = "finetune";
    state.model = "tiny";
    state.image_size = 32;
    state.classes = 2;
    state.mean = 0.5;
    state.std = 0.25;
    ASSERT_TRUE(WriteFileAtomic(Store() / "models/seg/state.json", EncodeCheckpointState(state)).ok());
    VisionTransformer pre(*NamedModelConfig("tiny", 32, 1, ModelHead::kReconstruction));
    ASSERT_TRUE(SaveStateDictFile(GetStateDict(*pre), Store() / "models/pre/model.pt").ok());
    ASSERT_TRUE(WriteFileAtomic(Store() / "models/pre/state.json", EncodeCheckpointState(state)).ok());
    absl::StatusOr<std::unique_ptr<PlaneWriter>> w =
        OpenPlaneWriter((Store() / "in/vol.tif").string(), input_.shape, input_.spacing, true, 0, "nm");
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->Append(10, input_.data.data(), nullptr, 0).ok());
    ASSERT_TRUE((*w)->Finish().ok());
  }
  static void TearDownTestSuite() { delete tmp_; }
  static fs::path Store() { return tmp_->path() / "store"; }
  static fs::path Log(const std::string& name) { return tmp_->path() / (name + ".log"); }
  static fs::path Output(const std::string& job) { return Store() / "jobs" / job / "predictions/vol.ome.zarr"; }

  // Runs `yaml` as job `job` over `world` Gloo ranks; the exit statuses.
  static std::vector<int> Run(const std::string& yaml, const std::string& job, int world,
                              const std::vector<std::string>& env = {}, const std::vector<std::string>& extra = {}) {
    const fs::path config = tmp_->path() / (job + ".yaml");
    EXPECT_TRUE(WriteFileAtomic(config, yaml).ok());
    static int next = 0;
    std::vector<std::string> e = env;
    e.push_back("MASTER_ADDR=127.0.0.1");
    e.push_back(absl::StrCat("MASTER_PORT=", PortBase() + (next++ % 100)));
    e.push_back("OMP_NUM_THREADS=1");
    std::vector<pid_t> pids;
    for (int r = 0; r < world; ++r) {
      std::vector<std::string> args = {"run", "--config", config.string(), "--store", Store().string(), "--job", job,
                                       "--world-size", std::to_string(world), "--rank", std::to_string(r)};
      args.insert(args.end(), extra.begin(), extra.end());
      pids.push_back(Start(args, Log(job + "-" + std::to_string(r)), e));
    }
    std::vector<int> codes;
    for (pid_t p : pids) codes.push_back(Wait(p));
    return codes;
  }
  static std::string Yaml(const std::string& infer) {
    return "kind: infer\nruntime: {threads: 1}\ninfer: {weights: models/seg/model.pt, inputs: [in/vol.tif], " + infer + "}\n";
  }

  static retina::testing::ScopedTempDir* tmp_;
  static Volume input_;
};
retina::testing::ScopedTempDir* Infer::tmp_ = nullptr;
Volume Infer::input_;

TEST_F(Infer, OneTwoAndThreeRanksWriteTheSameOmeZarrAsOneProcessAndPythonZarrReadsIt) {
  const std::string yaml = Yaml("mode: orthoplane, chunks: [3, 32, 32], probabilities: float32, overlap: 0.5");
  for (int world : {1, 2, 3}) {
    const std::string job = absl::StrCat("w", world);
    EXPECT_EQ(Run(yaml, job, world), std::vector<int>(world, 0)) << *ReadFile(Log(job + "-0"));
    ASSERT_TRUE(fs::exists(Output(job) / ".zattrs")) << job;
  }
  // The levels: 10x50x70 -> 5x25x35 (x still > 32) -> 3x13x18 (fits one 32x32 chunk).
  for (int level = 0; level < 3; ++level) {
    const std::vector<uint8_t> one = ReadLevel(Output("w1") / std::to_string(level));
    ASSERT_FALSE(one.empty());
    for (const char* job : {"w2", "w3"}) {
      EXPECT_EQ(ReadLevel(Output(job) / std::to_string(level)), one) << job << " level " << level;
    }
  }
  EXPECT_FALSE(fs::exists(Output("w1") / "3"));
  // Probabilities: float32, equal to the bit for any world size (every rank
  // runs a row's windows exactly as one process does).
  const fs::path probs = Store() / "jobs/w1/predictions/vol.probabilities.ome.zarr/0";
  for (const char* job : {"w2", "w3"}) {
    EXPECT_EQ(ReadLevel(Store() / "jobs" / job / "predictions/vol.probabilities.ome.zarr/0"), ReadLevel(probs)) << job;
  }
  // Against the in-memory prediction of the whole volume (one slab, other
  // batch boundaries): labels identical, probabilities within float rounding.
  VisionTransformer model(*NamedModelConfig("tiny", 32, 2, ModelHead::kSegmentation));
  ASSERT_TRUE(LoadStateDict(*model, *ReadStateDictFile(Store() / "models/seg/model.pt")).ok());
  SlidingWindowOptions so;
  so.window = 32;
  so.overlap = 0.5;
  absl::StatusOr<VolumePrediction> whole =
      PredictVolume(ModelForward(model), input_, 0.5, 0.25, PredictionMode::kOrthoplane, so, true, nullptr);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const std::vector<uint8_t> labels = ReadLevel(Output("w1") / "0");
  EXPECT_EQ(labels, whole->labels.data);
  int64_t foreground = 0;
  for (uint8_t v : labels) foreground += v;
  EXPECT_GT(foreground, 0);
  EXPECT_LT(foreground, static_cast<int64_t>(labels.size())) << "a test of equality needs both classes";
  const std::vector<uint8_t> p = ReadLevel(probs);
  const torch::Tensor stored = torch::from_blob(const_cast<uint8_t*>(p.data()), {2, 10, 50, 70}, torch::kFloat);
  // Measured: 0 here; float32 sums of the same windows in another order
  // differ by a few ulp of values <= 1 (bound 1e-6).
  const double worst = (stored - whole->probabilities).abs().max().item<double>();
  std::printf("max |p(job) - p(in memory)| = %.3g\n", worst);
  EXPECT_LE(worst, 1e-6);

  // Debian's python3-zarr reads every level; NGFF 0.4 metadata and units.
  if (const std::string why = retina::testing::PythonMissing("zarr, numcodecs, numpy"); !why.empty()) GTEST_SKIP() << why;
  const fs::path raw = tmp_->path() / "expected.u8";
  ASSERT_TRUE(WriteFileAtomic(raw, std::string(whole->labels.data.begin(), whole->labels.data.end())).ok());
  std::string out;
  EXPECT_EQ(retina::testing::RunPython("zarr_peer.py", absl::StrCat("check-ome ", Output("w3").string(), " ",
                                                                     raw.string(), " 10 50 70 nanometer 30 6 6"),
                                       &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("ok levels=3"));
  EXPECT_EQ(retina::testing::RunPython(
                "zarr_peer.py",
                "check-probs " + (Store() / "jobs/w3/predictions/vol.probabilities.ome.zarr").string() + " 2 10 50 70 float32",
                &out),
            0)
      << out;
  // The job's record of what it wrote, and its final progress event.
  const std::string summary = *ReadFile(Store() / "jobs/w3/predictions.json");
  EXPECT_THAT(summary, HasSubstr("\"world_size\": 3"));
  EXPECT_THAT(summary, HasSubstr("\"chunk_rows\": 4"));
  EXPECT_THAT(*ReadFile(Store() / "jobs/w3/events.jsonl"), HasSubstr("\"chunks_done\":4,\"chunks_total\":4"));
}

TEST_F(Infer, AKilledAttemptResumesAndSkipsTheRowsItCommitted) {
  const std::string yaml = Yaml("chunks: [2, 64, 64], probabilities: uint8");
  // Attempt 1 stalls after committing 2 of 5 rows, and is SIGKILLed there.
  const fs::path config = tmp_->path() / "killed.yaml";
  ASSERT_TRUE(WriteFileAtomic(config, yaml).ok());
  const pid_t pid = Start({"run", "--config", config.string(), "--store", Store().string(), "--job", "killed"},
                          Log("killed-1"), {"RETINA_FAULTS=infer.stall_after_rows=2", "OMP_NUM_THREADS=1"});
  const fs::path done = Output("killed") / ".retina/done";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline &&
         ReadFile(Log("killed-1")).value_or("").find("stalling") == std::string::npos) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGKILL);
  EXPECT_EQ(Wait(pid), 128 + SIGKILL);
  EXPECT_TRUE(fs::exists(done / "0") && fs::exists(done / "1") && !fs::exists(done / "2"));
  EXPECT_FALSE(fs::exists(Output("killed") / ".zattrs")) << "an unfinished image must not look finished";
  // Attempt 2 skips them, says so, and the result equals an uninterrupted run.
  EXPECT_EQ(Run(yaml, "killed", 1), std::vector<int>{0});
  EXPECT_THAT(*ReadFile(Log("killed-0")), HasSubstr("5 chunk row(s); 2 already written by an earlier attempt, skipped"));
  EXPECT_EQ(Run(yaml, "straight", 1), std::vector<int>{0});
  EXPECT_EQ(ReadLevel(Output("killed") / "0"), ReadLevel(Output("straight") / "0"));
  EXPECT_EQ(ReadLevel(Store() / "jobs/killed/predictions/vol.probabilities.ome.zarr/0"),
            ReadLevel(Store() / "jobs/straight/predictions/vol.probabilities.ome.zarr/0"));
}

// The fault seam (common/fault_injection.h) refuses a fault it does not know:
// a misspelt RETINA_FAULTS never passes for a run without faults.
TEST_F(Infer, AnUnknownFaultIsRefusedBeforeTheRankStarts) {
  const fs::path config = tmp_->path() / "typo.yaml";
  ASSERT_TRUE(WriteFileAtomic(config, Yaml("chunks: [2, 64, 64]")).ok());
  const pid_t pid = Start({"run", "--config", config.string(), "--store", Store().string(), "--job", "typo"},
                          Log("typo"), {"RETINA_FAULTS=infer.stall_after_row=2"});
  EXPECT_EQ(Wait(pid), 2);
  const std::string log = ReadFile(Log("typo")).value_or("");
  EXPECT_THAT(log, HasSubstr("RETINA_FAULTS: 'infer.stall_after_row=2' is not a fault"));
  EXPECT_THAT(log, HasSubstr("infer.stall_after_rows=N"));
  EXPECT_FALSE(fs::exists(Store() / "jobs/typo/predictions"));
}

TEST_F(Infer, BadInputIsNamedBeforeAnyOutputIsWritten) {
  struct Case {
    std::string name, yaml, message;
  };
  fs::create_directories(Store() / "theirs/vol.ome.zarr");
  ASSERT_TRUE(WriteFileAtomic(Store() / "theirs/vol.ome.zarr/notes.txt", "keep me").ok());
  const std::vector<Case> cases = {
      {"missing", "kind: infer\ninfer: {weights: models/seg/model.pt, inputs: [in/nope.tif]}\n",
       "infer.inputs[0]: " + (Store() / "in/nope.tif").string()},
      {"noglob", "kind: infer\ninfer: {weights: models/seg/model.pt, inputs: ['in/*.png']}\n", "matches no image or volume"},
      {"theirs", Yaml("output: " + (Store() / "theirs").string()), "exists and was not written by an infer job"},
      {"classes", Yaml("classes: 3"), "infer.classes: 3 asked for"},
      {"pretrain", "kind: infer\ninfer: {weights: models/pre/model.pt, inputs: [in/vol.tif]}\n",
       "pre-training (reconstruction) checkpoint"},
  };
  for (const Case& c : cases) {
    // A model that does not match what the job asks is a job-file error (exit 2).
    EXPECT_EQ(Run(c.yaml, c.name, 1), std::vector<int>{c.name == "classes" ? 2 : 1}) << c.name;
    const std::string log = *ReadFile(Log(c.name + "-0"));
    if (c.name == "missing") {
      EXPECT_THAT(log, HasSubstr("infer.inputs[0]")) << log;
      EXPECT_THAT(log, HasSubstr("nope.tif: no such file")) << log;
    } else {
      EXPECT_THAT(log, HasSubstr(c.message)) << log;
    }
    EXPECT_FALSE(fs::exists(Store() / "jobs" / c.name / "predictions")) << c.name;
  }
  EXPECT_EQ(*ReadFile(Store() / "theirs/vol.ome.zarr/notes.txt"), "keep me");

  // A Zarr input with a truncated chunk: the job fails naming the chunk and
  // leaves no output that looks finished.
  ZarrArrayMeta m;
  m.shape = {10, 50, 70};
  m.chunks = {2, 50, 70};
  const fs::path damaged = Store() / "in/damaged.zarr";
  ASSERT_TRUE(CreateZarrArray(damaged, m).ok());
  ASSERT_TRUE(WriteZarrRegion(damaged, m, {0, 0, 0}, {10, 50, 70}, input_.data.data()).ok());
  const std::string chunk = *ReadFile(damaged / "3/0/0");
  ASSERT_TRUE(WriteFileAtomic(damaged / "3/0/0", chunk.substr(0, 10)).ok());
  EXPECT_EQ(Run("kind: infer\ninfer: {weights: models/seg/model.pt, inputs: [in/damaged.zarr], chunks: [2, 64, 64]}\n",
                "damaged", 1),
            std::vector<int>{1});
  EXPECT_THAT(*ReadFile(Log("damaged-0")), HasSubstr((damaged / "3/0/0").string()));
  EXPECT_FALSE(fs::exists(Store() / "jobs/damaged/predictions/damaged.ome.zarr/.zattrs"));
}

// Issue 29 item 1 at the rank: an NRRD header in the store whose data file
// is outside it. Run standalone the job reads it (the reference is real);
// as a service rank (--confine) it fails naming the header's data file,
// before any output is written (common/read_scope.h; the per-format cases
// are in confinement_test.cc).
TEST_F(Infer, AServiceRankDoesNotReadThroughAFileReferenceOutOfTheStore) {
  const fs::path outside = tmp_->path() / "outside";
  fs::create_directories(outside);
  ASSERT_TRUE(WriteFileAtomic(outside / "vol.raw",
                              std::string(input_.data.begin(), input_.data.end())).ok());
  ASSERT_TRUE(WriteFileAtomic(Store() / "in/ref.nhdr",
                              "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 70 50 10\nencoding: raw\n"
                              "data file: ../../outside/vol.raw\n\n").ok());
  const std::string yaml = "kind: infer\nruntime: {threads: 1}\ninfer: {weights: models/seg/model.pt, inputs: [in/ref.nhdr]}\n";
  EXPECT_EQ(Run(yaml, "ref-free", 1), std::vector<int>{0});
  EXPECT_TRUE(fs::exists(Store() / "jobs/ref-free/predictions/ref.ome.zarr/.zattrs"));
  EXPECT_EQ(Run(yaml, "ref-confined", 1, {}, {"--confine"}), std::vector<int>{1});
  const std::string log = *ReadFile(Log("ref-confined-0"));
  EXPECT_THAT(log, HasSubstr("ref.nhdr: data file"));
  EXPECT_THAT(log, HasSubstr("outside the store"));
  EXPECT_FALSE(fs::exists(Store() / "jobs/ref-confined/predictions/ref.ome.zarr/.zattrs"));
}

TEST_F(Infer, FoldersAndGlobsExpandInOrderWithUniqueNames) {
  const fs::path dir = tmp_->path() / "many";
  fs::create_directories(dir / "sub");
  for (const char* f : {"b.png", "a.tif", "notes.txt", "sub/a.tif"}) ASSERT_TRUE(WriteFileAtomic(dir / f, "x").ok());
  absl::StatusOr<std::vector<InferInput>> in = ExpandInferInputs({"many", "many/sub/*.tif", "many/a.tif"}, tmp_->path());
  ASSERT_TRUE(in.ok()) << in.status();
  std::vector<std::string> names;
  for (const InferInput& i : *in) names.push_back(i.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "a-2", "a-3"}));
  EXPECT_EQ((*in)[1].spec, (dir / "b.png").string());
  absl::StatusOr<std::vector<InferInput>> h5 = ExpandInferInputs({"many/x.h5:/raw"}, tmp_->path());
  EXPECT_TRUE(absl::IsNotFound(h5.status())) << h5.status();
  ASSERT_TRUE(WriteFileAtomic(dir / "x.h5", "x").ok());
  h5 = ExpandInferInputs({"many/x.h5:/raw"}, tmp_->path());
  ASSERT_TRUE(h5.ok()) << h5.status();
  EXPECT_EQ((*h5)[0].spec, (dir / "x.h5").string() + ":/raw");
  EXPECT_EQ((*h5)[0].name, "x");
}

TEST_F(Infer, TiffAndHdf5OutputsAreOneFilePerInputSpreadOverRanksWithUnits) {
  EXPECT_EQ(Run(Yaml("format: hdf5, probabilities: float32"), "h5", 2), (std::vector<int>{0, 0}));
  const fs::path h5 = Store() / "jobs/h5/predictions/vol.h5";
  absl::StatusOr<RawArray> labels = ReadHdf5(h5.string(), "/labels");
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_EQ(labels->unit, "nm");
  EXPECT_EQ(labels->shape, input_.shape);
  EXPECT_EQ(Run(Yaml("format: tiff"), "tif", 1), std::vector<int>{0});
  absl::StatusOr<RawArray> tif = ReadTiff((Store() / "jobs/tif/predictions/vol.tif").string());
  ASSERT_TRUE(tif.ok()) << tif.status();
  EXPECT_EQ(tif->unit, "nm");
  EXPECT_NEAR(tif->spacing[0], 30, 1e-9);
  EXPECT_EQ(tif->bytes, labels->bytes) << "stack labels do not depend on the output format";
  // A second run of the same job skips the written file.
  EXPECT_EQ(Run(Yaml("format: tiff"), "tif", 1), std::vector<int>{0});
  EXPECT_THAT(*ReadFile(Log("tif-0")), HasSubstr("1 already written by an earlier attempt, skipped"));
  if (const std::string why = retina::testing::PythonMissing("h5py, numpy, zarr"); !why.empty()) GTEST_SKIP() << why;
  std::string out;
  EXPECT_EQ(retina::testing::RunPython("zarr_peer.py", "check-h5 " + h5.string() + " nm 30 6 6", &out), 0) << out;
}

}  // namespace
}  // namespace retina::trainer
