// NIfTI-1/2 (niftilib) through ReadNifti, plain and gzip-named.
#include "tests/fuzz/fuzz_util.h"
#include "trainer/data/formats/readers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace retina::trainer;
  const bool gz = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
  (void)ReadNifti(retina::fuzz::WriteTemp(gz ? "in.nii.gz" : "in.nii", data, size));
  return 0;
}
