#include "trainer/runtime/device.h"

#include <ATen/autocast_mode.h>

#include "absl/strings/str_cat.h"
#include "trainer/torch_compat.h"

namespace retina::trainer {

absl::StatusOr<DevicePlan> PlanDevice(DeviceKind device, Precision precision, int local_rank) {
  DevicePlan plan;
  const bool cuda_available = torch::cuda::is_available();
  const bool cuda = device == DeviceKind::kCuda || (device == DeviceKind::kAuto && cuda_available);
  if (cuda && !cuda_available) {
    return absl::FailedPreconditionError("runtime.device: cuda requested but no CUDA device is available "
                                         "(this libtorch: " + TorchVersionString() + ")");
  }
  if (cuda) {
    const int count = static_cast<int>(torch::cuda::device_count());
    plan.device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank % count));
    at::globalContext().setBenchmarkCuDNN(true);
  }
  plan.bf16 = precision == Precision::kBf16 || (precision == Precision::kAuto && cuda);
  if (plan.bf16 && !cuda) {
    return absl::FailedPreconditionError("runtime.precision: bf16 autocast is for CUDA; use fp32 (or auto) on CPU");
  }
  if (precision == Precision::kFp64) plan.dtype = torch::kDouble;
  plan.describe = absl::StrCat(plan.device.str(), plan.bf16 ? " bf16 autocast" : precision == Precision::kFp64 ? " fp64" : " fp32");
  return plan;
}

absl::StatusOr<DevicePlan> PlanDevice(const std::string& device, const std::string& precision, int local_rank) {
  const std::optional<DeviceKind> d = EnumFromName<DeviceKind>(device);
  if (!d) return absl::InvalidArgumentError(absl::StrCat("--device: auto, cpu or cuda, got '", device, "'"));
  const std::optional<Precision> p = EnumFromName<Precision>(precision);
  if (!p) return absl::InvalidArgumentError(absl::StrCat("--precision: auto, fp32, bf16 or fp64, got '", precision, "'"));
  return PlanDevice(*d, *p, local_rank);
}

CudaAutocast::CudaAutocast(bool enabled) : enabled_(enabled) {
  if (!enabled_) return;
#if RETINA_TORCH_VERSION_AT_LEAST(2, 4)
  previous_ = at::autocast::is_autocast_enabled(at::kCUDA);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
#else
  previous_ = at::autocast::is_enabled();
  at::autocast::set_enabled(true);
  at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
#endif
}

CudaAutocast::~CudaAutocast() {
  if (!enabled_) return;
#if RETINA_TORCH_VERSION_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(at::kCUDA, previous_);
#else
  at::autocast::set_enabled(previous_);
#endif
  at::autocast::clear_cache();
}

}  // namespace retina::trainer
