// Whether this libtorch trains correctly under CPU bf16 autocast.
#pragma once

#include "absl/status/status.h"

namespace retina::trainer {

// Three SGD steps of the tiny TransUNet (64 px, batch 2, fixed seed) under
// CPU bf16 autocast; OK when every loss and gradient is finite. Run once per
// process (the answer is cached), ~1 s. FAILED_PRECONDITION naming
// runtime.precision and the libtorch version otherwise: Debian 13's
// libtorch 2.6 (built on the system's oneDNN 3.6) gives NaN gradients from
// the second step on, as its Python PyTorch does for the reference model,
// so a bf16 job there is refused instead of training on NaNs.
absl::Status ProbeCpuBf16Training();

}  // namespace retina::trainer
