#include "trainer/model/batch_norm.h"

#include "trainer/model/mixed_precision.h"

namespace retina::trainer {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// y = (x - mean_g) / sqrt(var_g + eps) * w + b with the statistics of this
// rank's group (batch_norm.h).
struct SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& bias, torch::Tensor running_mean, torch::Tensor running_var,
                               double momentum, double eps, int64_t sync_address) {
    auto* sync = reinterpret_cast<BatchNormSync*>(sync_address);
    const int64_t c = x.size(1);
    // Statistics in float32 at least (bf16/fp16 inputs), float64 for float64.
    const torch::Tensor xf = x.to(x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat);
    torch::Tensor stats = torch::zeros({sync->groups, 2 * c + 1}, xf.options());
    stats[sync->group].copy_(torch::cat({xf.sum({0, 2, 3}), (xf * xf).sum({0, 2, 3}),
                                         torch::full({1}, static_cast<double>(x.numel() / c), xf.options())}));
    sync->all_reduce(stats);
    // Mean and variance of group g's members together.
    auto moments = [&](int g) {
      const torch::Tensor row = stats[g];
      const double count = row[2 * c].item<double>();
      const torch::Tensor mean = row.slice(0, 0, c) / count;
      return std::make_tuple(count, mean, (row.slice(0, c, 2 * c) / count - mean * mean).clamp_min(0));
    };
    {
      torch::NoGradGuard no_grad;
      for (int g = 0; g < sync->groups; ++g) {
        const auto [n, m, v] = moments(g);
        running_mean.mul_(1 - momentum).add_(m * momentum);
        running_var.mul_(1 - momentum).add_(v * (n / std::max(1.0, n - 1)) * momentum);
      }
    }
    const auto [count, mean, var] = moments(sync->group);
    const torch::Tensor invstd = torch::rsqrt(var + eps);
    const torch::Tensor xhat = (xf - mean.view({1, c, 1, 1})) * invstd.view({1, c, 1, 1});
    ctx->save_for_backward({xhat, invstd, weight});
    ctx->saved_data["count"] = count;
    ctx->saved_data["sync"] = sync_address;
    return (xhat * weight.view({1, c, 1, 1}) + bias.view({1, c, 1, 1})).to(x.scalar_type());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& xhat = saved[0];
    const torch::Tensor& invstd = saved[1];
    const torch::Tensor& weight = saved[2];
    const double count = ctx->saved_data["count"].toDouble();
    auto* sync = reinterpret_cast<BatchNormSync*>(ctx->saved_data["sync"].toInt());
    const torch::Tensor dy = grads[0].to(xhat.scalar_type());
    const int64_t c = dy.size(1);
    const torch::Tensor sum_dy = dy.sum({0, 2, 3}), sum_dy_xhat = (dy * xhat).sum({0, 2, 3});
    torch::Tensor groups = torch::zeros({sync->groups, 2 * c}, dy.options());
    groups[sync->group].copy_(torch::cat({sum_dy, sum_dy_xhat}));
    sync->all_reduce(groups);
    const torch::Tensor global = groups[sync->group];
    const torch::Tensor g_dy = global.slice(0, 0, c).view({1, c, 1, 1});
    const torch::Tensor g_dy_xhat = global.slice(0, c, 2 * c).view({1, c, 1, 1});
    const torch::Tensor dx = (weight * invstd).view({1, c, 1, 1}) / count * (count * dy - g_dy - xhat * g_dy_xhat);
    // Parameter gradients stay local: the gradient reducer averages them.
    return {dx.to(grads[0].scalar_type()), sum_dy_xhat, sum_dy, torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

BatchNormImpl::BatchNormImpl(int64_t channels) {
  // Registration order = torch.nn.BatchNorm2d's state-dict order.
  weight = register_parameter("weight", torch::ones({channels}));
  bias = register_parameter("bias", torch::zeros({channels}));
  running_mean = register_buffer("running_mean", torch::zeros({channels}));
  running_var = register_buffer("running_var", torch::ones({channels}));
  num_batches_tracked = register_buffer("num_batches_tracked", torch::zeros({}, torch::kLong));
}

torch::Tensor BatchNormImpl::forward(const torch::Tensor& input) {
  const torch::Tensor x = ToParamDtype(input, weight);  // statistics in fp32 under autocast
  if (is_training()) {
    torch::NoGradGuard no_grad;
    num_batches_tracked.add_(sync_ ? sync_->groups : 1);  // one per group's batch (updates of the running stats)
  }
  if (!sync_ || !is_training()) {
    return torch::batch_norm(x, weight, bias, running_mean, running_var, is_training(), kMomentum, kEps,
                             /*cudnn_enabled=*/true);
  }
  return SyncBatchNormFunction::apply(x, weight, bias, running_mean, running_var, kMomentum, kEps,
                                      reinterpret_cast<int64_t>(sync_.get()));
}

void SetBatchNormSync(torch::nn::Module& module, const std::shared_ptr<BatchNormSync>& sync) {
  for (const auto& m : module.modules()) {
    if (auto* bn = dynamic_cast<BatchNormImpl*>(m.get())) bn->SetSync(sync);
  }
}

void SetBatchNormAllReduce(torch::nn::Module& module, const std::shared_ptr<SumAllReduce>& all_reduce) {
  SetBatchNormSync(module, all_reduce ? std::make_shared<BatchNormSync>(BatchNormSync{*all_reduce, 1, 0}) : nullptr);
}

}  // namespace retina::trainer
