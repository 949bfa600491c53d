// The batch loader: background threads copy samples out of the memory-mapped
// shards into uint8 batches [B, H, W] (and masks), in order, through a
// bounded window of `prefetch` batches. Augmentation happens afterwards, on
// the training device (augment.h).
//
// Threading: Create starts the workers; Next() is called by one consumer
// thread (the training loop); the destructor stops and joins the workers.
// On CUDA (pin_memory), batches are allocated in page-locked memory so the
// trainer's .to(device, non_blocking=true) copies overlap compute.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/data/shards.h"

namespace retina::trainer {

struct RawBatch {
  int64_t index = 0;            // position in the epoch's batch list
  torch::Tensor images;         // uint8 [B, H, W]
  torch::Tensor masks;          // uint8 [B, H, W] or undefined
  std::vector<int64_t> samples; // dataset indices
  absl::Status status;          // DATA_LOSS when a sample failed its checksum (the batch must not be used)
};

struct LoaderOptions {
  int threads = 2;
  int prefetch = 4;          // batches ready or in flight ahead of the consumer
  bool with_masks = false;
  bool check_samples = true;  // each sample against its shard crc32 (off only for benchmarks' reference runs)
  bool pin_memory = false;   // only honoured when CUDA is available
};

class Loader {
 public:
  // `batches`: the sample indices of each batch, in consumption order (from
  // the sampler). `dataset` must outlive the loader.
  static absl::StatusOr<std::unique_ptr<Loader>> Create(const ShardedDataset* dataset,
                                                        std::vector<std::vector<int64_t>> batches,
                                                        const LoaderOptions& options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch in order, or nullopt after the last. Blocks while the
  // workers are behind; that time is added to wait_seconds().
  std::optional<RawBatch> Next();
  // Seconds the consumer spent blocked in Next() so far / in the last call.
  double wait_seconds() const { return wait_total_; }
  double last_wait_seconds() const { return wait_last_; }

 private:
  Loader(const ShardedDataset* dataset, std::vector<std::vector<int64_t>> batches, LoaderOptions options);
  void Work();
  RawBatch Assemble(int64_t k) const;

  const ShardedDataset* dataset_;
  std::vector<std::vector<int64_t>> batches_;
  LoaderOptions options_;
  std::mutex mu_;
  std::condition_variable ready_cv_, space_cv_;
  std::map<int64_t, RawBatch> ready_;
  int64_t next_to_make_ = 0;   // guarded by mu_
  int64_t next_to_give_ = 0;   // guarded by mu_
  bool stop_ = false;          // guarded by mu_
  std::vector<std::thread> workers_;
  double wait_total_ = 0, wait_last_ = 0;  // consumer thread only
};

}  // namespace retina::trainer
