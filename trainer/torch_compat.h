// The one place where differences between libtorch versions are guarded.
// The trainer builds against Debian's libtorch 1.13.1 (CPU) and against
// CUDA libtorch 2.x distributions found through Torch_DIR.
#pragma once

#include <torch/version.h>

#include <string>

#define RETINA_TORCH_VERSION_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||                 \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace retina::trainer {

// "1.13.0" etc., the version of the libtorch headers we compiled against.
inline std::string TorchVersionString() { return TORCH_VERSION; }

}  // namespace retina::trainer
