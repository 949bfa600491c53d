// Readers on files written by independent tools (PIL, tifffile, h5py,
// nibabel, hand-written NRRD): pixel-identical, spacing kept; and the
// conversions to uint8 images and masks.
#include <cstring>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_replace.h"
#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"
#include "trainer/model/weights/npz.h"

namespace retina::trainer {
namespace {

using ::testing::HasSubstr;

class Readers : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    missing_ = new std::string(retina::testing::PythonMissing("numpy, h5py, tifffile, nibabel, PIL"));
    if (!missing_->empty()) return;
    tmp_ = new retina::testing::ScopedTempDir("formats-");
    std::string out;
    ASSERT_EQ(retina::testing::RunPython("make_formats.py", tmp_->path().string(), &out), 0) << out;
  }
  static void TearDownTestSuite() {
    delete tmp_;
    tmp_ = nullptr;
  }
  void SetUp() override {
    if (!missing_->empty()) GTEST_SKIP() << *missing_;
  }
  static std::string Path(const std::string& name) { return (tmp_->path() / name).string(); }

  static std::string* missing_;
  static retina::testing::ScopedTempDir* tmp_;
};
std::string* Readers::missing_ = nullptr;
retina::testing::ScopedTempDir* Readers::tmp_ = nullptr;

TEST_F(Readers, PixelIdenticalToTheWritingTool) {
  absl::StatusOr<std::map<std::string, torch::Tensor>> expected = ReadNpz(tmp_->path() / "expected.npz");
  ASSERT_TRUE(expected.ok()) << expected.status();
  absl::StatusOr<std::string> meta_text = ReadFile(tmp_->path() / "meta.json");
  ASSERT_TRUE(meta_text.ok());
  const nlohmann::json meta = nlohmann::json::parse(*meta_text);
  const std::vector<std::string> files = {
      "gray8.png", "gray16.png", "rgb.png", "page8.tif", "page16.tiff", "stack.tif", "tiled.tif", "float.tif",
      "cremi.h5:/volumes/raw", "cremi.h5:/volumes/labels/clefts", "cremi.h5:/flat",
      "vol.nii", "vol.nii.gz", "mask.nii.gz", "vol.nrrd", "volgz.nrrd"};
  for (const std::string& name : files) {
    SCOPED_TRACE(name);
    absl::StatusOr<RawArray> a = ReadArray(Path(name));
    ASSERT_TRUE(a.ok()) << a.status();
    const std::string key = absl::StrReplaceAll(name, {{".", "_"}, {":", "_"}, {"/", "_"}});
    ASSERT_TRUE(expected->count(key)) << key;
    const torch::Tensor want = (*expected)[key];
    const std::vector<int64_t> shape = meta[name]["shape"];
    EXPECT_EQ(std::vector<int64_t>(a->shape.begin(), a->shape.end()), shape);
    ASSERT_EQ(a->bytes.size(), static_cast<size_t>(want.numel())) << "dtype " << DTypeName(a->dtype);
    EXPECT_EQ(std::memcmp(a->bytes.data(), want.data_ptr(), a->bytes.size()), 0) << "pixels differ";
    if (!meta[name]["spacing"].is_null()) {
      const std::vector<double> sp = meta[name]["spacing"];
      EXPECT_TRUE(a->has_spacing);
      for (int k = 0; k < 3; ++k) EXPECT_NEAR(a->spacing[k], sp[k], 1e-6 * sp[k]) << "axis " << k;
    }
  }
}

TEST_F(Readers, ConversionsToImagesAndMasks) {
  absl::StatusOr<RawArray> clefts = ReadArray(Path("cremi.h5:/volumes/labels/clefts"));
  ASSERT_TRUE(clefts.ok()) << clefts.status();
  absl::StatusOr<Volume> m = ToMask(*clefts, MaskConvention::kCremiClefts);
  ASSERT_TRUE(m.ok()) << m.status();
  int64_t ones = 0;
  for (uint8_t v : m->data) ones += v;
  EXPECT_EQ(ones, 2 * 4 * 5);  // clefts[1:3, 5:9, 2:7]
  EXPECT_EQ(m->spacing[0], 40.0);
  // uint64 clefts are not a binary mask.
  EXPECT_THAT(std::string(ToMask(*clefts, MaskConvention::kBinary).status().message()),
              HasSubstr("binary mask holds value"));

  absl::StatusOr<RawArray> g16 = ReadArray(Path("gray16.png"));
  ASSERT_TRUE(g16.ok());
  absl::Status need = ToImage(*g16, IntensityScaling::kRequireUInt8).status();
  EXPECT_THAT(std::string(need.message()), HasSubstr("gray16.png: image is uint16"));
  absl::StatusOr<Volume> scaled = ToImage(*g16, IntensityScaling::kMinMax);
  ASSERT_TRUE(scaled.ok());
  const uint8_t lo = *std::min_element(scaled->data.begin(), scaled->data.end());
  const uint8_t hi = *std::max_element(scaled->data.begin(), scaled->data.end());
  EXPECT_EQ(lo, 0);
  EXPECT_EQ(hi, 255);

  RawArray mask255;
  mask255.shape = {1, 1, 4};
  mask255.bytes = {0, 255, 1, 0};
  mask255.source = "m.png";
  absl::StatusOr<Volume> bin = ToMask(mask255, MaskConvention::kBinary);
  ASSERT_TRUE(bin.ok());
  EXPECT_EQ(bin->data, (std::vector<uint8_t>{0, 1, 1, 0}));
  mask255.bytes[2] = 7;
  EXPECT_THAT(std::string(ToMask(mask255, MaskConvention::kBinary).status().message()),
              HasSubstr("m.png: binary mask holds value 7 at index 2"));
  EXPECT_TRUE(ToMask(mask255, MaskConvention::kClassIndex).ok());
}

TEST_F(Readers, PlaneReadersStreamUInt8FilesInAnyOrderAndHoldTheRest) {
  // uint8 TIFF stacks and HDF5 datasets are read plane-wise from the file; the
  // planes equal the whole-file read whatever order they are asked in.
  for (const char* name : {"stack.tif", "tiled.tif", "cremi.h5:/volumes/raw", "vol.nii.gz"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<RawArray> whole = ReadArray(Path(name));
    ASSERT_TRUE(whole.ok()) << whole.status();
    absl::StatusOr<Volume> image = ToImage(*whole, IntensityScaling::kMinMax);
    ASSERT_TRUE(image.ok());
    absl::StatusOr<std::unique_ptr<PlaneReader>> r = OpenPlaneReader(Path(name), IntensityScaling::kMinMax);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)->streaming(), std::string(name) != "vol.nii.gz");
    EXPECT_EQ((*r)->shape(), whole->shape);
    EXPECT_EQ((*r)->spacing(), whole->spacing);
    EXPECT_EQ((*r)->has_spacing(), whole->has_spacing);
    const int64_t Z = whole->shape[0], plane = whole->shape[1] * whole->shape[2];
    std::vector<std::pair<int64_t, int64_t>> ranges = {{Z - 1, Z}, {0, Z}, {0, 1}};
    if (Z > 2) ranges.push_back({1, Z - 1});
    for (const auto& [z0, z1] : ranges) {
      std::vector<uint8_t> got((z1 - z0) * plane);
      ASSERT_TRUE((*r)->Read(z0, z1, got.data()).ok());
      EXPECT_EQ(0, std::memcmp(got.data(), image->plane(z0), got.size())) << z0 << ".." << z1;
    }
  }
  absl::StatusOr<std::unique_ptr<PlaneReader>> missing = OpenPlaneReader(Path("nope.tif"), IntensityScaling::kMinMax);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.tif: no such file"));
}

TEST_F(Readers, BadInputIsNamed) {
  auto message = [](const std::string& spec) {
    absl::StatusOr<RawArray> a = ReadArray(spec);
    EXPECT_FALSE(a.ok()) << spec;
    return std::string(a.status().message());
  };
  EXPECT_THAT(message(Path("truncated.png")), HasSubstr("truncated.png: unreadable PNG"));
  EXPECT_THAT(message(Path("truncated.tif")), HasSubstr("truncated.tif"));
  EXPECT_THAT(message(Path("cremi.h5:/volumes/nope")), HasSubstr("cremi.h5:/volumes/nope: no such dataset"));
  EXPECT_THAT(message(Path("cremi.h5")), HasSubstr("name the dataset"));
  EXPECT_THAT(message(Path("gray8.png") + ".h5:/x"), HasSubstr("no such file"));
  EXPECT_THAT(message(Path("absent.tif")), HasSubstr("absent.tif: no such file"));
  EXPECT_THAT(message(Path("expected.npz")), HasSubstr("unknown format"));
  ASSERT_TRUE(WriteFileAtomic(tmp_->path() / "junk.nrrd", "NRRD0004\ntype: banana\n\n").ok());
  EXPECT_THAT(message(Path("junk.nrrd")), HasSubstr("junk.nrrd: not a readable NRRD"));
  ASSERT_TRUE(WriteFileAtomic(tmp_->path() / "junk.nii", std::string(400, 'x')).ok());
  EXPECT_THAT(message(Path("junk.nii")), HasSubstr("junk.nii"));
  ASSERT_TRUE(WriteFileAtomic(tmp_->path() / "junk.h5", "not hdf5").ok());
  EXPECT_THAT(message(Path("junk.h5") + ":/a"), HasSubstr("junk.h5: not an HDF5 file"));
}

// Issue 29 item 5: every size a header declares is checked before anything
// is allocated: against 64-bit overflow, the file's real size (uncompressed
// layouts) and the memory budget (RETINA_MAX_ARRAY_BYTES, here 1 GiB so the
// test is the same on any machine), with an error naming the file and the
// field (was: bad_alloc, or gigabytes allocated for a few bytes of file).
TEST_F(Readers, HeaderSizesAreCheckedBeforeAnythingIsAllocated) {
  ASSERT_EQ(setenv("RETINA_MAX_ARRAY_BYTES", "1073741824", 1), 0);
  const absl::Cleanup unset = [] { unsetenv("RETINA_MAX_ARRAY_BYTES"); };
  const std::pair<std::string, std::vector<std::string>> cases[] = {
      {"huge.h5:/raw", {"RESOURCE_EXHAUSTED", "huge.h5:/raw: dataspace: 4096 x 4096 x 4096", "RETINA_MAX_ARRAY_BYTES"}},
      {"huge.nii", {"RESOURCE_EXHAUSTED", "huge.nii: dim: 30000 x 30000 x 30000"}},
      {"huge.png", {"RESOURCE_EXHAUSTED", "huge.png: IHDR width x height: 100000 x 100000"}},
      {"huge.tif", {"RESOURCE_EXHAUSTED", "huge.tif (page 0): ImageWidth x ImageLength: 100000 x 100000"}},
      {"short.nrrd", {"DATA_LOSS", "short.nrrd: sizes: 100 x 100 x 10", "the file holds"}},
  };
  for (const auto& [spec, words] : cases) {
    absl::StatusOr<RawArray> a = ReadArray(Path(spec));
    ASSERT_FALSE(a.ok()) << spec;
    for (const std::string& w : words) EXPECT_THAT(a.status().ToString(), HasSubstr(w)) << spec;
  }
  // The uint8 HDF5 dataset still streams: a plane is 16 MiB.
  absl::StatusOr<std::unique_ptr<PlaneReader>> planes = OpenPlaneReader(Path("huge.h5:/raw"), IntensityScaling::kRequireUInt8);
  ASSERT_TRUE(planes.ok()) << planes.status();
  EXPECT_TRUE((*planes)->streaming());
  std::vector<uint8_t> plane(4096 * 4096, 1);
  ASSERT_TRUE((*planes)->Read(7, 8, plane.data()).ok());
  EXPECT_EQ(plane[0], 0);
}

}  // namespace
}  // namespace retina::trainer
