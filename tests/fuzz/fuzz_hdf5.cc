// HDF5 through ReadHdf5 and the hyperslab plane reader, at the dataset
// names EM files use.
#include "tests/fuzz/fuzz_util.h"
#include "trainer/data/formats/readers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace retina::trainer;
  const std::string path = retina::fuzz::WriteTemp("in.h5", data, size);
  for (const char* dataset : {"/raw", "/volumes/raw", "/volumes/labels/clefts", "/images"}) {
    absl::StatusOr<RawArray> a = ReadHdf5(path, dataset);
    if (a.ok()) (void)ToMask(*a, MaskConvention::kClassIndex);
    absl::StatusOr<std::unique_ptr<PlaneReader>> r = OpenHdf5PlaneReader(path, dataset);
    if (r.ok() && *r && (*r)->shape()[1] * (*r)->shape()[2] <= (1 << 24)) {
      std::string plane(static_cast<size_t>((*r)->shape()[1] * (*r)->shape()[2]), '\0');
      (void)(*r)->Read(0, 1, reinterpret_cast<uint8_t*>(plane.data()));
    }
  }
  return 0;
}
