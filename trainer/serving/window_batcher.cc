#include "trainer/serving/window_batcher.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "common/fault_injection.h"

namespace retina::trainer::serving {

WindowBatcher::WindowBatcher(BatcherOptions options, BatchObserver* observer)
    : options_(options), observer_(observer), thread_([this] { Loop(); }) {}

WindowBatcher::~WindowBatcher() { Stop(); }

void WindowBatcher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int64_t WindowBatcher::queued_windows() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_;
}

absl::StatusOr<torch::Tensor> WindowBatcher::Run(const std::shared_ptr<const LoadedModel>& model,
                                                 torch::Tensor windows, absl::Time deadline,
                                                 std::function<bool()> cancelled) {
  const int64_t n = windows.size(0);
  if (n < 1 || n > model->spec.max_batch) {
    return absl::InvalidArgumentError(absl::StrCat("a group of ", n, " windows (1..", model->spec.max_batch, ")"));
  }
  auto g = std::make_unique<Group>();
  g->model = model;
  g->windows = std::move(windows);
  g->deadline = deadline;
  g->arrived = absl::Now();
  g->cancelled = std::move(cancelled);
  std::future<absl::StatusOr<torch::Tensor>> result = g->done.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return absl::UnavailableError("the server is shutting down");
    if (queued_ + n > options_.max_queue_windows) {
      // A hint: the time the windows ahead take at the measured rate (at least 10 ms).
      const int64_t retry_ms = std::max<int64_t>(10, std::llround(1000 * queued_ * seconds_per_window_));
      if (observer_) observer_->Dropped(model->spec.name, "full");
      absl::Status s = absl::ResourceExhaustedError(
          absl::StrCat("the queue is full (", queued_, " windows waiting, limit ", options_.max_queue_windows,
                       " = retina-serve --max-queue-windows); retry in about ", retry_ms, " ms"));
      s.SetPayload("retry-after-ms", absl::Cord(absl::StrCat(retry_ms)));
      return s;
    }
    queued_ += n;
    queue_.push_back(std::move(g));
    if (observer_) observer_->QueueDepth(queued_);
  }
  cv_.notify_all();
  // The batcher thread settles every group it takes (result, drop or stop):
  // poll only for cancellation while waiting.
  while (result.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) {
    cv_.notify_all();  // lets the loop see a cancellation or an expired deadline
  }
  return result.get();
}

void WindowBatcher::DropDead(absl::Time now) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    Group& g = **it;
    const char* why = nullptr;
    absl::Status status;
    if (now >= g.deadline) {
      why = "deadline";
      status = absl::DeadlineExceededError("the request's deadline passed while its windows waited for a forward pass");
    } else if (g.cancelled && g.cancelled()) {
      why = "cancelled";
      status = absl::CancelledError("the request was cancelled");
    }
    if (why == nullptr) {
      ++it;
      continue;
    }
    queued_ -= g.windows.size(0);
    if (observer_) observer_->Dropped(g.model->spec.name, why);
    g.done.set_value(status);
    it = queue_.erase(it);
  }
}

void WindowBatcher::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait_for(lock, std::chrono::milliseconds(50), [&] { return stop_ || !queue_.empty(); });
    DropDead(absl::Now());
    if (stop_) break;
    if (queue_.empty()) continue;
    // Wait for the batch to fill: until the oldest group has waited its
    // model's max delay, or enough windows of its version are here.
    const std::shared_ptr<const LoadedModel> model = queue_.front()->model;
    const int64_t max_batch = model->spec.max_batch;
    const absl::Time fill_until = queue_.front()->arrived + absl::Milliseconds(model->spec.max_delay_ms);
    auto fits = [&] {
      int64_t windows = 0;
      for (const auto& g : queue_) {
        if (g->model == model) windows += g->windows.size(0);
      }
      return windows >= max_batch;
    };
    while (!stop_ && !fits() && absl::Now() < fill_until) {
      cv_.wait_for(lock, std::chrono::microseconds(std::max<int64_t>(
                             1, absl::ToInt64Microseconds(std::min(fill_until - absl::Now(), absl::Milliseconds(20))))));
    }
    DropDead(absl::Now());
    if (queue_.empty() || queue_.front()->model != model) continue;  // the head expired: form again
    // Take the oldest group and every later one of the same version that fits.
    std::vector<std::unique_ptr<Group>> batch;
    int64_t windows = 0;
    for (auto it = queue_.begin(); it != queue_.end();) {
      const int64_t n = (*it)->windows.size(0);
      if ((*it)->model == model && windows + n <= max_batch) {
        windows += n;
        batch.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    queued_ -= windows;
    if (observer_) observer_->QueueDepth(queued_);
    lock.unlock();
    std::vector<torch::Tensor> parts;
    for (const auto& g : batch) parts.push_back(g->windows);
    if (observer_) observer_->Busy(true);
    if (const std::optional<int64_t> stall = FaultValue(Fault::kServeStallForwardMs)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(*stall));
    }
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status failure;
    torch::Tensor logits;
    try {
      logits = model->Forward(parts.size() == 1 ? parts[0] : torch::cat(parts)).to(torch::kCPU, torch::kFloat);
    } catch (const std::exception& e) {
      failure = absl::InternalError(absl::StrCat("model ", model->spec.name, ": forward pass failed: ", e.what()));
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t row = 0;
    for (auto& g : batch) {
      const int64_t n = g->windows.size(0);
      if (failure.ok()) {
        g->done.set_value(logits.slice(0, row, row + n).contiguous());
      } else {
        g->done.set_value(failure);
      }
      row += n;
    }
    if (observer_) {
      observer_->BatchRun(model->spec.name, windows, seconds);
      observer_->Busy(false);
    }
    lock.lock();
    const double per_window = seconds / std::max<int64_t>(1, windows);
    seconds_per_window_ = seconds_per_window_ == 0 ? per_window : 0.8 * seconds_per_window_ + 0.2 * per_window;
  }
  for (auto& g : queue_) g->done.set_value(absl::UnavailableError("the server is shutting down"));
  queue_.clear();
  queued_ = 0;
}

}  // namespace retina::trainer::serving
