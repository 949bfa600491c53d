// Weights moving both ways with real Python PyTorch, and the forward pass
// compared with an independent Python implementation of the same equations
// (trainer/model/python/transunet.py).
#include <sys/wait.h>

#include <filesystem>
#include <tuple>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/model/transunet.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct Case {
  const char* name;
  int size;
  int classes;
  bool reconstruction;
};

class ModelInterop : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const std::string missing = retina::testing::PythonMissing("torch");
    if (!missing.empty()) GTEST_SKIP() << missing;
  }
  std::string Args(const Case& c) const {
    return absl::StrCat(c.name, " ", c.size, " ", c.classes, " ", c.reconstruction ? 1 : 0);
  }
  retina::testing::ScopedTempDir tmp_;
  const fs::path& dir_ = tmp_.path();
};

TEST_P(ModelInterop, PythonWeightsLoadForwardMatchesAndSaveBack) {
  const Case c = GetParam();
  std::string out;
  ASSERT_EQ(retina::testing::RunPython("interop.py", absl::StrCat("make ", Args(c), " 5 ", dir_.string()), &out), 0)
      << out;

  // Python's torch.save(model.state_dict()): OrderedDict with _metadata.
  absl::StatusOr<StateDict> py = ReadStateDictFile(dir_ / "state.pt");
  ASSERT_TRUE(py.ok()) << py.status();
  absl::StatusOr<TransUNetConfig> config =
      NamedModelConfig(c.name, c.size, c.classes,
                       c.reconstruction ? ModelHead::kReconstruction : ModelHead::kSegmentation);
  ASSERT_TRUE(config.ok());
  VisionTransformer model(*config);
  absl::StatusOr<LoadReport> report = LoadStateDict(*model, *py);
  ASSERT_TRUE(report.ok()) << report.status();
  StateDict mine = GetStateDict(*model);
  ASSERT_EQ(mine.size(), py->size());
  for (size_t i = 0; i < mine.size(); ++i) {
    ASSERT_EQ(mine[i].first, (*py)[i].first) << "order differs at " << i;
    ASSERT_TRUE(torch::equal(mine[i].second, (*py)[i].second)) << mine[i].first;
  }

  // DDP's "module." prefix is stripped; the tensors are the same.
  absl::StatusOr<StateDict> ddp = ReadStateDictFile(dir_ / "state_ddp.pt");
  ASSERT_TRUE(ddp.ok()) << ddp.status();
  EXPECT_EQ((*ddp)[0].first.rfind("module.", 0), 0u);
  VisionTransformer from_ddp(*config);
  ASSERT_TRUE(LoadStateDict(*from_ddp, *ddp).ok());
  for (size_t i = 0; i < mine.size(); ++i) {
    ASSERT_TRUE(torch::equal(GetStateDict(*from_ddp)[i].second, mine[i].second));
  }

  // Forward pass against the independent Python implementation (eval mode).
  absl::StatusOr<StateDict> io = ReadStateDictFile(dir_ / "io.pt");
  ASSERT_TRUE(io.ok()) << io.status();
  ASSERT_EQ((*io)[0].first, "input");
  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor y = model((*io)[0].second);
  const torch::Tensor& expected = (*io)[1].second;
  ASSERT_EQ(y.sizes(), expected.sizes());
  const double scale = expected.abs().max().item<double>();
  const double err = (y - expected).abs().max().item<double>();
  char err_text[32];
  std::snprintf(err_text, sizeof(err_text), "%.3g", err);
  RecordProperty("max_abs_error", err_text);
  EXPECT_LT(err, 1e-4 * std::max(1.0, scale)) << "max |C++ - Python| = " << err << " (output scale " << scale << ")";
  EXPECT_GT(scale, 1e-3) << "degenerate output; the comparison would be vacuous";

  // C++ save -> Python torch.load + strict load_state_dict, tensors identical.
  ASSERT_TRUE(SaveStateDictFile(GetStateDict(*model), dir_ / "cpp.pt").ok());
  ASSERT_EQ(retina::testing::RunPython("interop.py",
                                       absl::StrCat("check ", Args(c), " ", (dir_ / "cpp.pt").string(), " ",
                                                    (dir_ / "state.pt").string()),
                                       &out),
            0)
      << out;
}

INSTANTIATE_TEST_SUITE_P(Configs, ModelInterop,
                         ::testing::Values(Case{"tiny", 64, 3, false}, Case{"tiny", 32, 1, true},
                                           // The full-width RETINA model (768, 12 heads) at a small image.
                                           Case{"r50-vit-b16", 32, 1, true}),
                         [](const ::testing::TestParamInfo<Case>& p) {
                           return absl::StrCat(p.param.name[0] == 't' ? "tiny" : "r50vitb16", "_",
                                               p.param.size, p.param.reconstruction ? "_recon" : "_seg");
                         });

TEST(ReadStateDictFile, BadFilesNameTheFile) {
  const fs::path dir = fs::path(::testing::TempDir()) / UniqueTempName("badpt-");
  fs::create_directories(dir);
  ASSERT_TRUE(WriteFileAtomic(dir / "junk.pt", "this is not a zip archive").ok());
  absl::StatusOr<StateDict> r = ReadStateDictFile(dir / "junk.pt");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("junk.pt"));
  r = ReadStateDictFile(dir / "absent.pt");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  // Truncated archive.
  StateDict d = {{"a", torch::arange(1000, torch::kFloat)}};
  const std::vector<char> bytes = SerializeStateDict(d);
  ASSERT_TRUE(WriteFileAtomic(dir / "cut.pt", absl::string_view(bytes.data(), bytes.size() / 2)).ok());
  r = ReadStateDictFile(dir / "cut.pt");
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("cut.pt"));
  // Round trip of our own file through our own reader.
  ASSERT_TRUE(SaveStateDictFile(d, dir / "ok.pt").ok());
  r = ReadStateDictFile(dir / "ok.pt");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(torch::equal((*r)[0].second, d[0].second));
  fs::remove_all(dir);
}

// A bare .pt (no checkpoint MANIFEST beside it) with one flipped byte, in a
// tensor's record or in the pickle, is refused naming the file and the
// record: every record is checked against the CRC-32 its zip entry carries
// (libtorch's own reader does not check them). Files PyTorch wrote pass the
// same check in ModelInterop.
TEST(ReadStateDictFile, AFlippedByteInAnyRecordIsRefusedByItsZipCrc) {
  const fs::path dir = fs::path(::testing::TempDir()) / UniqueTempName("crcpt-");
  fs::create_directories(dir);
  const StateDict d = {{"a", torch::arange(1000, torch::kFloat)}, {"b", torch::full({50}, 7.0)}};
  const std::vector<char> bytes = SerializeStateDict(d);
  const std::string text(bytes.data(), bytes.size());
  // Float 999.0 (last element of "a") and the pickle's name of tensor "b".
  const float last = 999.0f;
  const size_t in_tensor = text.find(std::string(reinterpret_cast<const char*>(&last), 4));
  const size_t in_pickle = text.find("X\x01\x00\x00\x00b");  // BINUNICODE "b"
  ASSERT_NE(in_tensor, std::string::npos);
  ASSERT_NE(in_pickle, std::string::npos);
  for (const auto& [name, offset, record] : {std::tuple{"tensor.pt", in_tensor, "data/0"},
                                            std::tuple{"pickle.pt", in_pickle + 5, "data.pkl"}}) {
    std::string damaged = text;
    damaged[offset] ^= 0x01;
    ASSERT_TRUE(WriteFileAtomic(dir / name, damaged).ok());
    absl::StatusOr<StateDict> r = ReadStateDictFile(dir / name);
    ASSERT_FALSE(r.ok()) << name << " loaded";
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(name));
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(absl::StrCat("record ", record, ": CRC-32")));
  }
  // The same bytes undamaged load.
  ASSERT_TRUE(WriteFileAtomic(dir / "ok.pt", text).ok());
  EXPECT_TRUE(ReadStateDictFile(dir / "ok.pt").ok());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace retina::trainer
