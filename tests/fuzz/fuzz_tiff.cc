// TIFF (libtiff) through ReadTiff and the streaming plane reader.
#include "tests/fuzz/fuzz_util.h"
#include "trainer/data/formats/readers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace retina::trainer;
  const std::string path = retina::fuzz::WriteTemp("in.tif", data, size);
  (void)ReadTiff(path);
  absl::StatusOr<std::unique_ptr<PlaneReader>> r = OpenTiffPlaneReader(path);
  if (r.ok() && *r && (*r)->shape()[1] * (*r)->shape()[2] <= (1 << 24)) {
    std::string plane(static_cast<size_t>((*r)->shape()[1] * (*r)->shape()[2]), '\0');
    (void)(*r)->Read(0, 1, reinterpret_cast<uint8_t*>(plane.data()));
  }
  return 0;
}
