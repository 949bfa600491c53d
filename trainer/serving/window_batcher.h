// Dynamic batching of model windows across concurrent requests
// (retina-serve; docs/serving.md "Batching").
//
// A request's sliding-window pass hands its windows to Run() a group at a
// time (at most the model's max_batch) and blocks until their logits are
// back. One thread forms batches: it takes the oldest waiting group, then
// every later group for the same model version that still fits max_batch
// windows, waiting up to the model's max_delay_ms after the oldest group
// arrived for more; one forward pass runs them all and each group gets its
// rows back. Groups never split, and a batch holds one model version (a
// reload never mixes weights inside a request's answer: a request holds its
// version from start to end).
//
// Bounds: the queue holds at most `max_queue_windows` windows; a group that
// would pass it is refused at once (RESOURCE_EXHAUSTED with a retry hint).
// A group whose deadline has passed, or whose request was cancelled, is
// dropped when a batch is formed, before any forward pass
// (DEADLINE_EXCEEDED, CANCELLED).
#pragma once

#include <torch/torch.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "trainer/serving/model_pool.h"

namespace retina::trainer::serving {

// What the batcher reports (retina-serve turns these into Prometheus metrics).
class BatchObserver {
 public:
  virtual ~BatchObserver() = default;
  virtual void BatchRun(const std::string& model, int64_t windows, double seconds) {}
  virtual void Busy(bool forward_running) {}  // a forward pass started / ended
  virtual void QueueDepth(int64_t windows) {}
  virtual void Dropped(const std::string& model, const char* why) {}  // "deadline", "cancelled", "full"
};

struct BatcherOptions {
  int64_t max_queue_windows = 1024;
};

class WindowBatcher {
 public:
  WindowBatcher(BatcherOptions options, BatchObserver* observer);
  ~WindowBatcher();  // Stop()
  WindowBatcher(const WindowBatcher&) = delete;
  WindowBatcher& operator=(const WindowBatcher&) = delete;

  // The logits [n, C, win, win] (CPU, float) of `windows` [n, 1, win, win]
  // under `model`. n must be at most model.spec.max_batch. `cancelled` is
  // polled while the group waits.
  absl::StatusOr<torch::Tensor> Run(const std::shared_ptr<const LoadedModel>& model, torch::Tensor windows,
                                    absl::Time deadline, std::function<bool()> cancelled = nullptr);

  // Finishes the batches in progress, then refuses (UNAVAILABLE) what waits
  // and every later Run. Idempotent.
  void Stop();

  int64_t queued_windows() const;

 private:
  struct Group {
    std::shared_ptr<const LoadedModel> model;
    torch::Tensor windows;
    absl::Time deadline, arrived;
    std::function<bool()> cancelled;
    std::promise<absl::StatusOr<torch::Tensor>> done;
  };
  void Loop();
  // Drops the waiting groups that expired or were cancelled (under mu_).
  void DropDead(absl::Time now);

  BatcherOptions options_;
  BatchObserver* observer_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Group>> queue_;
  int64_t queued_ = 0;
  double seconds_per_window_ = 0;  // running mean, for the retry hint
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace retina::trainer::serving
