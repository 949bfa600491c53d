// retina-serve against real peers: the server as a process, its gRPC API
// through the generated stubs, retina-infer for the equivalence, python3-zarr
// for the OME-Zarr it writes. docs/serving.md.
#include <sys/stat.h>

#include <future>
#include <limits>

#include <torch/torch.h>

#include "common/checkpoint_store.h"
#include "common/file_util.h"
#include "common/records.h"
#include "grpcpp/grpcpp.h"
#include "retina/v1/prediction_service.grpc.pb.h"
#include "tests/services/cluster.h"
#include "tests/trainer/mixed_labels.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"
#include "trainer/data/tools/synth.h"
#include "trainer/model/model_config.h"
#include "trainer/model/transunet.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/prediction/inference.h"

namespace retina::testing {
namespace {

using trainer::NamedModelConfig;
using trainer::VisionTransformer;

// Users: alice and bob, and root, an admin.
constexpr char kTokens[] = "tok-alice-0123456789 alice\ntok-bob-0123456789ab bob\ntok-root-0123456789a root admin\n";

// A tiny 2-class segmentation checkpoint (window 32) committed under
// `checkpoints` at `step`, with its normalisation; `seed` makes other weights.
// The head's bias is shifted so that about half the voxels of `volume` are
// class 1 (labels are then mixed, and a reload changes them).
void CommitModel(const fs::path& checkpoints, int64_t step, uint64_t seed, const trainer::Volume& volume) {
  torch::manual_seed(seed);
  VisionTransformer seg(*NamedModelConfig("tiny", 32, 2, trainer::ModelHead::kSegmentation));
  MixLabels(seg, volume, 32, 0.5, 0.25);
  absl::StatusOr<CheckpointWriter> w = CheckpointWriter::Begin(checkpoints, step);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE(trainer::SaveStateDictFile(trainer::GetStateDict(*seg), w->temp_dir() / "model.pt").ok());
  ASSERT_TRUE(w->AddFile("model.pt").ok());
  CheckpointState state;
  state.step = step;
  state.kind = "finetune";
  state.model = "tiny";
  state.image_size = 32;
  state.classes = 2;
  state.mean = 0.5;
  state.std = 0.25;
  ASSERT_TRUE(w->WriteFile("state.json", EncodeCheckpointState(state)).ok());
  ASSERT_TRUE(w->Commit().ok());
}

// A retina-serve process on loopback.
class Server {
 public:
  Server(const fs::path& root, const std::string& name, std::vector<std::string> extra, const std::string& faults = "")
      : root_(root), ready_(root / (name + ".ready")) {
    fs::remove(ready_);
    std::vector<std::string> argv = {"/usr/bin/env", "RETINA_FAULTS=" + faults, BinDir() + "/services/retina-serve",
                                     "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                                     "--ready-file", ready_.string(), "--threads", "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    log_ = root / (name + ".log");
    child_ = std::make_unique<Child>(argv, log_);
    // The models load before the ready file is written (a few seconds under load).
    WaitFor([&] { return fs::exists(ready_) || !child_->Running(); }, std::chrono::seconds(120));
    if (!fs::exists(ready_)) return;
    const nlohmann::json j = ReadReady(ready_);
    port_ = j.value("grpc_port", 0);
    metrics_port_ = j.value("metrics_port", 0);
  }
  bool ok() const { return port_ > 0; }
  std::string Log() const { return ReadFile(log_).value_or(""); }
  Child& child() { return *child_; }
  std::unique_ptr<v1::PredictionService::Stub> Stub() const {
    return v1::PredictionService::NewStub(*services::MakeChannel("127.0.0.1:" + std::to_string(port_), ""));
  }
  double Metric(const std::string& series) const { return Sample(HttpGet(metrics_port_, "/metrics"), series); }

 private:
  fs::path root_, ready_, log_;
  std::unique_ptr<Child> child_;
  int port_ = 0, metrics_port_ = 0;
};

std::string RunCapture(const std::string& cmd, int* status) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::string text;
  char buf[512];
  while (p && fgets(buf, sizeof buf, p)) text += buf;
  *status = p ? pclose(p) : -1;
  return text;
}

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token, double seconds = 60) {
  return services::NewCallContext(token, absl::Seconds(seconds));
}

struct Answer {
  grpc::Status status;
  v1::PredictResponse response;
  std::string retry_after;  // the trailing hint, when given
};

Answer Call(const Server& s, const v1::PredictRequest& req, const std::string& token = "tok-alice-0123456789",
            double seconds = 60) {
  Answer a;
  auto ctx = Ctx(token, seconds);
  a.status = s.Stub()->Predict(ctx.get(), req, &a.response);
  for (const auto& [k, v] : ctx->GetServerTrailingMetadata()) {
    if (k == "retry-after-ms") a.retry_after = std::string(v.data(), v.size());
  }
  return a;
}

v1::PredictRequest RegionRequest(const std::string& model, const std::string& volume, std::array<int64_t, 6> box) {
  v1::PredictRequest r;
  r.set_model(model);
  v1::Region* g = r.mutable_region();
  g->set_volume(volume);
  g->set_z0(box[0]);
  g->set_z1(box[1]);
  g->set_y0(box[2]);
  g->set_y1(box[3]);
  g->set_x0(box[4]);
  g->set_x1(box[5]);
  return r;
}

class ServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new ScopedTempDir("serve-");
    fs::create_directories(Store() / "vols");
    trainer::SynthOptions o;
    o.shape = {10, 50, 70};
    o.seed = 4;
    volume_ = new trainer::Volume(trainer::Synthesize(o).image);
    volume_->spacing = {30, 6, 6};
    {  // with its unit (nm), as microscopes write it
      absl::StatusOr<std::unique_ptr<trainer::PlaneWriter>> w = trainer::OpenPlaneWriter(
          (Store() / "vols/vol.tif").string(), volume_->shape, volume_->spacing, true, 0, "nm");
      ASSERT_TRUE(w.ok()) << w.status();
      ASSERT_TRUE((*w)->Append(10, volume_->data.data(), nullptr, 0).ok());
      ASSERT_TRUE((*w)->Finish().ok());
    }
    CommitModel(Store() / "jobs/m/checkpoints", 1, 1, *volume_);
    CommitModel(Store() / "models/alice", 1, 2, *volume_);
    ASSERT_TRUE(WriteFileAtomic(Tokens(), kTokens).ok());
    fs::permissions(Tokens(), fs::perms::owner_read | fs::perms::owner_write);
  }
  static void TearDownTestSuite() {
    delete volume_;
    delete tmp_;
  }
  static fs::path Root() { return tmp_->path(); }
  static fs::path Store() { return tmp_->path() / "store"; }
  static fs::path Tokens() { return tmp_->path() / "tokens"; }
  // seg follows jobs/m's LATEST and is everyone's; alice's is pinned and hers.
  static std::vector<std::string> Models() {
    return {"--store", Store().string(), "--client-tokens", Tokens().string(),
            "--model", "seg=jobs/m/checkpoints/LATEST", "--model", "alices=models/alice/step-00000001",
            "--model-owner", "alices=alice", "--reload-s", "0.2"};
  }

  // retina-infer on the volume cropped to `crop` (z0, z1, y0, y1, x0, x1):
  // labels and probabilities [C, z, y, x].
  static std::pair<trainer::RawArray, trainer::RawArray> InferCrop(const std::array<int64_t, 6>& c,
                                                                   const std::string& mode, const std::string& name) {
    trainer::Volume crop;
    crop.shape = {c[1] - c[0], c[3] - c[2], c[5] - c[4]};
    crop.spacing = volume_->spacing;
    for (int64_t z = c[0]; z < c[1]; ++z) {
      for (int64_t y = c[2]; y < c[3]; ++y) {
        const uint8_t* row = volume_->data.data() + (z * volume_->shape[1] + y) * volume_->shape[2];
        crop.data.insert(crop.data.end(), row + c[4], row + c[5]);
      }
    }
    const fs::path in = Root() / (name + ".tif"), out = Root() / (name + ".h5");
    EXPECT_TRUE(trainer::WriteTiff(in.string(), crop, true).ok());
    const std::string cmd = BinDir() + "/trainer/retina-infer --weights " +
                            (Store() / "jobs/m/checkpoints/LATEST").string() + " -i " + in.string() + " -o " +
                            out.string() + " --mode " + mode + " --probabilities > " + (Root() / (name + ".log")).string() +
                            " 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    absl::StatusOr<trainer::RawArray> labels = trainer::ReadHdf5(out.string(), "labels");
    EXPECT_TRUE(labels.ok()) << labels.status();
    // The [C, Z, Y, X] probabilities through h5py (the readers take 2 or 3 axes).
    const fs::path raw = Root() / (name + ".probabilities.bin");
    const std::string dump = Python() + " -c \"import sys, h5py, numpy as np; "
                             "np.ascontiguousarray(h5py.File(sys.argv[1], 'r')['probabilities'][...], dtype=np.float32)"
                             ".tofile(sys.argv[2])\" " + out.string() + " " + raw.string();
    EXPECT_EQ(std::system(dump.c_str()), 0) << dump;
    trainer::RawArray probs;
    probs.dtype = trainer::DType::kFloat32;
    const std::string bytes = ReadFile(raw).value_or("");
    probs.bytes.assign(bytes.begin(), bytes.end());
    return {labels.ok() ? *labels : trainer::RawArray{}, probs};
  }

  static ScopedTempDir* tmp_;
  static trainer::Volume* volume_;
};
ScopedTempDir* ServeTest::tmp_ = nullptr;
trainer::Volume* ServeTest::volume_ = nullptr;

// The region rule (docs/serving.md): the region's part of retina-infer's
// prediction of the volume cropped to the region grown by the context (in z
// too for orthoplane), clamped to the volume. Labels bitwise, probabilities
// within 1e-6 (measured 1.2e-7, 2 ulps at 0.5: the two processes' forward
// passes round differently, also with equal batches of windows).
TEST_F(ServeTest, ARegionEqualsRetinaInferOnTheCropWithItsContext) {
  if (const std::string missing = PythonMissing("h5py, numpy"); !missing.empty()) GTEST_SKIP() << missing;
  Server server(Root(), "equivalence", Models());
  ASSERT_TRUE(server.ok()) << server.Log();
  const std::array<int64_t, 6> box{2, 7, 10, 40, 20, 60};
  const int64_t context = 12;
  for (const std::string mode : {"stack", "orthoplane"}) {
    SCOPED_TRACE(mode);
    v1::PredictRequest req = RegionRequest("seg", "vols/vol.tif", box);
    req.set_mode(mode);
    req.set_context(context);
    req.set_probabilities(true);
    req.set_uncertainty(true);
    const Answer a = Call(server, req);
    ASSERT_TRUE(a.status.ok()) << a.status.error_message();
    // The uncertainty map: NormalisedEntropy of the answer's probabilities
    // (the same float32 operations on the same values; measured equal, the
    // bound is 1 ulp at 1).
    const v1::Array& u = a.response.uncertainty();
    ASSERT_EQ(std::vector<int64_t>(u.shape().begin(), u.shape().end()), (std::vector<int64_t>{5, 30, 40}));
    ASSERT_EQ(u.dtype(), "float32");
    const torch::Tensor expected = trainer::NormalisedEntropy(
        torch::from_blob(const_cast<char*>(a.response.probabilities().data().data()), {2, 5, 30, 40}, torch::kFloat));
    const torch::Tensor got_u = torch::from_blob(const_cast<char*>(u.data().data()), {5, 30, 40}, torch::kFloat);
    EXPECT_LE((got_u - expected).abs().max().item<double>(), 1.2e-7);
    EXPECT_GT(got_u.max().item<double>(), 0.0);
    const bool ortho = mode == "orthoplane";
    const std::array<int64_t, 6> crop{ortho ? std::max<int64_t>(0, box[0] - context) : box[0],
                                      ortho ? std::min<int64_t>(10, box[1] + context) : box[1],
                                      std::max<int64_t>(0, box[2] - context), std::min<int64_t>(50, box[3] + context),
                                      std::max<int64_t>(0, box[4] - context), std::min<int64_t>(70, box[5] + context)};
    const auto [labels, probs] = InferCrop(crop, mode, "crop-" + mode);
    const v1::Array& got = a.response.labels();
    ASSERT_EQ(std::vector<int64_t>(got.shape().begin(), got.shape().end()), (std::vector<int64_t>{5, 30, 40}));
    const int64_t cy = crop[3] - crop[2], cx = crop[5] - crop[4], cz = crop[1] - crop[0];
    int64_t differ = 0, ones = 0;
    double max_diff = 0;
    const float* p = reinterpret_cast<const float*>(a.response.probabilities().data().data());
    const float* q = probs.as<float>();
    for (int64_t z = 0; z < 5; ++z) {
      for (int64_t y = 0; y < 30; ++y) {
        for (int64_t x = 0; x < 40; ++x) {
          const int64_t at = ((z + box[0] - crop[0]) * cy + y + box[2] - crop[2]) * cx + x + box[4] - crop[4];
          const uint8_t mine = static_cast<uint8_t>(got.data()[(z * 30 + y) * 40 + x]);
          differ += mine != labels.bytes[at];
          ones += mine;
          for (int c = 0; c < 2; ++c) {
            max_diff = std::max<double>(max_diff, std::abs(p[((c * 5 + z) * 30 + y) * 40 + x] - q[c * cz * cy * cx + at]));
          }
        }
      }
    }
    EXPECT_EQ(differ, 0);
    EXPECT_LE(max_diff, 1e-6);
    EXPECT_GT(ones, 0);  // mixed labels: the comparison can fail
    EXPECT_LT(ones, 5 * 30 * 40);
    std::cout << mode << ": labels differ at " << differ << " voxels, probabilities by at most " << max_diff << "\n";
  }
}

// An inline image and a file's bytes are predicted as retina-infer predicts
// the file; the labels can come back as a TIFF.
TEST_F(ServeTest, InlineArraysAndFilesEqualRetinaInfer) {
  if (const std::string missing = PythonMissing("h5py, numpy"); !missing.empty()) GTEST_SKIP() << missing;
  Server server(Root(), "inline", Models());
  ASSERT_TRUE(server.ok()) << server.Log();
  const auto [labels, probs] = InferCrop({3, 4, 0, 50, 0, 70}, "2d", "plane");
  v1::PredictRequest req;
  req.set_model("seg");
  v1::Array* a = req.mutable_array();
  a->set_dtype("uint8");
  a->add_shape(50);
  a->add_shape(70);
  a->set_data(volume_->data.data() + 3 * 50 * 70, 50 * 70);
  const Answer inline_answer = Call(server, req);
  ASSERT_TRUE(inline_answer.status.ok()) << inline_answer.status.error_message();
  EXPECT_EQ(inline_answer.response.labels().shape_size(), 2);
  EXPECT_EQ(inline_answer.response.labels().data(), std::string(labels.bytes.begin(), labels.bytes.end()));

  v1::PredictRequest file;
  file.set_model("seg");
  file.mutable_file()->set_name("plane.tif");
  file.mutable_file()->set_data(*ReadFile(Root() / "plane.tif"));
  file.set_labels_tiff(true);
  const Answer file_answer = Call(server, file);
  ASSERT_TRUE(file_answer.status.ok()) << file_answer.status.error_message();
  ASSERT_TRUE(WriteFileAtomic(Root() / "answer.tif", file_answer.response.labels_file()).ok());
  absl::StatusOr<trainer::RawArray> back = trainer::ReadTiff((Root() / "answer.tif").string());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->bytes, labels.bytes);
  EXPECT_GT(file_answer.response.windows(), 0);
}

// Bad requests are refused with the code and the field, before any work.
TEST_F(ServeTest, BadRequestsAreRefusedNamingTheField) {
  Server server(Root(), "bad", Models());
  ASSERT_TRUE(server.ok()) << server.Log();
  struct Case {
    std::string what;
    v1::PredictRequest req;
    grpc::StatusCode code;
    std::string says;
  };
  std::vector<Case> cases;
  auto array = [](const std::string& dtype, std::vector<int64_t> shape, size_t bytes) {
    v1::PredictRequest r;
    r.set_model("seg");
    r.mutable_array()->set_dtype(dtype);
    for (int64_t s : shape) r.mutable_array()->add_shape(s);
    r.mutable_array()->set_data(std::string(bytes, '\x10'));
    return r;
  };
  cases.push_back({"wrong dtype", array("complex64", {8, 8}, 64), grpc::StatusCode::INVALID_ARGUMENT, "array.dtype"});
  cases.push_back({"bytes do not fit the shape", array("uint8", {8, 8}, 63), grpc::StatusCode::INVALID_ARGUMENT,
                   "array.data: 63 bytes"});
  cases.push_back({"four axes", array("uint8", {1, 2, 8, 8}, 128), grpc::StatusCode::INVALID_ARGUMENT, "array.shape"});
  cases.push_back({"uint16 without scaling", array("uint16", {8, 8}, 128), grpc::StatusCode::INVALID_ARGUMENT, "uint8"});
  v1::PredictRequest unknown = array("uint8", {8, 8}, 64);
  unknown.set_model("nope");
  cases.push_back({"unknown model", unknown, grpc::StatusCode::NOT_FOUND, "no model 'nope' here (yours: alices, seg)"});
  cases.push_back({"region past the volume", RegionRequest("seg", "vols/vol.tif", {0, 11, 0, 10, 0, 10}),
                   grpc::StatusCode::INVALID_ARGUMENT, "region.z0:z1: 0:11"});
  cases.push_back({"empty region", RegionRequest("seg", "vols/vol.tif", {0, 1, 5, 5, 0, 10}),
                   grpc::StatusCode::INVALID_ARGUMENT, "region.y0:y1"});
  cases.push_back({"a path outside the store", RegionRequest("seg", "../vol.tif", {0, 1, 0, 8, 0, 8}),
                   grpc::StatusCode::PERMISSION_DENIED, "region.volume"});
  cases.push_back({"an absolute path outside", RegionRequest("seg", "/etc/passwd", {0, 1, 0, 8, 0, 8}),
                   grpc::StatusCode::PERMISSION_DENIED, "region.volume"});
  v1::PredictRequest escape = RegionRequest("seg", "vols/vol.tif", {0, 10, 0, 50, 0, 70});
  escape.set_output("../../jobs/m/x.ome.zarr");
  cases.push_back({"an output outside the caller's folder", escape, grpc::StatusCode::INVALID_ARGUMENT, "output"});
  v1::PredictRequest mode = array("uint8", {8, 8}, 64);
  mode.set_mode("3d");
  cases.push_back({"unknown mode", mode, grpc::StatusCode::INVALID_ARGUMENT, "mode: '3d'"});
  v1::PredictRequest steep = array("uint8", {8, 8}, 64);
  steep.set_overlap(0.999);  // a window step of 1: thousands of times the windows
  cases.push_back({"overlap near 1", steep, grpc::StatusCode::INVALID_ARGUMENT, "overlap: must be in [0, 0.95]"});
  v1::PredictRequest tiny_chunks = RegionRequest("seg", "vols/vol.tif", {0, 1, 0, 1, 0, 1});
  tiny_chunks.set_output("views/voxels.ome.zarr");
  for (int64_t c : {1, 1, 1}) tiny_chunks.add_output_chunks(c);
  cases.push_back({"a file per voxel", tiny_chunks, grpc::StatusCode::INVALID_ARGUMENT, "output_chunks: 1x1x1"});
  v1::PredictRequest none;
  none.set_model("seg");
  cases.push_back({"no input", none, grpc::StatusCode::INVALID_ARGUMENT, "input"});
  v1::PredictRequest file;
  file.set_model("seg");
  file.mutable_file()->set_name("x.tif");
  file.mutable_file()->set_data("not a tiff");
  cases.push_back({"a file that does not decode", file, grpc::StatusCode::INVALID_ARGUMENT, "file 'x.tif'"});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const Answer a = Call(server, c.req);
    EXPECT_EQ(a.status.error_code(), c.code) << a.status.error_message();
    EXPECT_NE(a.status.error_message().find(c.says), std::string::npos) << a.status.error_message();
  }
  // Nothing was written for them, and the server still answers.
  EXPECT_FALSE(fs::exists(Store() / "jobs/m/x.ome.zarr"));
  EXPECT_FALSE(fs::exists(Store() / "served/alice/views/voxels.ome.zarr"));
  // A context past any extent is clamped (no overflow), and answered.
  v1::PredictRequest wide = RegionRequest("seg", "vols/vol.tif", {0, 1, 0, 8, 0, 8});
  wide.set_context(std::numeric_limits<int64_t>::max());
  EXPECT_TRUE(Call(server, wide).status.ok());
  EXPECT_TRUE(Call(server, array("uint8", {8, 8}, 64)).status.ok());
}

// A model with an owner answers its owner and admins; tokens are required.
TEST_F(ServeTest, ModelsAnswerTheirOwnersAndAdminsOnly) {
  Server server(Root(), "access", Models());
  ASSERT_TRUE(server.ok()) << server.Log();
  v1::PredictRequest req;
  req.set_model("alices");
  req.mutable_array()->set_dtype("uint8");
  req.mutable_array()->add_shape(32);
  req.mutable_array()->add_shape(32);
  req.mutable_array()->set_data(std::string(32 * 32, '\x40'));
  EXPECT_TRUE(Call(server, req, "tok-alice-0123456789").status.ok());
  EXPECT_TRUE(Call(server, req, "tok-root-0123456789a").status.ok());
  const Answer bob = Call(server, req, "tok-bob-0123456789ab");
  EXPECT_EQ(bob.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(bob.status.error_message().find("'alices' is alice's"), std::string::npos) << bob.status.error_message();
  EXPECT_EQ(Call(server, req, "").status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Call(server, req, "tok-mallory-012345678").status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  req.set_model("seg");
  EXPECT_TRUE(Call(server, req, "tok-bob-0123456789ab").status.ok());
  // An unknown name lists only the caller's models.
  req.set_model("nope");
  const Answer unknown = Call(server, req, "tok-bob-0123456789ab");
  EXPECT_EQ(unknown.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(unknown.status.error_message().find("(yours: seg)"), std::string::npos) << unknown.status.error_message();
  // ListModels shows each caller what they may use.
  for (const auto& [token, count] : std::vector<std::pair<std::string, int>>{{"tok-bob-0123456789ab", 1}, {"tok-alice-0123456789", 2}, {"tok-root-0123456789a", 2}}) {
    v1::ListModelsResponse list;
    ASSERT_TRUE(server.Stub()->ListModels(Ctx(token).get(), {}, &list).ok());
    EXPECT_EQ(list.models_size(), count) << token;
  }
}

// Hot reload: a new checkpoint behind LATEST is served, a request in flight
// finishes on the weights it started with, and a checkpoint that fails its
// MANIFEST is refused while the old one keeps serving.
TEST_F(ServeTest, HotReloadFollowsLatestAndRefusesACheckpointThatFailsItsManifest) {
  // Forward passes take 1.5 s: a request is in flight while the checkpoint changes.
  Server server(Root(), "reload", Models(), "serve.stall_forward_ms=1500");
  ASSERT_TRUE(server.ok()) << server.Log();
  const fs::path checkpoints = Store() / "jobs/m/checkpoints";
  v1::PredictRequest req = RegionRequest("seg", "vols/vol.tif", {4, 5, 0, 50, 0, 70});
  req.set_probabilities(true);
  const Answer before = Call(server, req);
  ASSERT_TRUE(before.status.ok()) << before.status.error_message();
  EXPECT_NE(before.response.checkpoint().find("step-00000001"), std::string::npos);

  auto in_flight = std::async(std::launch::async, [&] { return Call(server, req); });
  ASSERT_TRUE(WaitFor([&] { return server.Metric("retina_serve_forward_running") == 1; }, std::chrono::seconds(30)));
  CommitModel(checkpoints, 2, 7, *volume_);
  auto version = [&] {
    v1::ListModelsResponse list;
    server.Stub()->ListModels(Ctx("tok-root-0123456789a").get(), {}, &list);
    for (const auto& m : list.models()) {
      if (m.name() == "seg") return m.version();
    }
    return int64_t{0};
  };
  ASSERT_TRUE(WaitFor([&] { return version() == 2; }, std::chrono::seconds(30))) << server.Log();
  const Answer old = in_flight.get();
  ASSERT_TRUE(old.status.ok()) << old.status.error_message();
  EXPECT_NE(old.response.checkpoint().find("step-00000001"), std::string::npos) << old.response.checkpoint();
  EXPECT_TRUE(old.response.probabilities().data() == before.response.probabilities().data()) << "the request in flight mixed in the new weights";

  const Answer after = Call(server, req);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_NE(after.response.checkpoint().find("step-00000002"), std::string::npos);
  EXPECT_TRUE(after.response.probabilities().data() != before.response.probabilities().data()) << "the new weights answer alike";

  // step 3: committed, then its model.pt damaged (a disk error, a partial copy).
  CommitModel(checkpoints, 3, 9, *volume_);
  {
    std::fstream f(checkpoints / "step-00000003/model.pt", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x55');
  }
  ASSERT_TRUE(WaitFor([&] { return server.Metric("retina_serve_model_reloads_refused_total") == 1; },
                      std::chrono::seconds(30)))
      << server.Log();
  EXPECT_EQ(version(), 2);
  const Answer kept = Call(server, req);
  ASSERT_TRUE(kept.status.ok());
  EXPECT_NE(kept.response.checkpoint().find("step-00000002"), std::string::npos);
  EXPECT_TRUE(kept.response.probabilities().data() == after.response.probabilities().data()) << "the refused checkpoint answered";
  EXPECT_EQ(server.Metric("retina_serve_model_loads_total"), 3);  // seg, alices, seg v2
  // Put LATEST back for the other tests.
  fs::remove_all(checkpoints / "step-00000003");
  fs::remove_all(checkpoints / "step-00000002");
  ASSERT_TRUE(WriteFileAtomic(checkpoints / "LATEST", "step-00000001\n").ok());
}

// The queue is bounded (RESOURCE_EXHAUSTED with a retry hint), a request
// whose deadline passes while it waits is dropped before its forward pass,
// and SIGTERM drains: the call in flight finishes, then the server exits.
TEST_F(ServeTest, TheQueueIsBoundedDeadlinesDropWaitingWindowsAndSigtermDrains) {
  std::vector<std::string> flags = Models();
  flags.insert(flags.end(), {"--max-queue-windows", "1", "--max-batch", "1", "--max-delay-ms", "0"});
  Server server(Root(), "queue", flags, "serve.stall_forward_ms=3000");
  ASSERT_TRUE(server.ok()) << server.Log();
  v1::PredictRequest one;  // one 32x32 window
  one.set_model("seg");
  one.mutable_array()->set_dtype("uint8");
  one.mutable_array()->add_shape(32);
  one.mutable_array()->add_shape(32);
  one.mutable_array()->set_data(std::string(32 * 32, '\x60'));
  // A: in the forward pass (stalled 3 s).
  auto a = std::async(std::launch::async, [&] { return Call(server, one); });
  ASSERT_TRUE(WaitFor([&] { return server.Metric("retina_serve_forward_running") == 1; }, std::chrono::seconds(30)));
  // B: queued behind it, with a deadline that passes before A's pass ends.
  auto b = std::async(std::launch::async, [&] { return Call(server, one, "tok-alice-0123456789", 1.0); });
  ASSERT_TRUE(WaitFor([&] { return server.Metric("retina_serve_queue_windows") == 1; }, std::chrono::seconds(30)));
  // C: the queue is full.
  const Answer c = Call(server, one);
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << c.status.error_message();
  EXPECT_NE(c.status.error_message().find("--max-queue-windows"), std::string::npos);
  EXPECT_FALSE(c.retry_after.empty());
  EXPECT_GE(std::atoi(c.retry_after.c_str()), 10);
  EXPECT_EQ(b.get().status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(a.get().status.ok());
  // B's window was dropped, never run: one window ran (A's).
  ASSERT_TRUE(WaitFor([&] { return server.Metric("retina_serve_dropped_windows_groups_total{model=\"seg\",why=\"deadline\"}") == 1; },
                      std::chrono::seconds(30)));
  EXPECT_EQ(server.Metric("retina_serve_windows_total{model=\"seg\"}"), 1);
  EXPECT_EQ(server.Metric("retina_serve_dropped_windows_groups_total{model=\"seg\",why=\"full\"}"), 1);

  // A request cancelled by its caller while it waits is dropped before its forward pass.
  auto a2 = std::async(std::launch::async, [&] { return Call(server, one); });
  ASSERT_TRUE(WaitFor([&] { return server.Metric("retina_serve_forward_running") == 1; }, std::chrono::seconds(30)));
  auto cancelled_ctx = Ctx("tok-alice-0123456789");
  auto e = std::async(std::launch::async, [&] {
    v1::PredictResponse resp;
    return server.Stub()->Predict(cancelled_ctx.get(), one, &resp);
  });
  ASSERT_TRUE(WaitFor([&] { return server.Metric("retina_serve_queue_windows") == 1; }, std::chrono::seconds(30)));
  cancelled_ctx->TryCancel();
  EXPECT_EQ(e.get().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(a2.get().status.ok());
  ASSERT_TRUE(WaitFor([&] { return server.Metric("retina_serve_dropped_windows_groups_total{model=\"seg\",why=\"cancelled\"}") == 1; },
                      std::chrono::seconds(30)));
  EXPECT_EQ(server.Metric("retina_serve_windows_total{model=\"seg\"}"), 2);  // A's and A2's only

  // Health: SERVING with the models loaded (grpc.health.v1 through python3-grpcio).
  if (PythonMissing("grpc").empty()) {
    const std::string log = server.Log();
    const std::string port = log.substr(log.find("gRPC on port ") + 13);
    int st = 0;
    const std::string health = RunCapture(Python() + " -c \"import grpc, sys; ch = grpc.insecure_channel(sys.argv[1]); "
                                          "r = ch.unary_unary('/grpc.health.v1.Health/Check')(b'', timeout=5); "
                                          "print({b'\\x08\\x01': 'SERVING', b'\\x08\\x02': 'NOT_SERVING'}.get(r, repr(r)))\" "
                                          "127.0.0.1:" + port.substr(0, port.find(' ')),
                                          &st);
    EXPECT_EQ(health, "SERVING\n");
  }

  // A call in flight when SIGTERM arrives is answered; then the server exits 0.
  auto d = std::async(std::launch::async, [&] { return Call(server, one); });
  ASSERT_TRUE(WaitFor([&] { return server.Metric("retina_serve_forward_running") == 1; }, std::chrono::seconds(30)));
  server.child().Signal(SIGTERM);
  EXPECT_TRUE(d.get().status.ok());
  const int st = server.child().Kill(0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st << "\n" << server.Log();
  EXPECT_NE(server.Log().find("draining"), std::string::npos);
}

// Region answers written into an OME-Zarr in the store: chunk by chunk, each
// region on the chunk grid, readable by python3-zarr as they land, equal to
// the inline answer.
TEST_F(ServeTest, RegionsFillAnOmeZarrInTheCallersFolder) {
  if (const std::string missing = PythonMissing("zarr, numpy"); !missing.empty()) GTEST_SKIP() << missing;
  Server server(Root(), "zarr", Models());
  ASSERT_TRUE(server.ok()) << server.Log();
  auto request = [](std::array<int64_t, 6> box) {
    v1::PredictRequest r = RegionRequest("seg", "vols/vol.tif", box);
    r.set_output("views/vol-seg.ome.zarr");
    for (int64_t c : {4, 32, 32}) r.add_output_chunks(c);
    return r;
  };
  const Answer first = Call(server, request({0, 4, 0, 32, 32, 64}));
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  const fs::path out = Store() / "served/alice/views/vol-seg.ome.zarr";
  EXPECT_EQ(first.response.output(), out.string());
  const Answer edge = Call(server, request({8, 10, 32, 50, 64, 70}));  // ends at the volume's edge
  ASSERT_TRUE(edge.status.ok()) << edge.status.error_message();
  const Answer off = Call(server, request({1, 4, 0, 32, 0, 32}));
  EXPECT_EQ(off.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(off.status.error_message().find("chunk grid"), std::string::npos) << off.status.error_message();
  // Another user writes under their own folder, never into alice's.
  const Answer bob = Call(server, request({0, 4, 0, 32, 0, 32}), "tok-bob-0123456789ab");
  ASSERT_TRUE(bob.status.ok()) << bob.status.error_message();
  EXPECT_EQ(bob.response.output(), (Store() / "served/bob/views/vol-seg.ome.zarr").string());

  // python3-zarr reads the image; the written regions equal the inline answers.
  v1::PredictRequest inline_req = RegionRequest("seg", "vols/vol.tif", {0, 4, 0, 32, 32, 64});
  const Answer inline_answer = Call(server, inline_req);
  ASSERT_TRUE(inline_answer.status.ok());
  ASSERT_TRUE(WriteFileAtomic(Root() / "inline.bin", inline_answer.response.labels().data()).ok());
  const std::string script =
      "import sys, zarr, numpy as np\n"
      "g = zarr.open_group(sys.argv[1], mode='r')\n"
      "ms = g.attrs['multiscales'][0]\n"
      "assert [a['name'] for a in ms['axes']] == ['z', 'y', 'x'], ms\n"
      "assert ms['axes'][2]['unit'] == 'nanometer', ms\n"
      "a = g['0']\n"
      "assert a.shape == (10, 50, 70) and a.chunks == (4, 32, 32), (a.shape, a.chunks)\n"
      "want = np.fromfile(sys.argv[2], dtype=np.uint8).reshape(4, 32, 32)\n"
      "assert (a[0:4, 0:32, 32:64] == want).all()\n"
      "assert (a[0:4, 0:32, 0:32] == 0).all()  # not asked for yet: fill\n"
      "print('zarr ok', int(a[8:10, 32:50, 64:70].sum()))\n";
  ASSERT_TRUE(WriteFileAtomic(Root() / "check.py", script).ok());
  const std::string cmd = Python() + " " + (Root() / "check.py").string() + " " + out.string() + " " +
                          (Root() / "inline.bin").string() + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string text;
  char buf[512];
  while (p && fgets(buf, sizeof buf, p)) text += buf;
  EXPECT_EQ(p ? pclose(p) : -1, 0) << text;
  EXPECT_NE(text.find("zarr ok"), std::string::npos) << text;
}

// A request larger than the server's limit is refused naming the limit.
TEST_F(ServeTest, ARequestPastTheMemoryLimitIsRefusedNamingIt) {
  std::vector<std::string> flags = Models();
  flags.insert(flags.end(), {"--max-request-mb", "1"});
  Server server(Root(), "limit", flags);
  ASSERT_TRUE(server.ok()) << server.Log();
  v1::PredictRequest whole;  // 600 x 600 with probabilities: about 7 MiB of buffers
  whole.set_model("seg");
  whole.mutable_array()->set_dtype("uint8");
  whole.mutable_array()->add_shape(600);
  whole.mutable_array()->add_shape(600);
  whole.mutable_array()->set_data(std::string(600 * 600, '\x30'));
  whole.set_probabilities(true);
  const Answer a = Call(server, whole);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << a.status.error_message();
  EXPECT_NE(a.status.error_message().find("--max-request-mb"), std::string::npos) << a.status.error_message();
  EXPECT_TRUE(Call(server, RegionRequest("seg", "vols/vol.tif", {0, 1, 0, 32, 0, 32})).status.ok());
}

}  // namespace
}  // namespace retina::testing

namespace retina::testing {
namespace {

// The pids of retina-serve processes serving job `id` (argv[0] retina-serve, "run", "--job" id).
std::vector<pid_t> ServePids(const std::string& id) {
  std::vector<pid_t> pids;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string cmdline = ReadFile(e.path() / "cmdline").value_or("");
    std::vector<std::string> argv;
    for (size_t at = 0; at < cmdline.size();) {
      const size_t end = cmdline.find('\0', at);
      argv.push_back(cmdline.substr(at, end - at));
      at = end == std::string::npos ? cmdline.size() : end + 1;
    }
    if (argv.size() < 2 || fs::path(argv[0]).filename() != "retina-serve" || argv[1] != "run") continue;
    for (size_t i = 2; i + 1 < argv.size(); ++i) {
      if (argv[i] == "--job" && argv[i + 1] == id) pids.push_back(std::stoi(name));
    }
  }
  return pids;
}


// The Python example of docs/serving.md, on grpcio and the generated stubs,
// against the real server: its labels equal the C++ client's.
TEST_F(ServeTest, ThePythonExampleSegmentsThroughTheGeneratedStubs) {
  if (const std::string missing = PythonMissing("grpc, numpy, tifffile"); !missing.empty()) GTEST_SKIP() << missing;
  const fs::path stubs = fs::path(BinDir()) / "proto/python/retina/v1/prediction_service_pb2_grpc.py";
  ASSERT_TRUE(fs::exists(stubs)) << stubs << " not generated (grpc_python_plugin: protobuf-compiler-grpc)";
  Server server(Root(), "python", Models());
  ASSERT_TRUE(server.ok()) << server.Log();
  ASSERT_TRUE(WriteFileAtomic(Root() / "alice.token", "tok-alice-0123456789\n").ok());
  const std::string port = server.Log().substr(server.Log().find("gRPC on port ") + 13);
  const std::string cmd = "PYTHONPATH=" + BinDir() + "/proto/python " + Python() + " " + SourceDir() +
                          "/docs/examples/serve_client.py --server 127.0.0.1:" + port.substr(0, port.find(' ')) +
                          " --model seg --image " + (Store() / "vols/vol.tif").string() +
                          " --region-volume vols/vol.tif --token-file " + (Root() / "alice.token").string() +
                          " --out " + (Root() / "py-labels.tif").string();
  int st = 0;
  const std::string out = RunCapture(cmd, &st);
  ASSERT_EQ(st, 0) << cmd << "\n" << out;
  EXPECT_NE(out.find("model seg: tiny, 2 classes, window 32, version 1"), std::string::npos) << out;
  EXPECT_NE(out.find("region [2, 32, 32] of vols/vol.tif"), std::string::npos) << out;
  EXPECT_NE(out.find("a bad request: INVALID_ARGUMENT: array.data: 10 bytes"), std::string::npos) << out;
  v1::PredictRequest req;
  req.set_model("seg");
  req.mutable_array()->set_dtype("uint8");
  for (int64_t s : volume_->shape) req.mutable_array()->add_shape(s);
  req.mutable_array()->set_data(volume_->data.data(), volume_->data.size());
  const Answer mine = Call(server, req);
  ASSERT_TRUE(mine.status.ok());
  absl::StatusOr<trainer::RawArray> theirs = trainer::ReadTiff((Root() / "py-labels.tif").string());
  ASSERT_TRUE(theirs.ok()) << theirs.status();
  EXPECT_EQ(std::string(theirs->bytes.begin(), theirs->bytes.end()), mine.response.labels().data());
}

// A real Prometheus scrapes the server's own /metrics endpoint (not
// prometheus-cpp's exposer: metrics_http.h) and sees its series.
TEST_F(ServeTest, RealPrometheusScrapesTheServer) {
  const char* prom = "/usr/bin/prometheus";
  if (!fs::exists(prom)) GTEST_SKIP() << "Debian's prometheus is not installed (scripts/setup installs it)";
  std::vector<std::string> flags = Models();
  Server server(Root(), "prom", flags);
  ASSERT_TRUE(server.ok()) << server.Log();
  v1::PredictRequest req = RegionRequest("seg", "vols/vol.tif", {0, 1, 0, 32, 0, 32});
  ASSERT_TRUE(Call(server, req).status.ok());
  const std::string log = server.Log();
  const std::string metrics_port = log.substr(log.find("/metrics on port ") + 17);
  const int prom_port = FreeLoopbackPort();  // Prometheus' own HTTP API
  ASSERT_TRUE(WriteFileAtomic(Root() / "prometheus.yml",
                              "global: {scrape_interval: 1s}\nscrape_configs:\n"
                              "  - job_name: retina-serve\n    static_configs: [{targets: ['127.0.0.1:" +
                                  metrics_port.substr(0, metrics_port.find(',')) + "']}]\n")
                  .ok());
  Child p({prom, "--config.file=" + (Root() / "prometheus.yml").string(),
           "--storage.tsdb.path=" + (Root() / "tsdb").string(),
           "--web.listen-address=127.0.0.1:" + std::to_string(prom_port)},
          Root() / "prometheus.log");
  auto query = [&](const std::string& q) {
    return nlohmann::json::parse(HttpGet(prom_port, "/api/v1/query?query=" + q), nullptr, false);
  };
  ASSERT_TRUE(WaitFor([&] {
    const nlohmann::json j = query("retina_serve_requests_total");
    if (!j.is_object() || j.value("status", "") != "success") return false;
    for (const auto& r : j["data"]["result"]) {
      if (r["metric"].value("code", "") == "OK" && r["value"][1] == "1") return true;
    }
    return false;
  }, std::chrono::seconds(60))) << ReadFile(Root() / "prometheus.log").value_or("");
  const nlohmann::json up = query("up");
  ASSERT_EQ(up["data"]["result"].size(), 1u) << up.dump();
  EXPECT_EQ(up["data"]["result"][0]["value"][1], "1");
  EXPECT_EQ(query("retina_serve_models")["data"]["result"][0]["value"][1], "2");
}

// kind: serve through the service: a worker runs the server on a slot, its
// address shows in the job, it answers the job's owner only, a server that
// dies is restarted (a new attempt, a new address), and cancel stops it.
TEST(ServeJob, TheServiceRunsAModelServerAsAJob) {
  Cluster c("serve");
  ASSERT_TRUE(WriteFileAtomic(c.root() / "clients", kTokens).ok());
  ASSERT_TRUE(WriteFileAtomic(c.root() / "worker", "worker-token-0123456789\n").ok());
  for (const char* f : {"clients", "worker"}) fs::permissions(c.root() / f, fs::perms::owner_read | fs::perms::owner_write);
  trainer::SynthOptions o;
  o.shape = {2, 40, 40};
  o.seed = 5;
  const trainer::Volume volume = trainer::Synthesize(o).image;
  CommitModel(c.store() / "models/seg", 1, 3, volume);
  c.StartCoordinator({{"--client-tokens", (c.root() / "clients").string(), "--worker-token",
                       (c.root() / "worker").string()}});
  c.StartWorker("w1", 1, {"--token-file", (c.root() / "worker").string(), "--serve-client-tokens",
                          (c.root() / "clients").string()});
  absl::StatusOr<v1::Job> job = c.Submit("kind: serve\nserve: {models: [seg=models/seg/LATEST], max_batch: 4}\n", 1,
                                         /*max_restarts=*/2, "tok-alice-0123456789");
  ASSERT_TRUE(job.ok()) << job.status();
  auto endpoint = [&] { return c.Get(job->id(), "tok-alice-0123456789").progress().endpoint(); };
  ASSERT_TRUE(WaitFor([&] { return !endpoint().empty(); }, std::chrono::seconds(120)))
      << ReadFile(c.root() / "w1.log").value_or("");
  const std::string first = endpoint();
  EXPECT_EQ(c.Get(job->id(), "tok-alice-0123456789").state(), v1::RUNNING);
  auto predict = [&](const std::string& address, const std::string& token) {
    auto stub = v1::PredictionService::NewStub(*services::MakeChannel(address, ""));
    v1::PredictRequest req;
    req.set_model("seg");
    req.mutable_array()->set_dtype("uint8");
    req.mutable_array()->add_shape(40);
    req.mutable_array()->add_shape(40);
    req.mutable_array()->set_data(volume.data.data(), 40 * 40);
    v1::PredictResponse resp;
    return stub->Predict(Ctx(token).get(), req, &resp);
  };
  EXPECT_TRUE(predict(first, "tok-alice-0123456789").ok());
  EXPECT_EQ(predict(first, "tok-bob-0123456789ab").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(predict(first, "tok-root-0123456789a").ok());
  // retina status shows where it answers.
  int st = 0;
  ASSERT_TRUE(WriteFileAtomic(c.root() / "alice.token", "tok-alice-0123456789\n").ok());
  fs::permissions(c.root() / "alice.token", fs::perms::owner_read | fs::perms::owner_write);
  const std::string status = RunCapture(BinDir() + "/services/retina status " + job->id() + " --address " +
                                            c.address() + " --token-file " + (c.root() / "alice.token").string(),
                                        &st);
  EXPECT_EQ(st, 0) << status;
  EXPECT_NE(status.find("serving:     " + first + " (models seg)"), std::string::npos) << status;

  // The server dies: the service starts it again (attempt 2), at a new address.
  const std::vector<pid_t> pids = ServePids(job->id());
  ASSERT_EQ(pids.size(), 1u);
  ASSERT_EQ(kill(pids[0], SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] { return c.Get(job->id(), "tok-alice-0123456789").attempt() == 2 && !endpoint().empty(); },
                      std::chrono::seconds(120)));
  EXPECT_TRUE(predict(endpoint(), "tok-alice-0123456789").ok());

  // Cancel: the server drains and the job ends CANCELLED.
  v1::CancelJobRequest cancel;
  cancel.set_id(job->id());
  v1::Job cancelled;
  ASSERT_TRUE(c.Jobs()->CancelJob(c.Ctx("tok-alice-0123456789").get(), cancel, &cancelled).ok());
  ASSERT_TRUE(WaitFor([&] { return c.Get(job->id(), "tok-alice-0123456789").state() == v1::CANCELLED; },
                      std::chrono::seconds(60)));
  EXPECT_TRUE(WaitFor([&] { return ServePids(job->id()).empty(); }, std::chrono::seconds(30)));
}

}  // namespace
}  // namespace retina::testing
