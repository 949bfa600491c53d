#include "trainer/engine/bf16_probe.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "trainer/model/model_config.h"
#include "trainer/model/transunet.h"
#include "trainer/runtime/device.h"
#include "trainer/torch_compat.h"

namespace retina::trainer {
namespace {

absl::Status RunProbe() {
  absl::StatusOr<TransUNetConfig> c = NamedModelConfig("tiny", 64, 1, ModelHead::kReconstruction);
  if (!c.ok()) return c.status();
  c->dropout_rate = 0;
  torch::manual_seed(11);
  VisionTransformer model(*c);
  model->train();
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.003).momentum(0.9));
  const torch::Tensor x = torch::randn({2, 1, 64, 64});
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    torch::Tensor out;
    {
      Autocast autocast(torch::kCPU, true);
      out = model(x);
    }
    torch::Tensor loss = torch::mse_loss(out.to(torch::kFloat), x);
    loss.backward();
    bool finite = std::isfinite(loss.item<double>());
    for (const torch::Tensor& p : model->parameters()) {
      if (p.grad().defined()) finite = finite && torch::isfinite(p.grad()).all().item<bool>();
    }
    if (!finite) {
      return absl::FailedPreconditionError(absl::StrCat(
          "runtime.precision: bf16: this libtorch (", TorchVersionString(),
          ") computes non-finite gradients under CPU bf16 autocast (a probe of 3 steps of the tiny TransUNet went "
          "NaN at step ", step, "); use fp32 on this machine"));
    }
    opt.step();
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ProbeCpuBf16Training() {
  static const absl::Status result = [] {
    try {
      at::Generator gen = at::detail::getDefaultCPUGenerator();
      const torch::Tensor saved = gen.get_state();
      absl::Status s = RunProbe();
      gen.set_state(saved);  // the callers' random stream is untouched
      return s;
    } catch (const c10::Error& e) {
      return absl::FailedPreconditionError(absl::StrCat("runtime.precision: bf16: the CPU bf16 probe failed: ",
                                                        e.what_without_backtrace()));
    }
  }();
  return result;
}

}  // namespace retina::trainer
