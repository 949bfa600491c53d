// The learning-rate schedule of RETINA (METHOD.md sections 2-3).
#pragma once

#include <cstdint>

namespace retina::trainer {

// lr = base (1 - k/K)^power for iteration k of K (0 at and after K).
double PolyLearningRate(double base, int64_t k, int64_t horizon, double power);

}  // namespace retina::trainer
