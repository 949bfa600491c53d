// The store's JSON records: an events.jsonl line, a checkpoint's
// state.json, an eval.json, and a dataset's manifest.json.
#include <filesystem>
#include <string>

#include "common/dataset_manifest.h"
#include "common/records.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)retina::DecodeEvent(text);
  (void)retina::DecodeCheckpointState(text, "state.json");
  (void)retina::DecodeEvalReport(text, "eval.json");
  std::filesystem::create_directories(retina::fuzz::TempDir() / "ds");
  retina::fuzz::WriteTemp("ds/manifest.json", data, size);
  (void)retina::DatasetManifest::Load(retina::fuzz::TempDir() / "ds");
  return 0;
}
