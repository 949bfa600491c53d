// Read confinement (common/read_scope.h; issue 29 item 1): a file inside
// the store must not make a service rank read a file outside it, whatever
// reference mechanism its format has. make_references.py writes, with the
// formats' own tools, inputs in ROOT/store/in whose format points at data
// in ROOT/outside (7s) and inside variants (3s). Without a scope every
// mechanism really reaches its target (so the refusals below are not
// vacuous); with one, each outside reference is PERMISSION_DENIED naming
// the referencing file, and each inside one still reads.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/dataset_manifest.h"
#include "common/file_util.h"
#include "common/path_policy.h"
#include "common/read_scope.h"
#include "common/status_macros.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/shards.h"
#include "trainer/model/weights/weight_source.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Every plane of `spec`, or the reader's error.
absl::StatusOr<std::vector<uint8_t>> ReadAll(const std::string& spec) {
  ASSIGN_OR_RETURN(std::unique_ptr<PlaneReader> r, OpenPlaneReader(spec, IntensityScaling::kRequireUInt8));
  std::vector<uint8_t> out(static_cast<size_t>(r->shape()[0] * r->shape()[1] * r->shape()[2]));
  RETURN_IF_ERROR(r->Read(0, r->shape()[0], out.data()));
  return out;
}

class Confinement : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    missing_ = new std::string(retina::testing::PythonMissing("numpy, h5py, tifffile, nibabel, zarr"));
    if (!missing_->empty()) return;
    tmp_ = new retina::testing::ScopedTempDir("references-");
    std::string out;
    ASSERT_EQ(retina::testing::RunPython("make_references.py", tmp_->path().string(), &out), 0) << out;
    absl::StatusOr<std::string> text = ReadFile(tmp_->path() / "cases.json");
    ASSERT_TRUE(text.ok()) << text.status();
    cases_ = new nlohmann::json(nlohmann::json::parse(*text));
  }
  static void TearDownTestSuite() {
    delete tmp_;
    tmp_ = nullptr;
  }
  void SetUp() override {
    if (!missing_->empty()) GTEST_SKIP() << *missing_;
  }
  static fs::path Store() { return tmp_->path() / "store"; }
  static fs::path Outside() { return tmp_->path() / "outside"; }

  static std::string* missing_;
  static retina::testing::ScopedTempDir* tmp_;
  static nlohmann::json* cases_;
};
std::string* Confinement::missing_ = nullptr;
retina::testing::ScopedTempDir* Confinement::tmp_ = nullptr;
nlohmann::json* Confinement::cases_ = nullptr;

TEST_F(Confinement, EveryReferenceMechanismReachesItsTargetWithoutAScope) {
  ASSERT_FALSE(ReadsConfined());
  ASSERT_GE(cases_->size(), 19u);
  for (const auto& [name, c] : cases_->items()) {
    SCOPED_TRACE(name);
    absl::StatusOr<std::vector<uint8_t>> v = ReadAll(c["spec"].get<std::string>());
    ASSERT_TRUE(v.ok()) << v.status();
    ASSERT_EQ(v->size(), 256u);
    EXPECT_EQ((*v)[0], c["inside"].get<bool>() ? 3 : 7);
    EXPECT_EQ((*v)[255], c["inside"].get<bool>() ? 3 : 7);
  }
}

TEST_F(Confinement, UnderAScopeOutsideReferencesAreRefusedNamingTheFileAndInsideOnesRead) {
  const ReadScope scope(PathPolicy(Store(), {}));
  int refused = 0;
  for (const auto& [name, c] : cases_->items()) {
    SCOPED_TRACE(name);
    absl::StatusOr<std::vector<uint8_t>> v = ReadAll(c["spec"].get<std::string>());
    if (c["inside"].get<bool>()) {
      ASSERT_TRUE(v.ok()) << v.status();
      EXPECT_EQ((*v)[0], 3);
      continue;
    }
    ASSERT_FALSE(v.ok()) << "read " << int((*v)[0]) << "s from outside the store";
    EXPECT_EQ(v.status().code(), absl::StatusCode::kPermissionDenied) << v.status();
    EXPECT_THAT(v.status().message(), HasSubstr(name));  // the referencing file
    EXPECT_THAT(v.status().message(), HasSubstr("outside the store"));
    ++refused;
  }
  EXPECT_GE(refused, 12);
}

TEST_F(Confinement, AnAllowedRootAdmitsWhatItHolds) {
  const ReadScope scope(PathPolicy(Store(), {Outside()}));
  for (const auto& [name, c] : cases_->items()) {
    SCOPED_TRACE(name);
    absl::StatusOr<std::vector<uint8_t>> v = ReadAll(c["spec"].get<std::string>());
    EXPECT_TRUE(v.ok()) << v.status();
  }
}

TEST_F(Confinement, NamedMechanismsSayWhatReferencedTheFile) {
  const ReadScope scope(PathPolicy(Store(), {}));
  const fs::path in = Store() / "in";
  const std::pair<std::string, std::string> expected[] = {
      {"nrrd_rel.nhdr", "nrrd_rel.nhdr: data file"},
      {"elink_rel.h5:/raw", "external link to ../../outside/secret.h5"},
      {"external_abs.h5:/raw", "external storage file"},
      {"vds_rel.h5:/raw", "virtual dataset source ../../outside/secret.h5"},
      {"chunk_link.zarr", "chunk 0.0"},
      {"ome_escape.zarr", "multiscales[0].datasets[0].path"},
  };
  for (const auto& [spec, what] : expected) {
    absl::StatusOr<std::vector<uint8_t>> v = ReadAll((in / spec).string());
    ASSERT_FALSE(v.ok()) << spec;
    EXPECT_THAT(v.status().message(), HasSubstr(what)) << v.status();
  }
}

// teem opens a header's data files even to read the header alone: the
// names are taken from the header's text and checked before teem sees it
// (a `data file: /dev/zero` with `line skip` used to grow until the rank
// died; `-` reads standard input, even outside a service).
TEST_F(Confinement, NrrdDataFilesAreCheckedBeforeTeemOpensThem) {
  const fs::path in = Store() / "in";
  ASSERT_TRUE(WriteFileAtomic(in / "zero.nhdr", "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 16 16\n"
                                                "encoding: raw\nline skip: 1\ndata file: /dev/zero\n\n").ok());
  ASSERT_TRUE(WriteFileAtomic(in / "stdin.nhdr", "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 16 16\n"
                                                 "encoding: raw\ndata file: -\n\n").ok());
  absl::StatusOr<RawArray> stdin_read = ReadArray((in / "stdin.nhdr").string());
  ASSERT_FALSE(stdin_read.ok());
  EXPECT_THAT(stdin_read.status().message(), HasSubstr("standard input"));
  const ReadScope scope(PathPolicy(Store(), {}));
  absl::StatusOr<RawArray> zero = ReadArray((in / "zero.nhdr").string());
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kPermissionDenied) << zero.status();
  EXPECT_THAT(zero.status().message(), HasSubstr("zero.nhdr: data file"));
}

TEST_F(Confinement, ShardManifestsAndWeightsResolveThroughTheScope) {
  // A dataset whose shard is a symlink out of it (a "file" with a '/' is
  // refused by the manifest's own parser), and weights that are a symlink.
  const fs::path ds = Store() / "datasets" / "escape";
  nlohmann::json m = {{"format", "retina-shards/1"}, {"name", "escape"}, {"labelled", false}, {"height", 16},
                      {"width", 16}, {"count", 1}, {"mean", 0.5}, {"std", 0.1},
                      {"shards", {{{"file", "shard-00000.h5"}, {"count", 1}, {"bytes", 1},
                                   {"sha256", std::string(64, '0')}}}}};
  ASSERT_TRUE(WriteFileAtomic(ds / "manifest.json", m.dump()).ok());

  absl::StatusOr<WeightSource> free_weights = ResolveWeights("w.pt", Store(), "infer.weights");
  ASSERT_TRUE(free_weights.ok()) << free_weights.status();
  const ReadScope scope(PathPolicy(Store(), {}));
  absl::StatusOr<std::unique_ptr<ShardedDataset>> opened = ShardedDataset::Open(ds, /*verify=*/false);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kPermissionDenied) << opened.status();
  EXPECT_THAT(opened.status().message(), HasSubstr("manifest.json: shard shard-00000.h5"));
  // A manifest that is itself a symlink out of the store is not read (its
  // content would show in a parse error).
  fs::create_directories(Store() / "datasets" / "linked");
  ASSERT_TRUE(WriteFileAtomic(Outside() / "manifest.json", "{\"secret\": 7}").ok());
  fs::create_symlink(Outside() / "manifest.json", Store() / "datasets" / "linked" / "manifest.json");
  absl::StatusOr<DatasetManifest> linked = DatasetManifest::Load(Store() / "datasets" / "linked");
  ASSERT_FALSE(linked.ok());
  EXPECT_EQ(linked.status().code(), absl::StatusCode::kPermissionDenied) << linked.status();
  absl::StatusOr<WeightSource> weights = ResolveWeights("w.pt", Store(), "infer.weights");
  ASSERT_FALSE(weights.ok());
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kPermissionDenied) << weights.status();
  EXPECT_THAT(weights.status().message(), HasSubstr("infer.weights 'w.pt'"));
}

}  // namespace
}  // namespace retina::trainer
