#include "trainer/engine/schedule.h"

#include <cmath>

namespace retina::trainer {

double PolyLearningRate(double base, int64_t k, int64_t horizon, double power) {
  if (horizon <= 0 || k >= horizon) return 0.0;
  return base * std::pow(1.0 - static_cast<double>(k) / static_cast<double>(horizon), power);
}

}  // namespace retina::trainer
