#include "common/fault_injection.h"

#include <cstdlib>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"

namespace retina {
namespace {

constexpr struct {
  Fault fault;
  const char* name;
} kFaults[] = {
    {Fault::kInferStallAfterRows, "infer.stall_after_rows"},
    {Fault::kCollectiveStallAt, "collective.stall_at"},
    {Fault::kCollectiveStallRank, "collective.stall_rank"},
    {Fault::kTrainCrashAfterStep, "train.crash_after_step"},
    {Fault::kCheckpointStallBeforeCommitMs, "checkpoint.stall_before_commit_ms"},
    {Fault::kServeStallForwardMs, "serve.stall_forward_ms"},
};

struct Parsed {
  std::map<Fault, int64_t> values;
  absl::Status status;
};

Parsed Parse() {
  Parsed p;
  const char* env = std::getenv("RETINA_FAULTS");
  if (env == nullptr) return p;
  for (absl::string_view term : absl::StrSplit(env, ',', absl::SkipWhitespace())) {
    const std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(term, absl::MaxSplits('=', 1));
    int64_t value = 0;
    const Fault* fault = nullptr;
    for (const auto& f : kFaults) {
      if (kv.first == f.name) fault = &f.fault;
    }
    if (fault == nullptr || !absl::SimpleAtoi(kv.second, &value)) {
      std::string known;
      for (const auto& f : kFaults) absl::StrAppend(&known, known.empty() ? "" : ", ", f.name, "=N");
      p.status = absl::InvalidArgumentError(
          absl::StrCat("RETINA_FAULTS: '", term, "' is not a fault this program has (", known, ")"));
      return p;
    }
    p.values[*fault] = value;
  }
  return p;
}

const Parsed& Faults() {
  static const Parsed* parsed = new Parsed(Parse());
  return *parsed;
}

}  // namespace

absl::Status CheckFaults() {
  const Parsed& p = Faults();
  if (!p.status.ok()) return p.status;
  for (const auto& [fault, value] : p.values) {
    for (const auto& f : kFaults) {
      if (f.fault == fault) RETINA_LOG(Warning) << "RETINA_FAULTS: fault injection " << f.name << "=" << value << " is set";
    }
  }
  return absl::OkStatus();
}

std::optional<int64_t> FaultValue(Fault fault) {
  const Parsed& p = Faults();
  auto it = p.values.find(fault);
  if (it == p.values.end()) return std::nullopt;
  return it->second;
}

}  // namespace retina
