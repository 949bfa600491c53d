// Device placement and mixed precision for a rank (the libtorch API
// differences of autocast live in torch_compat.h).
#pragma once

#include <torch/torch.h>

#include <string>

#include "absl/status/statusor.h"
#include "common/job_config.h"

namespace retina::trainer {

struct DevicePlan {
  torch::Device device = torch::kCPU;
  // Autocast the model in bfloat16 on `device` (CUDA, or a CPU with bf16
  // units); weights, optimizer state and losses stay fp32.
  bool bf16 = false;
  torch::Dtype dtype = torch::kFloat;  // of the weights, inputs and losses: kDouble for fp64
  std::string describe;                // "cpu bf16 autocast (avx512_bf16)", with why auto chose fp32
};

// The bf16 units of this CPU, from the kernel's view of its flags
// (/proc/cpuinfo on Linux): AVX512-BF16 (dot products of bf16 pairs) and
// AMX-BF16 (tile matrix multiply), the two oneDNN uses for bf16 matmul and
// convolution. Neither on other systems.
struct CpuBf16Units {
  bool avx512_bf16 = false;
  bool amx_bf16 = false;
  bool any() const { return avx512_bf16 || amx_bf16; }
  std::string describe() const;  // "avx512_bf16 amx_bf16", or "none"
};
CpuBf16Units DetectCpuBf16Units();
// The same from a cpuinfo text (its first "flags" line).
CpuBf16Units ParseCpuBf16Units(const std::string& cpuinfo);

// runtime.device (auto|cpu|cuda) and runtime.precision (auto|fp32|bf16|fp64):
// cuda = device LOCAL_RANK % device_count; fp64 = float64 weights, inputs and
// losses (verification runs); bf16 = autocast in bfloat16, on CUDA or on a
// CPU with bf16 units; auto = bf16 on CUDA and fp32 on CPU, whatever its
// units (ranks of one job may land on different CPUs, and a job's numbers
// must not depend on which), `describe` saying so.
// Enables cuDNN autotuning on CUDA. FAILED_PRECONDITION when CUDA is asked
// for and absent, or bf16 on a CPU without bf16 units (it would be emulated,
// several times slower than fp32).
absl::StatusOr<DevicePlan> PlanDevice(DeviceKind device, Precision precision, int local_rank);
// As above with the CPU's units given (tests).
absl::StatusOr<DevicePlan> PlanDevice(DeviceKind device, Precision precision, int local_rank, const CpuBf16Units& cpu);
// The same from the words (a command line's --device/--precision);
// INVALID_ARGUMENT naming the flag and the words for an unknown one.
absl::StatusOr<DevicePlan> PlanDevice(const std::string& device, const std::string& precision, int local_rank);

// The precision inference runs at for a job's runtime.precision: bf16 only
// when asked for by name (auto keeps evaluation scores in fp32 on every
// device), fp32 otherwise (fp64 is for verifying training).
Precision InferencePrecision(Precision training);

// bf16 autocast on one device type within its scope, restoring what was
// there before (no-op when disabled). Thread-local, like autocast itself.
class Autocast {
 public:
  Autocast(c10::DeviceType device, bool enabled);
  // bf16 autocast on the plan's device when plan.bf16.
  explicit Autocast(const DevicePlan& plan) : Autocast(plan.device.type(), plan.bf16) {}
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  c10::DeviceType device_;
  bool enabled_;
  bool previous_ = false;
  at::ScalarType previous_dtype_ = at::kBFloat16;
};

}  // namespace retina::trainer
