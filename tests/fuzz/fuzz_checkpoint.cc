// torch.save files (zip + pickle + storages) through ReadStateDictFile:
// every entry's CRC-32, the pickle program (nothing executed), the tensors.
#include "tests/fuzz/fuzz_util.h"
#include "trainer/model/weights/state_dict.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)retina::trainer::ReadStateDictFile(retina::fuzz::WriteTemp("in.pt", data, size));
  return 0;
}
