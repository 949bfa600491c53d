// PNG (libpng) through ReadPng and the conversion to an image.
#include "tests/fuzz/fuzz_util.h"
#include "trainer/data/formats/readers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace retina::trainer;
  absl::StatusOr<RawArray> a = ReadPng(retina::fuzz::WriteTemp("in.png", data, size));
  if (a.ok()) (void)ToImage(*a, IntensityScaling::kMinMax);
  return 0;
}
