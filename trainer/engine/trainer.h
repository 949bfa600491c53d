// One rank of a pre-training or fine-tuning job (the step protocol is in
// run.h): Create sets the rank up (launch, device, data checks, communicator,
// model and transfer, optimiser, the store, resume), Run trains to the end or
// to a stop request, through Step, Validate and Save.
#pragma once

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "common/records.h"
#include "common/progress.h"
#include "common/store_layout.h"
#include "common/thread_plan.h"
#include "trainer/data/augment.h"
#include "trainer/data/loader.h"
#include "trainer/data/sampler.h"
#include "trainer/data/shards.h"
#include "trainer/dist/communicator.h"
#include "trainer/dist/launch_env.h"
#include "trainer/dist/reducer.h"
#include "trainer/engine/run.h"
#include "trainer/model/transunet.h"
#include "trainer/runtime/device.h"

namespace retina::trainer {

class EventLog;

class Trainer {
 public:
  // `config` is a pretrain or finetune job, already confined (run.cc).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const JobConfig& config, const RunOptions& options);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  absl::StatusOr<RunOutcome> Run();

 private:
  absl::StatusOr<RunOutcome> RunSteps();
  struct StepResult {
    double mean_loss = 0;  // over ranks
    double lr = 0;
    bool stop = false;     // some rank was asked to stop
  };
  Trainer(const JobConfig& config, const RunOptions& options);
  absl::Status SetUpCommunicator();
  absl::Status SetUpData();
  absl::Status SetUpModel();
  absl::Status SetUpStore();
  absl::Status StartEpochLoader();
  // One SGD step on `batch` (every rank, in lock step).
  absl::StatusOr<StepResult> Step(const RawBatch& batch);
  // Rank 0: mean IoU of the validation set over its classes.
  absl::StatusOr<double> Validate();
  absl::Status Save(std::optional<double> score);
  // Rank 0: events, metrics.csv and the progress line for a finished step.
  void Record(const StepResult& r, double seconds, std::optional<double> val_iou);

  JobConfig config_;
  RunOptions options_;
  bool pretrain_;
  StoreLayout layout_;
  LaunchInfo launch_;
  ThreadPlan threads_;
  DevicePlan device_;
  int global_batch_ = 0;
  int64_t batch_ = 0;  // per rank and micro-batch: global batch / full world size
  int64_t accumulation_ = 1;  // micro-batches per step: full world size / world size (run.h)
  int bn_group_ranks_ = 1;    // BatchNorm groups: this many consecutive ranks (batch_norm.h)
  std::optional<ResizedEvent> resized_;  // resumed at another size than the checkpoint's
  std::unique_ptr<ShardedDataset> data_, val_;
  std::string dataset_dir_;  // data.dataset resolved (recorded in state.json with its version)
  // finetune.init as resolved (store-relative where inside the store) and its
  // checkpoint's MANIFEST SHA-256: the lineage in state.json (docs/models.md).
  std::string init_source_ = "random";
  std::string init_manifest_;
  double mean_ = 0, std_ = 1;
  std::unique_ptr<Communicator> comm_;
  TransUNetConfig model_config_;
  VisionTransformer model_{nullptr};
  std::unique_ptr<GradientReducer> reducer_;
  std::unique_ptr<torch::optim::SGD> optimizer_;
  int64_t step_ = 0;
  std::optional<DistributedSampler> sampler_;
  std::unique_ptr<Loader> loader_;
  std::unique_ptr<PretrainAugmenter> pretrain_augment_;
  std::unique_ptr<FinetuneAugmenter> finetune_augment_;
  int64_t steps_per_epoch_ = 0, total_ = 0, horizon_ = 0;
  std::unique_ptr<EventLog> events_;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> metrics_csv_{nullptr, &std::fclose};
  std::unique_ptr<ProgressBar> bar_;
};

}  // namespace retina::trainer
