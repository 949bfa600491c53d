#include "trainer/data/tools/synth.h"

#include <gtest/gtest.h>

#include "tests/trainer/python_peer.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"

namespace retina::trainer {
namespace {

double MeanWhere(const SynthVolume& v, uint8_t cls, bool equal) {
  double sum = 0;
  int64_t n = 0;
  for (size_t i = 0; i < v.image.data.size(); ++i) {
    if ((v.mask.data[i] == cls) == equal) {
      sum += v.image.data[i];
      ++n;
    }
  }
  return n ? sum / n : 0;
}

TEST(Synth, DeterministicPlausibleAndLearnable) {
  SynthOptions o;
  o.shape = {4, 128, 128};
  o.seed = 3;
  o.classes = 3;
  const SynthVolume a = Synthesize(o), b = Synthesize(o);
  EXPECT_EQ(a.image.data, b.image.data);
  EXPECT_EQ(a.mask.data, b.mask.data);
  o.seed = 4;
  EXPECT_NE(Synthesize(o).image.data, a.image.data);
  int64_t counts[3] = {0, 0, 0};
  for (uint8_t m : a.mask.data) {
    ASSERT_LT(m, 3);
    ++counts[m];
  }
  const double n = static_cast<double>(a.mask.data.size());
  EXPECT_GT(counts[1] / n, 0.03);  // mitochondria present but not everywhere
  EXPECT_LT(counts[1] / n, 0.40);
  EXPECT_GT(counts[2], 0);
  // Mitochondria are darker than the rest on average: a signal to learn.
  EXPECT_LT(MeanWhere(a, 1, true), MeanWhere(a, 1, false) - 20);
  o.classes = 2;
  for (uint8_t m : Synthesize(o).mask.data) ASSERT_LT(m, 2);
}

TEST(Synth, TiffRoundTripKeepsPixelsAndSpacing) {
  retina::testing::ScopedTempDir tmp("synth-");
  SynthOptions o;
  o.shape = {3, 40, 50};
  o.spacing = {40, 4, 4};
  const SynthVolume v = Synthesize(o);
  const std::string path = (tmp.path() / "v.tif").string();
  ASSERT_TRUE(WriteTiff(path, v.image, true).ok());
  absl::StatusOr<RawArray> back = ReadTiff(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->bytes, v.image.data);
  EXPECT_EQ(back->shape, v.image.shape);
  EXPECT_NEAR(back->spacing[0], 40, 1e-9);
  EXPECT_NEAR(back->spacing[1], 4, 1e-5);
  // tifffile (an independent reader) sees the same stack, when available.
  if (retina::testing::PythonMissing("tifffile, numpy").empty()) {
    std::string out;
    EXPECT_EQ(retina::testing::RunPython(
                  "-c", "\"import tifffile,sys; a=tifffile.imread('" + path + "'); sys.exit(0 if a.shape==(3,40,50) and int(a.sum())==" +
                            std::to_string([&] { int64_t s = 0; for (uint8_t x : v.image.data) s += x; return s; }()) + " else 1)\"",
                  &out),
              0)
        << out;
  }
}

}  // namespace
}  // namespace retina::trainer
