#include "trainer/dist/reducer.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace retina::trainer {

absl::Status BroadcastModuleState(torch::nn::Module& module, Communicator& comm) {
  if (comm.size() == 1) return absl::OkStatus();
  torch::NoGradGuard no_grad;
  for (auto& p : module.named_parameters()) {
    torch::Tensor t = p.value().detach().contiguous();
    RETURN_IF_ERROR(comm.Broadcast(t, 0, "parameter " + p.key()));
    if (!t.is_same(p.value())) p.value().copy_(t);
  }
  for (auto& b : module.named_buffers()) {
    torch::Tensor t = b.value().contiguous();
    RETURN_IF_ERROR(comm.Broadcast(t, 0, "buffer " + b.key()));
    if (!t.is_same(b.value())) b.value().copy_(t);
  }
  return absl::OkStatus();
}

GradientReducer::GradientReducer(torch::nn::Module& module, Communicator* comm, int64_t bucket_bytes) : comm_(comm) {
  std::vector<torch::Tensor> params;
  for (const torch::Tensor& p : module.parameters()) {
    if (p.defined() && p.requires_grad()) params.push_back(p);
  }
  // Reverse registration order: backward produces the last layers first.
  int64_t filled = 0;  // elements in the current bucket
  for (auto it = params.rbegin(); it != params.rend(); ++it) {
    if (buckets_.empty() || filled * it->element_size() >= bucket_bytes) {
      buckets_.emplace_back();
      filled = 0;
    }
    Slot s;
    s.param = *it;
    s.bucket = static_cast<int>(buckets_.size()) - 1;
    s.offset = filled;
    filled += it->numel();
    buckets_.back().size++;
    slots_.push_back(s);
  }
  std::vector<int64_t> numel(buckets_.size(), 0);
  for (const Slot& s : slots_) numel[s.bucket] = std::max(numel[s.bucket], s.offset + s.param.numel());
  for (size_t b = 0; b < buckets_.size(); ++b) buckets_[b].flat = torch::zeros({numel[b]}, slots_[0].param.options());
  if (comm_->size() == 1) return;  // nothing to reduce
  for (size_t i = 0; i < slots_.size(); ++i) {
    slots_[i].param.register_hook([this, i](const torch::Tensor& grad) {
      OnGradient(static_cast<int>(i), grad);
      return grad;
    });
  }
}

GradientReducer::~GradientReducer() {
  // Hooks hold `this`; the reducer must outlive backward passes only.
  for (Bucket& b : buckets_) {
    if (b.op) (void)b.op->Wait();
  }
}

void GradientReducer::PrepareForBackward(bool accumulated) {
  accumulated_ = accumulated;
  for (Slot& s : slots_) s.ready = false;
  for (Bucket& b : buckets_) {
    b.pending = b.size;
    b.op.reset();
    b.launch_status = absl::OkStatus();
  }
  next_launch_ = 0;
  active_ = true;
  exposed_seconds_ = 0;
}

void GradientReducer::OnGradient(int i, const torch::Tensor& grad) {
  if (!active_) return;
  Slot& s = slots_[i];
  if (s.ready) return;  // a second gradient for the same parameter would need accumulation; not in our graphs
  Bucket& b = buckets_[s.bucket];
  torch::Tensor slot = b.flat.narrow(0, s.offset, s.param.numel()).view(s.param.sizes());
  slot.copy_(grad);
  if (accumulated_ && s.param.grad().defined()) slot.add_(s.param.grad());
  s.ready = true;
  if (--b.pending == 0) LaunchReadyBuckets();
}

void GradientReducer::LaunchReadyBuckets() {
  while (next_launch_ < static_cast<int>(buckets_.size()) && buckets_[next_launch_].pending == 0) {
    Launch(next_launch_++);
  }
}

void GradientReducer::Launch(int b) {
  absl::StatusOr<std::unique_ptr<PendingCollective>> op =
      comm_->AllReduceSumAsync(buckets_[b].flat, absl::StrCat("gradient bucket ", b));
  if (op.ok()) buckets_[b].op = std::move(*op);
  else buckets_[b].launch_status = op.status();
}

absl::Status GradientReducer::FinishBackward() {
  if (comm_->size() == 1) {
    active_ = false;
    return absl::OkStatus();
  }
  const auto t0 = std::chrono::steady_clock::now();
  // Parameters without a gradient this step contribute zeros.
  for (Slot& s : slots_) {
    if (!s.ready) {
      buckets_[s.bucket].flat.narrow(0, s.offset, s.param.numel()).zero_();
      --buckets_[s.bucket].pending;
    }
  }
  LaunchReadyBuckets();
  absl::Status status;
  for (Bucket& b : buckets_) {
    if (!b.launch_status.ok() && status.ok()) status = b.launch_status;
    if (b.op) {
      absl::Status s = b.op->Wait();
      if (!s.ok() && status.ok()) status = s;
      b.op.reset();
    }
  }
  exposed_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  active_ = false;
  RETURN_IF_ERROR(status);
  torch::NoGradGuard no_grad;
  const double inv = 1.0 / comm_->size();
  for (Slot& s : slots_) {
    if (!s.ready) continue;  // unused this step: .grad stays undefined
    const torch::Tensor avg = buckets_[s.bucket].flat.narrow(0, s.offset, s.param.numel()).view(s.param.sizes()) * inv;
    torch::Tensor& g = s.param.mutable_grad();
    if (g.defined()) g.copy_(avg);
    else g = avg.clone();
  }
  return absl::OkStatus();
}

}  // namespace retina::trainer
