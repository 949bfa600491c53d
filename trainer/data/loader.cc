#include "trainer/data/loader.h"

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace retina::trainer {

absl::StatusOr<std::unique_ptr<Loader>> Loader::Create(const ShardedDataset* dataset,
                                                       std::vector<std::vector<int64_t>> batches,
                                                       const LoaderOptions& options) {
  if (options.threads < 1 || options.prefetch < 1) {
    return absl::InvalidArgumentError("loader: threads and prefetch must be >= 1");
  }
  if (options.with_masks && !dataset->labelled()) {
    return absl::FailedPreconditionError(absl::StrCat("dataset '", dataset->manifest().name, "' has no masks"));
  }
  for (const auto& b : batches) {
    for (int64_t i : b) {
      if (i < 0 || i >= dataset->size()) {
        return absl::OutOfRangeError(absl::StrCat("loader: sample ", i, " outside dataset of ", dataset->size()));
      }
    }
  }
  std::unique_ptr<Loader> loader(new Loader(dataset, std::move(batches), options));
  for (int t = 0; t < options.threads; ++t) loader->workers_.emplace_back([l = loader.get()] { l->Work(); });
  return loader;
}

Loader::Loader(const ShardedDataset* dataset, std::vector<std::vector<int64_t>> batches, LoaderOptions options)
    : dataset_(dataset), batches_(std::move(batches)), options_(options) {
  options_.pin_memory = options_.pin_memory && torch::cuda::is_available();
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  space_cv_.notify_all();
  ready_cv_.notify_all();
  for (auto& w : workers_) w.join();
}

RawBatch Loader::Assemble(int64_t k) const {
  const std::vector<int64_t>& samples = batches_[k];
  const int64_t b = static_cast<int64_t>(samples.size()), h = dataset_->height(), w = dataset_->width();
  const auto opts = torch::TensorOptions().dtype(torch::kByte).pinned_memory(options_.pin_memory);
  RawBatch out;
  out.index = k;
  out.samples = samples;
  out.images = torch::empty({b, h, w}, opts);
  for (int64_t i = 0; options_.check_samples && i < b && out.status.ok(); ++i) {
    out.status = dataset_->CheckSample(samples[i]);
  }
  uint8_t* dst = out.images.data_ptr<uint8_t>();
  for (int64_t i = 0; i < b; ++i) std::memcpy(dst + i * h * w, dataset_->image(samples[i]), h * w);
  if (options_.with_masks) {
    out.masks = torch::empty({b, h, w}, opts);
    uint8_t* m = out.masks.data_ptr<uint8_t>();
    for (int64_t i = 0; i < b; ++i) std::memcpy(m + i * h * w, dataset_->mask(samples[i]), h * w);
  }
  return out;
}

void Loader::Work() {
  const int64_t total = static_cast<int64_t>(batches_.size());
  for (;;) {
    int64_t k;
    {
      std::unique_lock<std::mutex> lock(mu_);
      space_cv_.wait(lock, [&] { return stop_ || next_to_make_ >= total || next_to_make_ < next_to_give_ + options_.prefetch; });
      if (stop_ || next_to_make_ >= total) return;
      k = next_to_make_++;
    }
    RawBatch batch = Assemble(k);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_.emplace(k, std::move(batch));
    }
    ready_cv_.notify_all();
  }
}

std::optional<RawBatch> Loader::Next() {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  if (next_to_give_ >= static_cast<int64_t>(batches_.size())) return std::nullopt;
  ready_cv_.wait(lock, [&] { return stop_ || ready_.count(next_to_give_) > 0; });
  if (stop_) return std::nullopt;
  auto node = ready_.extract(next_to_give_);
  ++next_to_give_;
  lock.unlock();
  space_cv_.notify_all();
  wait_last_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  wait_total_ += wait_last_;
  return std::move(node.mapped());
}

}  // namespace retina::trainer
