// The ImageNet .npz importer on archives written by numpy with Google's key
// names and layouts, against conversions computed independently in Python.
#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/model/weights/npz.h"
#include "trainer/model/weights/transfer.h"
#include "trainer/model/transunet.h"
#include "trainer/model/weights/vit_npz_import.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class NpzImport : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    const std::string missing = retina::testing::PythonMissing("torch, numpy");
    if (!missing.empty()) GTEST_SKIP() << missing;
  }
  retina::testing::ScopedTempDir tmp_;
  const fs::path& dir_ = tmp_.path();
};

TEST_P(NpzImport, ConvertsLayoutsAndResizesPositionGrid) {
  // The .npz grid is 3x3 (+ class token); the model at 64 px has a 4x4 grid.
  std::string out;
  ASSERT_EQ(retina::testing::RunPython("make_npz.py", absl::StrCat("tiny 64 3 ", GetParam() ? 1 : 0, " ", dir_.string()), &out), 0)
      << out;
  absl::StatusOr<TransUNetConfig> c = NamedModelConfig("tiny", 64, 2, ModelHead::kSegmentation);
  ASSERT_TRUE(c.ok());
  absl::StatusOr<StateDict> imported = ImportViTNpz(dir_ / "vit.npz", *c);
  ASSERT_TRUE(imported.ok()) << imported.status();
  absl::StatusOr<StateDict> expected = ReadStateDictFile(dir_ / "expected.pt");
  ASSERT_TRUE(expected.ok()) << expected.status();
  std::map<std::string, torch::Tensor> got(imported->begin(), imported->end());
  ASSERT_EQ(got.size(), expected->size());
  for (const auto& [name, want] : *expected) {
    ASSERT_TRUE(got.count(name)) << name;
    ASSERT_EQ(got[name].sizes(), want.sizes()) << name;
    if (name.find("position_embeddings") != std::string::npos) {
      EXPECT_TRUE(torch::allclose(got[name], want, 1e-5, 1e-6)) << name;
    } else {
      EXPECT_TRUE(torch::equal(got[name], want)) << name;  // pure layout changes: exact
    }
  }
  // Loads with the fine-tuning transfer: everything but the decoder, strictly.
  VisionTransformer model(*c);
  absl::StatusOr<LoadReport> report = TransferPretrained(*model, *imported, /*freeze_encoder=*/true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->missing.empty());
}

INSTANTIATE_TEST_SUITE_P(StoredAndDeflated, NpzImport, ::testing::Bool());

TEST_F(NpzImport, MissingArrayAndBadFilesAreNamed) {
  std::string out;
  const std::string script =
      "import numpy as np; np.savez('" + (dir_ / "small.npz").string() +
      "', a=np.arange(6, dtype=np.float64).reshape(2, 3), f=np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)))";
  ASSERT_EQ(std::system((retina::testing::Python() + " -c \"" + script + "\"").c_str()), 0);
  absl::StatusOr<std::map<std::string, torch::Tensor>> arrays = ReadNpz(dir_ / "small.npz");
  ASSERT_TRUE(arrays.ok()) << arrays.status();
  EXPECT_TRUE(torch::equal((*arrays)["a"], torch::arange(6, torch::kDouble).reshape({2, 3})));
  EXPECT_TRUE(torch::equal((*arrays)["f"], torch::arange(6, torch::kLong).reshape({2, 3})));  // Fortran order undone

  absl::StatusOr<TransUNetConfig> c = NamedModelConfig("tiny", 64, 1, ModelHead::kSegmentation);
  absl::StatusOr<StateDict> imported = ImportViTNpz(dir_ / "small.npz", *c);
  EXPECT_EQ(imported.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(imported.status().message()),
              HasSubstr("small.npz: no array 'Transformer/posembed_input/pos_embedding'"));
  ASSERT_TRUE(WriteFileAtomic(dir_ / "junk.npz", "not a zip").ok());
  EXPECT_THAT(std::string(ReadNpz(dir_ / "junk.npz").status().message()), HasSubstr("junk.npz"));
  EXPECT_EQ(ReadNpz(dir_ / "absent.npz").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(ParseNpy("\x93NUMPY\x01", "x.npy").status().message()), HasSubstr("x.npy"));
}

}  // namespace
}  // namespace retina::trainer
