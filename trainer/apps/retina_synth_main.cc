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

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/cli.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/data/synth.h"
#include "trainer/data/writers.h"

namespace retina::trainer {
namespace {

constexpr char kUsage[] =
    "usage: retina-synth images --out DIR [--count 32] [--size 512] [--seed 0]\n"
    "       retina-synth benchmark --out DIR [--train 3] [--test 1] [--shape 16,256,256]\n"
    "                              [--spacing 1,1,1] [--classes 2] [--seed 0]\n";

absl::StatusOr<CliFlags> Flags(const std::vector<std::string>& args, const std::vector<std::string>& known) {
  ASSIGN_OR_RETURN(CliFlags f, ParseCliFlags(args, known));
  RETURN_IF_ERROR(f.Require({"--out"}));
  if (!f.positional.empty()) return absl::InvalidArgumentError("unexpected argument " + f.positional[0]);
  return f;
}

absl::Status Int(const CliFlags& f, const std::string& key, int64_t* v) {
  RETURN_IF_ERROR(f.GetInt64(key, v));
  if (*v < 0) return absl::InvalidArgumentError(key + ": must not be negative");
  return absl::OkStatus();
}

template <class T>
absl::Status Triple(const CliFlags& f, const std::string& key, std::array<T, 3>* v) {
  auto it = f.values.find(key);
  if (it == f.values.end()) return absl::OkStatus();
  std::vector<std::string> parts = absl::StrSplit(it->second, ',');
  bool ok = parts.size() == 3;
  for (size_t i = 0; ok && i < 3; ++i) {
    double d;
    ok = absl::SimpleAtod(parts[i], &d) && d > 0;
    if (ok) (*v)[i] = static_cast<T>(d);
  }
  if (!ok) return absl::InvalidArgumentError(key + ": expected three positive numbers z,y,x, got '" + it->second + "'");
  return absl::OkStatus();
}

absl::Status Images(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(auto f, Flags(args, {"--out", "--count", "--size", "--seed"}));
  int64_t count = 32, size = 512, seed = 0;
  RETURN_IF_ERROR(Int(f, "--count", &count));
  RETURN_IF_ERROR(Int(f, "--size", &size));
  RETURN_IF_ERROR(Int(f, "--seed", &seed));
  const std::filesystem::path out = f.Get("--out");
  RETURN_IF_ERROR(CreateDirectories(out));
  for (int64_t i = 0; i < count; ++i) {
    SynthOptions o;
    o.shape = {1, size, size};
    o.seed = static_cast<uint64_t>(seed) * 1000003 + i;
    char name[32];
    std::snprintf(name, sizeof(name), "synth-%05lld.tif", static_cast<long long>(i));
    RETURN_IF_ERROR(WriteTiff((out / name).string(), Synthesize(o).image, false));
  }
  std::printf("wrote %lld %lldx%lld images to %s\n", static_cast<long long>(count), static_cast<long long>(size),
              static_cast<long long>(size), out.c_str());
  return absl::OkStatus();
}

absl::Status Benchmark(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(auto f, Flags(args, {"--out", "--train", "--test", "--shape", "--spacing", "--classes", "--seed"}));
  int64_t train = 3, test = 1, classes = 2, seed = 0;
  RETURN_IF_ERROR(Int(f, "--train", &train));
  RETURN_IF_ERROR(Int(f, "--test", &test));
  RETURN_IF_ERROR(Int(f, "--classes", &classes));
  RETURN_IF_ERROR(Int(f, "--seed", &seed));
  if (classes != 2 && classes != 3) return absl::InvalidArgumentError("--classes: 2 or 3");
  SynthOptions base;
  base.classes = static_cast<int>(classes);
  RETURN_IF_ERROR(Triple(f, "--shape", &base.shape));
  RETURN_IF_ERROR(Triple(f, "--spacing", &base.spacing));
  const std::filesystem::path out = f.Get("--out");
  for (const auto& [split, n] : {std::pair<std::string, int64_t>{"train", train}, {"test", test}}) {
    RETURN_IF_ERROR(CreateDirectories(out / split / "images"));
    RETURN_IF_ERROR(CreateDirectories(out / split / "masks"));
    for (int64_t i = 0; i < n; ++i) {
      SynthOptions o = base;
      o.seed = static_cast<uint64_t>(seed) * 1000003 + (split == "test" ? 500000 : 0) + i;
      const SynthVolume v = Synthesize(o);
      const std::string name = absl::StrCat("vol", i, ".tif");
      RETURN_IF_ERROR(WriteTiff((out / split / "images" / name).string(), v.image, true));
      RETURN_IF_ERROR(WriteTiff((out / split / "masks" / name).string(), v.mask, true));
    }
  }
  std::printf("wrote %lld train and %lld test volumes of %lldx%lldx%lld (z,y,x), %lld classes, to %s\n",
              static_cast<long long>(train), static_cast<long long>(test), static_cast<long long>(base.shape[0]),
              static_cast<long long>(base.shape[1]), static_cast<long long>(base.shape[2]),
              static_cast<long long>(classes), out.c_str());
  return absl::OkStatus();
}

int Main(const std::vector<std::string>& args) {
  return RunSubcommands("retina-synth", kUsage, args, {{"images", Images}, {"benchmark", Benchmark}});
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) { return retina::trainer::Main({argv + 1, argv + argc}); }
