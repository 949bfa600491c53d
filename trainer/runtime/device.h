// Device placement and mixed precision for a rank, with the few libtorch API
// differences (1.13 vs 2.x autocast) guarded here and in torch_compat.h.
#pragma once

#include <torch/torch.h>

#include <string>

#include "absl/status/statusor.h"
#include "common/job_config.h"

namespace retina::trainer {

struct DevicePlan {
  torch::Device device = torch::kCPU;
  bool bf16 = false;  // autocast forward/backward in bfloat16 (fp32 master weights)
  torch::Dtype dtype = torch::kFloat;  // of the weights, inputs and losses: kDouble for fp64
  std::string describe;
};

// runtime.device (auto|cpu|cuda) and runtime.precision (auto|fp32|bf16|fp64):
// cuda = device LOCAL_RANK % device_count; auto precision = bf16 on CUDA;
// fp64 = float64 weights, inputs and losses (verification runs).
// Enables cuDNN autotuning on CUDA. FAILED_PRECONDITION when CUDA is asked
// for and absent, or bf16 on CPU.
absl::StatusOr<DevicePlan> PlanDevice(DeviceKind device, Precision precision, int local_rank);
// The same from the words (a command line's --device/--precision);
// INVALID_ARGUMENT naming the flag and the words for an unknown one.
absl::StatusOr<DevicePlan> PlanDevice(const std::string& device, const std::string& precision, int local_rank);

// bf16 autocast for CUDA ops within its scope (no-op when disabled).
class CudaAutocast {
 public:
  explicit CudaAutocast(bool enabled);
  ~CudaAutocast();
  CudaAutocast(const CudaAutocast&) = delete;
  CudaAutocast& operator=(const CudaAutocast&) = delete;

 private:
  bool enabled_;
  bool previous_ = false;
};

}  // namespace retina::trainer
