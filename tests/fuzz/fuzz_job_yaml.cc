// A job YAML through ParseJobConfig (yaml-cpp, then every field's checks).
#include <string>

#include "common/job_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)retina::ParseJobConfig(std::string(reinterpret_cast<const char*>(data), size), "fuzz.yaml");
  return 0;
}
