// The one place where differences between libtorch versions are guarded.
// The trainer builds against Debian 12's libtorch 1.13.1 (CPU), Debian 13's
// 2.6.0 (CPU) and CUDA libtorch 2.x distributions found through Torch_DIR;
// tests/trainer/torch_compat_test.cc checks each shim on the version it was
// built against. Call sites use these functions, never version #ifs.
//
// The differences met so far, and where each is handled:
//  - optimizer state keys: a std::string of the TensorImpl address in 1.x
//    (built with c10::guts::to_string, which 2.x removed), the TensorImpl*
//    itself in 2.x -> OptimizerStateKey.
//  - autocast: set_enabled/set_cpu_enabled/set_autocast_gpu_dtype/
//    set_autocast_cpu_dtype in 1.13, one (device type, ...) family from 2.4
//    -> AutocastEnabled, SetAutocast.
//  - c10d::TCPStoreOptions::useLibUV (2.2+, default true from 2.4) while
//    Debian's 2.6 is built without libuv -> WithoutLibUv / IsLibUvUnavailable.
#pragma once

#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#define RETINA_TORCH_VERSION_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||                 \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace retina::trainer {

// "1.13.0" etc., the version of the libtorch headers we compiled against.
inline std::string TorchVersionString() { return TORCH_VERSION; }

// The key of `p` in `opt.state()`: libtorch keys optimizer state by the
// parameter's TensorImpl, as the decimal-free string that operator<< of a
// pointer prints in 1.x and as the pointer itself in 2.x. The key type is
// read from the map, so a future change fails to compile here, not silently.
template <typename Optimizer>
auto OptimizerStateKey(Optimizer& opt, const torch::Tensor& p) {
  using Key = typename std::remove_reference_t<decltype(opt.state())>::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream s;  // what c10::guts::to_string did in 1.x
    s << p.unsafeGetTensorImpl();
    return s.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

// Whether autocast is on for `device` (kCPU or kCUDA) in this thread.
inline bool AutocastEnabled(c10::DeviceType device) {
#if RETINA_TORCH_VERSION_AT_LEAST(2, 4)
  return at::autocast::is_autocast_enabled(device);
#else
  return device == c10::DeviceType::CPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
#endif
}

// Turns autocast on or off for `device` (kCPU or kCUDA) in this thread, with
// `dtype` (kBFloat16 here) as its lower precision.
inline void SetAutocast(c10::DeviceType device, bool enabled, at::ScalarType dtype = at::kBFloat16) {
#if RETINA_TORCH_VERSION_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(device, enabled);
  at::autocast::set_autocast_dtype(device, dtype);
#else
  if (device == c10::DeviceType::CPU) {
    at::autocast::set_cpu_enabled(enabled);
    at::autocast::set_autocast_cpu_dtype(dtype);
  } else {
    at::autocast::set_enabled(enabled);
    at::autocast::set_autocast_gpu_dtype(dtype);
  }
#endif
}

// The lower-precision dtype autocast uses on `device` in this thread.
inline at::ScalarType AutocastDtype(c10::DeviceType device) {
#if RETINA_TORCH_VERSION_AT_LEAST(2, 4)
  return at::autocast::get_autocast_dtype(device);
#else
  return device == c10::DeviceType::CPU ? at::autocast::get_autocast_cpu_dtype()
                                        : at::autocast::get_autocast_gpu_dtype();
#endif
}

namespace compat_detail {
template <typename T, typename = void>
struct HasUseLibUv : std::false_type {};
template <typename T>
struct HasUseLibUv<T, std::void_t<decltype(std::declval<T&>().useLibUV)>> : std::true_type {};
}  // namespace compat_detail

// Whether these TCPStore options have the libuv switch (libtorch 2.2+).
template <typename StoreOptions>
constexpr bool HasLibUvSwitch() {
  return compat_detail::HasUseLibUv<StoreOptions>::value;
}

// `o` with the libuv backend off (the classic TCPStore server, which every
// libtorch has; the wire protocol is the same, so either kind of client
// talks to either server). A no-op before 2.2.
template <typename StoreOptions>
StoreOptions WithoutLibUv(StoreOptions o) {
  if constexpr (HasLibUvSwitch<StoreOptions>()) o.useLibUV = false;
  return o;
}

// Whether `message` is TCPStore refusing libuv because this libtorch was
// built without it (Debian's 2.6: "use_libuv was requested but PyTorch was
// build without libuv support").
inline bool IsLibUvUnavailable(const std::string& message) {
  return message.find("libuv") != std::string::npos;
}

}  // namespace retina::trainer
