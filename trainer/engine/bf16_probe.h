// Whether this libtorch trains correctly under CPU bf16 autocast.
#pragma once

#include "absl/status/status.h"

namespace retina::trainer {

// Three SGD steps of the tiny TransUNet (64 px, batch 2, fixed seed) under
// CPU bf16 autocast; OK when every loss and gradient is finite. Run once per
// process (the answer is cached), ~1 s. FAILED_PRECONDITION naming
// runtime.precision and the libtorch version otherwise, so a bf16 job is
// refused instead of training on NaNs. Seen once: Debian 13's libtorch 2.6
// (oneDNN 3.7.2) on one AMD EPYC VM gave NaN gradients from the second step
// on, as its Python PyTorch did for the reference model; the same packages
// on another EPYC (family 25, avx512_bf16) train within 0.2% of fp32, so
// the answer is asked of the machine, not of the version.
absl::Status ProbeCpuBf16Training();

}  // namespace retina::trainer
