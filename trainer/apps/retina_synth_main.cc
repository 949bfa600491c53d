// retina-synth: EM-like synthetic data for demos and tests (no downloads).
//
//   retina-synth images --out DIR [--count 32] [--size 512] [--seed 0]
//       unlabelled 2D images (TIFF) for pre-training: retina-shard pack --input DIR
//   retina-synth benchmark --out DIR [--train 3] [--test 1] [--shape 16,256,256]
//       [--spacing 1,1,1] [--classes 2] [--seed 0]
//       labelled volumes in the benchmark layout DIR/{train,test}/{images,masks}/volN.tif:
//       retina-shard import --kind folder --labels index --classes N --input DIR
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/data/tools/synth.h"
#include "trainer/data/formats/writers.h"

namespace retina::trainer {
namespace {

struct ImagesFlags {
  std::string out;
  int64_t count = 32, size = 512, seed = 0;
};

absl::Status Images(const ImagesFlags& f) {
  const std::filesystem::path out = f.out;
  RETURN_IF_ERROR(CreateDirectories(out));
  for (int64_t i = 0; i < f.count; ++i) {
    SynthOptions o;
    o.shape = {1, f.size, f.size};
    o.seed = static_cast<uint64_t>(f.seed) * 1000003 + i;
    char name[32];
    std::snprintf(name, sizeof(name), "synth-%05lld.tif", static_cast<long long>(i));
    RETURN_IF_ERROR(WriteTiff((out / name).string(), Synthesize(o).image, false));
  }
  std::printf("wrote %lld %lldx%lld images to %s\n", static_cast<long long>(f.count), static_cast<long long>(f.size),
              static_cast<long long>(f.size), out.c_str());
  return absl::OkStatus();
}

struct BenchmarkFlags {
  std::string out;
  int64_t train = 3, test = 1, seed = 0;
  SynthOptions base;
};

absl::Status Benchmark(const BenchmarkFlags& f) {
  const std::filesystem::path out = f.out;
  for (const auto& [split, n] : {std::pair<std::string, int64_t>{"train", f.train}, {"test", f.test}}) {
    RETURN_IF_ERROR(CreateDirectories(out / split / "images"));
    RETURN_IF_ERROR(CreateDirectories(out / split / "masks"));
    for (int64_t i = 0; i < n; ++i) {
      SynthOptions o = f.base;
      o.seed = static_cast<uint64_t>(f.seed) * 1000003 + (split == "test" ? 500000 : 0) + i;
      const SynthVolume v = Synthesize(o);
      const std::string name = absl::StrCat("vol", i, ".tif");
      RETURN_IF_ERROR(WriteTiff((out / split / "images" / name).string(), v.image, true));
      RETURN_IF_ERROR(WriteTiff((out / split / "masks" / name).string(), v.mask, true));
    }
  }
  const auto& shape = f.base.shape;
  std::printf("wrote %lld train and %lld test volumes of %lldx%lldx%lld (z,y,x), %d classes, to %s\n",
              static_cast<long long>(f.train), static_cast<long long>(f.test), static_cast<long long>(shape[0]),
              static_cast<long long>(shape[1]), static_cast<long long>(shape[2]), f.base.classes, out.c_str());
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  Cli cli("retina-synth", "EM-like synthetic data for demos and tests (no downloads).");
  ImagesFlags images;
  CLI::App* im = cli.Command("images", "Unlabelled 2D images (TIFF) for pre-training: retina-shard pack --input DIR",
                             [&] { return Images(images); });
  im->add_option("--out", images.out, "output directory")->required();
  im->add_option("--count", images.count, "images")->check(kNonNegativeInt);
  im->add_option("--size", images.size, "side, pixels")->check(kPositiveInt);
  im->add_option("--seed", images.seed, "seed")->check(kNonNegativeInt);

  BenchmarkFlags bench;
  CLI::App* b = cli.Command("benchmark",
                            "Labelled volumes in the benchmark layout DIR/{train,test}/{images,masks}/volN.tif:\n"
                            "retina-shard import --kind folder --labels index --classes N --input DIR",
                            [&] { return Benchmark(bench); });
  b->add_option("--out", bench.out, "output directory")->required();
  b->add_option("--train", bench.train, "training volumes")->check(kNonNegativeInt);
  b->add_option("--test", bench.test, "test volumes")->check(kNonNegativeInt);
  b->add_option("--shape", bench.base.shape, "volume shape z,y,x")->delimiter(',')->check(kPositiveInt);
  b->add_option("--spacing", bench.base.spacing, "voxel spacing z,y,x")->delimiter(',')->check(kPositiveNumber);
  b->add_option("--classes", bench.base.classes, "2: background / mitochondria; 3: + vesicles")
      ->check(CLI::IsMember({2, 3}));
  b->add_option("--seed", bench.seed, "seed")->check(kNonNegativeInt);
  return cli.Run(argc, argv);
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) { return retina::trainer::Main(argc, argv); }
