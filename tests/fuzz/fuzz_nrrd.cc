// NRRD (teem) through ReadNrrd: attached and detached (`data file:`, which
// the read scope confines to the temporary directory).
#include "tests/fuzz/fuzz_util.h"
#include "trainer/data/formats/readers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace retina::trainer;
  static const uint8_t kRaw[256] = {7};
  retina::fuzz::WriteTemp("data.raw", kRaw, sizeof kRaw);  // what a detached header may name
  (void)ReadNrrd(retina::fuzz::WriteTemp("in.nrrd", data, size));
  return 0;
}
