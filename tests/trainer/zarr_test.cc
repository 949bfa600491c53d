// Zarr v2 arrays and OME-Zarr images (trainer/data/formats/zarr.h): round
// trips of every dtype and codec, the chunk-grid rules, damaged chunks, and
// arrays written by Debian's python3-zarr (numcodecs) read by us.
#include "trainer/data/formats/zarr.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "common/file_util.h"
#include "tests/trainer/python_peer.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"

namespace retina::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng() >> 24);
  return v;
}

TEST(Zarr, EveryDtypeAndCodecRoundTripsWithEdgeChunksAndAnyReadRegion) {
  retina::testing::ScopedTempDir tmp("zarr-");
  const std::vector<int64_t> shape{7, 45, 61}, chunks{3, 16, 32};
  for (const ZarrCompressor codec : {ZarrCompressor::kNone, ZarrCompressor::kZlib, ZarrCompressor::kBlosc}) {
    for (const int kind : {0, 1, 2}) {  // uint8, float32, float16 (bytes: the round trip is bitwise)
      ZarrArrayMeta m;
      m.shape = shape;
      m.chunks = chunks;
      m.compressor = codec;
      m.dtype = kind == 0 ? DType::kUInt8 : DType::kFloat32;
      m.half = kind == 2;
      const fs::path dir = tmp.path() / ("a" + std::to_string(static_cast<int>(codec)) + std::to_string(kind));
      ASSERT_TRUE(CreateZarrArray(dir, m).ok());
      absl::StatusOr<ZarrArrayMeta> read_meta = ReadZarrArray(dir);
      ASSERT_TRUE(read_meta.ok()) << read_meta.status();
      EXPECT_EQ(read_meta->shape, shape);
      EXPECT_EQ(read_meta->half, m.half);
      const size_t item = m.item_size(), plane = 45 * 61 * item;
      const std::vector<uint8_t> all = RandomBytes(7 * plane, 11 + kind);
      // Written as rows of chunks, the last row thinner (z 6..7).
      for (int64_t z0 = 0; z0 < 7; z0 += 3) {
        const int64_t n = std::min<int64_t>(3, 7 - z0);
        ASSERT_TRUE(WriteZarrRegion(dir, *read_meta, {z0, 0, 0}, {n, 45, 61}, all.data() + z0 * plane).ok());
      }
      std::vector<uint8_t> region(2 * 10 * 40 * item);
      ASSERT_TRUE(ReadZarrRegion(dir, *read_meta, {2, 30, 15}, {2, 10, 40}, region.data()).ok());
      for (int64_t z = 0; z < 2; ++z) {
        for (int64_t y = 0; y < 10; ++y) {
          ASSERT_EQ(std::memcmp(region.data() + (z * 10 + y) * 40 * item,
                                all.data() + (((z + 2) * 45 + y + 30) * 61 + 15) * item, 40 * item),
                    0)
              << dir << " z " << z << " y " << y;
        }
      }
    }
  }
}

TEST(Zarr, RegionsOffTheChunkGridAreRefusedAndAbsentChunksReadAsFill) {
  retina::testing::ScopedTempDir tmp("zarr-");
  ZarrArrayMeta m;
  m.shape = {4, 8, 8};
  m.chunks = {2, 4, 4};
  ASSERT_TRUE(CreateZarrArray(tmp.path() / "a", m).ok());
  std::vector<uint8_t> buf(4 * 8 * 8, 7);
  const absl::Status off = WriteZarrRegion(tmp.path() / "a", m, {1, 0, 0}, {2, 8, 8}, buf.data());
  EXPECT_TRUE(absl::IsInvalidArgument(off)) << off;
  EXPECT_THAT(off.message(), HasSubstr("not on the chunk grid"));
  ASSERT_TRUE(ReadZarrRegion(tmp.path() / "a", m, {0, 0, 0}, {4, 8, 8}, buf.data()).ok());
  for (uint8_t v : buf) ASSERT_EQ(v, 0) << "an absent chunk is the fill value";
}

TEST(Zarr, ATruncatedChunkIsDataLossNamingItsFile) {
  retina::testing::ScopedTempDir tmp("zarr-");
  for (const ZarrCompressor codec : {ZarrCompressor::kNone, ZarrCompressor::kZlib, ZarrCompressor::kBlosc}) {
    ZarrArrayMeta m;
    m.shape = {2, 16, 16};
    m.chunks = {1, 16, 16};
    m.compressor = codec;
    const fs::path dir = tmp.path() / ("t" + std::to_string(static_cast<int>(codec)));
    ASSERT_TRUE(CreateZarrArray(dir, m).ok());
    const std::vector<uint8_t> data = RandomBytes(2 * 16 * 16, 3);
    ASSERT_TRUE(WriteZarrRegion(dir, m, {0, 0, 0}, {2, 16, 16}, data.data()).ok());
    const fs::path chunk = dir / "1/0/0";
    const std::string bytes = *ReadFile(chunk);
    ASSERT_TRUE(WriteFileAtomic(chunk, bytes.substr(0, bytes.size() / 2)).ok());
    std::vector<uint8_t> out(data.size());
    const absl::Status s = ReadZarrRegion(dir, m, {0, 0, 0}, {2, 16, 16}, out.data());
    EXPECT_TRUE(absl::IsDataLoss(s)) << s;
    EXPECT_THAT(s.message(), HasSubstr(chunk.string()));
  }
}

// Sizes in a .zarray are checked before anything is allocated from them:
// chunks whose product wraps past 2^64 (once a SIGSEGV in retina-infer) or
// that exceed what a chunk may hold, and a shape whose voxel count overflows
// (once "empty input volume"), are DATA_LOSS naming the file and the field,
// through the array reader and through the plane reader a job opens.
TEST(Zarr, HeaderSizesThatOverflowOrExceedTheChunkLimitAreNamed) {
  retina::testing::ScopedTempDir tmp("zarr-");
  const std::string two62 = "4611686018427387904";
  const struct {
    std::string shape, chunks, field;
  } cases[] = {
      {"[4, 64, 64]", "[" + two62 + ", " + two62 + ", 4]", "chunks"},  // wraps to 0
      {"[4, 64, 64]", "[" + two62 + ", 4, 1]", "chunks"},              // 2^64: wraps too
      {"[4, 64, 64]", "[1, 65536, 32768]", "chunks"},                   // 2 GiB
      {"[" + two62 + ", " + two62 + ", 4]", "[1, 64, 64]", "shape"},
  };
  int i = 0;
  for (const auto& c : cases) {
    const fs::path dir = tmp.path() / ("a" + std::to_string(i++));
    fs::create_directories(dir);
    ASSERT_TRUE(WriteFileAtomic(dir / ".zarray",
                                "{\"zarr_format\": 2, \"shape\": " + c.shape + ", \"chunks\": " + c.chunks +
                                    ", \"dtype\": \"|u1\", \"order\": \"C\", \"compressor\": null, "
                                    "\"fill_value\": 0, \"filters\": null}")
                    .ok());
    const absl::StatusOr<ZarrArrayMeta> m = ReadZarrArray(dir);
    ASSERT_FALSE(m.ok()) << c.chunks;
    EXPECT_TRUE(absl::IsDataLoss(m.status())) << m.status();
    EXPECT_THAT(m.status().message(), HasSubstr((dir / ".zarray").string()));
    EXPECT_THAT(m.status().message(), HasSubstr(c.field + " ["));
    const auto reader = OpenZarrPlaneReader(dir.string());
    ASSERT_FALSE(reader.ok());
    EXPECT_THAT(reader.status().message(), HasSubstr(".zarray"));
  }
}

TEST(Zarr, ModeDownsamplingTakesTheMostFrequentLabelAndTheSmallestOnTies) {
  // One 2x2x2 block with labels 3 (x3), 1 (x3), 2 (x2): a tie of 1 and 3 -> 1;
  // an odd edge keeps a block of one voxel.
  const std::vector<uint8_t> in = {3, 1, 3, 1, 2, 3, 1, 2};
  EXPECT_EQ(DownsampleLabelsMode(in.data(), {2, 2, 2}, {2, 2, 2}), std::vector<uint8_t>{1});
  const std::vector<uint8_t> row = {5, 5, 4, 9, 9};
  EXPECT_EQ(DownsampleLabelsMode(row.data(), {1, 1, 5}, {1, 1, 2}), (std::vector<uint8_t>{5, 4, 9}));
}

TEST(Zarr, NgffUnitsFromTheNamesFilesUse) {
  EXPECT_EQ(NgffUnit("nm"), "nanometer");
  EXPECT_EQ(NgffUnit("micron"), "micrometer");
  EXPECT_EQ(NgffUnit("\\u00B5m"), "micrometer");  // ImageJ's escaped micro sign
  EXPECT_EQ(NgffUnit("um"), "micrometer");
  EXPECT_EQ(NgffUnit("pixel"), "");
  EXPECT_EQ(MicrometresPer("nm"), 1e-3);
  EXPECT_FALSE(MicrometresPer("furlong").has_value());
}

TEST(Zarr, ReadsWhatPythonZarrWroteZlibBloscRawAndOmeZarr) {
  if (const std::string why = retina::testing::PythonMissing("zarr, numcodecs, numpy"); !why.empty()) GTEST_SKIP() << why;
  retina::testing::ScopedTempDir tmp("zarr-py-");
  std::string out;
  ASSERT_EQ(retina::testing::RunPython("zarr_peer.py", "write " + tmp.path().string(), &out), 0) << out;
  const std::string expected = *ReadFile(tmp.path() / "expected.u8");
  for (const char* name : {"zlib.zarr", "blosc.zarr", "raw.zarr", "image.ome.zarr"}) {
    absl::StatusOr<std::unique_ptr<PlaneReader>> r = OpenPlaneReader((tmp.path() / name).string(),
                                                                     IntensityScaling::kRequireUInt8);
    ASSERT_TRUE(r.ok()) << name << ": " << r.status();
    EXPECT_EQ((*r)->shape(), (std::array<int64_t, 3>{7, 45, 61})) << name;
    std::string got(expected.size(), '\0');
    ASSERT_TRUE((*r)->Read(0, 7, reinterpret_cast<uint8_t*>(got.data())).ok()) << name;
    EXPECT_EQ(got, expected) << name;
    std::string planes(2 * 45 * 61, '\0');
    ASSERT_TRUE((*r)->Read(3, 5, reinterpret_cast<uint8_t*>(planes.data())).ok());
    EXPECT_EQ(planes, expected.substr(3 * 45 * 61, 2 * 45 * 61)) << name;
    if (std::string(name) == "image.ome.zarr") {
      EXPECT_TRUE((*r)->has_spacing());
      EXPECT_EQ((*r)->spacing(), (std::array<double, 3>{30, 4, 4}));
      EXPECT_EQ((*r)->unit(), "nanometer");
    }
  }
}

TEST(Zarr, UnitsSurviveTiffAndHdf5OutputsAndReadBack) {
  retina::testing::ScopedTempDir tmp("units-");
  const std::vector<uint8_t> labels(2 * 8 * 8, 1);
  for (const char* name : {"l.tif", "l.h5"}) {
    const std::string path = (tmp.path() / name).string();
    absl::StatusOr<std::unique_ptr<PlaneWriter>> w = OpenPlaneWriter(path, {2, 8, 8}, {40, 4, 4}, true, 0, "nm");
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->Append(2, labels.data(), nullptr, 0).ok());
    ASSERT_TRUE((*w)->Finish().ok());
    absl::StatusOr<RawArray> back = std::string(name) == "l.tif" ? ReadTiff(path) : ReadHdf5(path, "/labels");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->unit, "nm") << name;
    EXPECT_NEAR(back->spacing[0], 40, 1e-9) << name;
    EXPECT_NEAR(back->spacing[2], 4, 1e-5) << name;  // TIFF resolution is a float rational
  }
  if (const std::string why = retina::testing::PythonMissing("h5py, numpy, zarr"); !why.empty()) GTEST_SKIP() << why;
  std::string out;
  EXPECT_EQ(retina::testing::RunPython("zarr_peer.py", "check-h5 " + (tmp.path() / "l.h5").string() + " nm 40 4 4", &out),
            0)
      << out;
}

}  // namespace
}  // namespace retina::trainer
