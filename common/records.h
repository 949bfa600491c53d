// The contract between trainer ranks and the services (docs/store.md,
// "Records"): what a rank leaves in the store and says by its exit status,
// as typed records with one writer and one reader each.
//
//   exit status          retina-train -> worker, coordinator    ExitCode
//   events.jsonl lines   rank 0 -> worker pipe, coordinator     Event
//   checkpoints/*/state.json   trainer -> resume, retina-infer  CheckpointState
//   eval.json            evaluate job -> coordinator, CLI       EvalReport
//   metrics.csv          rank 0 -> coordinator                  common/metrics_csv.h
//
// Every JSON record carries "v" (its version, kRecordVersion); a reader
// accepts a record without one (written before versions: 1) and refuses a
// newer version, naming it. Readers name the file/field of every error.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace retina {

inline constexpr int kRecordVersion = 1;

// Exit statuses of retina-train (docs/cli.md's table).
enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,     // an error, reported on stderr
  kExitUsage = 2,      // a bad command line or job file
  kExitPreempted = 75  // stopped by SIGTERM/SIGUSR1 after a checkpoint; resume from LATEST
};
// "ok", "preempted", "failed (exit N)", "killed by signal N" for a status as
// the worker reports it (128 + N for a signal).
std::string DescribeExit(int code);
// Short form for labels: ok | preempted | failed | killed.
const char* ExitResult(int code);

// --- events.jsonl -----------------------------------------------------------
struct StartEvent {
  int64_t step = 0, total_steps = 0;
  int world_size = 1, threads = 1, global_batch = 0;
  int accumulation = 1;  // micro-batches per rank and step (an elastic job below its full size)
  std::string device, backend;
};
struct StepEvent {
  int64_t step = 0, epoch = 0;
  double loss = 0, lr = 0, images_per_s = 0, data_wait_s = 0, allreduce_s = 0;
};
struct EvalEvent {
  std::optional<int64_t> step;             // absent for an evaluate job
  double iou = 0;                          // mean over the scored classes
  std::map<int, double> iou_per_class;     // class index -> IoU
};
struct CheckpointEvent {
  int64_t step = 0;
  std::string path;
  std::vector<std::string> removed;        // retention
};
struct ResumedEvent { int64_t step = 0; };
struct PreemptedEvent { int64_t step = 0; };
struct DoneEvent { std::optional<int64_t> step; };
// An elastic job resumed at another world size than its checkpoint's:
// "resized: 4 -> 2 ranks, accumulation 1 -> 2" (the global batch is kept).
struct ResizedEvent {
  int64_t step = 0;
  int from_world = 1, to_world = 1, from_accumulation = 1, to_accumulation = 1;
};
// "resized: F -> T ranks, accumulation A -> B".
std::string DescribeResize(const ResizedEvent& e);
// An infer job's progress over all its ranks (rank 0 counts the chunk rows'
// completion markers in the store): chunk rows of every input's full
// resolution, and their voxels. `skipped` rows were done by an earlier attempt.
struct PredictEvent {
  int64_t chunks_done = 0, chunks_total = 0, chunks_skipped = 0;
  int64_t voxels_done = 0, voxels_total = 0;
  double voxels_per_s = 0;  // this attempt's, over all ranks
};

// A serve job's server is answering (retina-serve run): where, and which
// models (the coordinator shows it as Progress.endpoint).
struct ServingEvent {
  std::string address;  // host:port
  std::vector<std::string> models;
};

using Event = std::variant<StartEvent, StepEvent, EvalEvent, CheckpointEvent, ResumedEvent, PreemptedEvent, DoneEvent,
                           PredictEvent, ResizedEvent, ServingEvent>;

// "start", "step", "eval", "checkpoint", "resumed", "preempted", "done", "predict", "resized", "serving".
const char* EventName(const Event& e);
std::optional<int64_t> EventStep(const Event& e);
// One line (no newline) with "event", "v", "time" (unix seconds) and the fields.
std::string EncodeEvent(const Event& e, double time_unix_s);
// INVALID_ARGUMENT "<where>.<key>: ..." for a malformed line; UNIMPLEMENTED
// for an unknown event name or a newer version (a reader may skip those).
absl::StatusOr<Event> DecodeEvent(absl::string_view line, const std::string& where = "event");

// --- checkpoints/step-N/state.json ------------------------------------------
struct CheckpointState {
  int64_t step = 0, epoch = 0, sampler_offset = 0;
  uint64_t seed = 0;
  int world_size = 1;
  int accumulation = 1;        // micro-batches per rank and step (1 in checkpoints before elastic gangs)
  std::string kind;            // pretrain | finetune
  std::string config_sha256;
  std::string model;           // model.name: what inference rebuilds
  int image_size = 0;
  int classes = 1;
  std::optional<double> mean, std;  // the normalisation the run used (absent in early checkpoints)
  // The training data as used: the dataset's directory, its version and the
  // version's digest (common/dataset_manifest.h; absent in early checkpoints).
  std::string dataset;
  int dataset_version = 0;
  std::string dataset_digest;
  // Lineage (docs/models.md; absent in early checkpoints): what the run
  // started from as the weights resolved it (a store-relative checkpoint
  // directory, "models/<name>/v<N>", a file, or "random"), the SHA-256 of
  // that checkpoint's MANIFEST file, and the trainer's version string.
  std::string init;
  std::string init_manifest;
  std::string code_version;
};
std::string EncodeCheckpointState(const CheckpointState& s);
// `where` names the file in errors (DATA_LOSS for a damaged record).
absl::StatusOr<CheckpointState> DecodeCheckpointState(absl::string_view text, const std::string& where);

// --- jobs/<id>/eval.json ------------------------------------------------------
struct ClassScore {
  int cls = 0;
  double iou = 0, f1 = 0, precision = 0, recall = 0;
  std::optional<double> mfd;           // absent when either side is empty
  std::optional<double> cremi_score;   // CREMI benchmarks only
};
struct EvalItem {
  std::string source;
  std::vector<ClassScore> classes;
};
struct EvalReport {
  std::string checkpoint, mode;
  double overlap = 0;
  double mean_iou = 0;
  std::map<int, double> mean_iou_per_class;
  std::vector<EvalItem> items;
};
std::string EncodeEvalReport(const EvalReport& r);
absl::StatusOr<EvalReport> DecodeEvalReport(absl::string_view text, const std::string& where);

}  // namespace retina
