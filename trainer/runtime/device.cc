#include "trainer/runtime/device.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "trainer/torch_compat.h"

namespace retina::trainer {

std::string CpuBf16Units::describe() const {
  if (!any()) return "none";
  if (avx512_bf16 && amx_bf16) return "avx512_bf16 amx_bf16";
  return avx512_bf16 ? "avx512_bf16" : "amx_bf16";
}

CpuBf16Units ParseCpuBf16Units(const std::string& cpuinfo) {
  CpuBf16Units u;
  std::istringstream in(cpuinfo);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("flags", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    for (absl::string_view flag : absl::StrSplit(line.substr(colon + 1), ' ', absl::SkipEmpty())) {
      u.avx512_bf16 |= flag == "avx512_bf16";
      u.amx_bf16 |= flag == "amx_bf16";
    }
    break;  // every core of one machine reports the same flags
  }
  return u;
}

CpuBf16Units DetectCpuBf16Units() {
  std::ifstream in("/proc/cpuinfo");
  if (!in) return {};
  std::ostringstream text;
  text << in.rdbuf();
  return ParseCpuBf16Units(text.str());
}

absl::StatusOr<DevicePlan> PlanDevice(DeviceKind device, Precision precision, int local_rank,
                                      const CpuBf16Units& cpu) {
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
  if (plan.bf16 && !cuda && !cpu.any()) {
    return absl::FailedPreconditionError(
        "runtime.precision: bf16 on CPU needs AVX512-BF16 or AMX-BF16 units and this CPU has neither (bf16 would "
        "be emulated, slower than fp32); use fp32 or auto here");
  }
  if (precision == Precision::kFp64) plan.dtype = torch::kDouble;
  plan.describe = absl::StrCat(plan.device.str(), plan.bf16 ? " bf16 autocast" : precision == Precision::kFp64 ? " fp64" : " fp32");
  if (plan.bf16 && !cuda) absl::StrAppend(&plan.describe, " (", cpu.describe(), ")");
  if (precision == Precision::kAuto && !cuda) {
    absl::StrAppend(&plan.describe, cpu.any() ? absl::StrCat(" (auto keeps fp32 on CPU; this CPU has ", cpu.describe(),
                                                             ": runtime.precision: bf16 uses them)")
                                              : " (auto keeps fp32 on CPU; this CPU has no bf16 units)");
  }
  return plan;
}

absl::StatusOr<DevicePlan> PlanDevice(DeviceKind device, Precision precision, int local_rank) {
  static const CpuBf16Units cpu = DetectCpuBf16Units();
  return PlanDevice(device, precision, local_rank, cpu);
}

absl::StatusOr<DevicePlan> PlanDevice(const std::string& device, const std::string& precision, int local_rank) {
  const std::optional<DeviceKind> d = EnumFromName<DeviceKind>(device);
  if (!d) return absl::InvalidArgumentError(absl::StrCat("--device: auto, cpu or cuda, got '", device, "'"));
  const std::optional<Precision> p = EnumFromName<Precision>(precision);
  if (!p) return absl::InvalidArgumentError(absl::StrCat("--precision: auto, fp32, bf16 or fp64, got '", precision, "'"));
  return PlanDevice(*d, *p, local_rank);
}

Precision InferencePrecision(Precision training) {
  return training == Precision::kBf16 ? Precision::kBf16 : Precision::kFp32;
}

Autocast::Autocast(c10::DeviceType device, bool enabled) : device_(device), enabled_(enabled) {
  if (!enabled_) return;
  previous_ = AutocastEnabled(device_);
  previous_dtype_ = AutocastDtype(device_);
  SetAutocast(device_, true, at::kBFloat16);
}

Autocast::~Autocast() {
  if (!enabled_) return;
  SetAutocast(device_, previous_, previous_dtype_);
  if (!previous_) at::autocast::clear_cache();
}

}  // namespace retina::trainer
