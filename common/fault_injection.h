// Fault injection for tests: one documented seam instead of test switches
// read from the environment inside product code.
//
// A process reads RETINA_FAULTS once: "name=value[,name=value...]". Every
// fault point is named in kFaults below (with what it does); a name that is
// not is an error when the program starts (CheckFaults), and a fault that is
// set is logged as a warning then, so a run with faults never passes for a
// normal one. Tests set the variable for the process they start
// (tests/trainer/infer_test.cc: infer.stall_after_rows).
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/status.h"

namespace retina {

enum class Fault {
  // An infer rank stops making progress (sleeps until killed) once it has
  // committed this many chunk rows: a rank killed mid-job.
  kInferStallAfterRows,
  // A training or infer rank stalls (sleeps until killed) just before it
  // would issue collective #N (trainer/dist/flight_recorder.h numbering):
  // a rank stuck in a read, a hung GPU, a host gone quiet. Its gang
  // monitor keeps answering, so the others see where it stopped.
  kCollectiveStallAt,
  // With collective.stall_at: only this rank stalls (default: every rank
  // of the process's job that the fault is set for).
  kCollectiveStallRank,
  // A training rank dies (_exit(137), as if SIGKILLed: no checkpoint, no
  // event) right after it finished step N: a host lost at a known step.
  kTrainCrashAfterStep,
  // A training rank 0 sleeps this many milliseconds after writing a
  // checkpoint's files, before committing it: a slow shared store, and a
  // window for a stop or a crash in the middle of a checkpoint write.
  kCheckpointStallBeforeCommitMs,
  // retina-serve sleeps this many milliseconds before every forward pass
  // (its batch taken from the queue): a slow device, and a window in which
  // later requests queue behind a batch in progress.
  kServeStallForwardMs,
};

// INVALID_ARGUMENT naming RETINA_FAULTS and the term for a malformed value
// or an unknown fault; logs each fault that is set.
absl::Status CheckFaults();
// The value RETINA_FAULTS sets for `fault` (nullopt when unset).
std::optional<int64_t> FaultValue(Fault fault);

}  // namespace retina
