#include "trainer/model/dropout.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <mutex>

namespace retina::trainer {
namespace {

// murmur3's 32-bit finaliser: a bijection with full avalanche.
inline uint32_t Fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

uint64_t NextSeed() {
  auto* gen = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

}  // namespace

torch::Tensor HashDropoutMask(const torch::Tensor& like, double p, uint64_t seed) {
  torch::Tensor mask = torch::empty(like.sizes(), like.options().dtype(torch::kFloat).memory_format(
                                                      torch::MemoryFormat::Contiguous));
  float* out = mask.data_ptr<float>();
  const auto keep_below = static_cast<uint64_t>((1.0 - p) * 4294967296.0);  // keep iff hash < this
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const auto seed_a = static_cast<uint32_t>(seed), seed_b = static_cast<uint32_t>(seed >> 32);
  at::parallel_for(0, mask.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t h = Fmix32(Fmix32(static_cast<uint32_t>(i) ^ seed_a) +
                                (seed_b ^ static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32)));
      out[i] = static_cast<uint64_t>(h) < keep_below ? scale : 0.f;
    }
  });
  return like.scalar_type() == torch::kFloat ? mask : mask.to(like.scalar_type());
}

torch::Tensor DropoutImpl::forward(const torch::Tensor& x) {
  if (!is_training() || p_ <= 0.0) return x;
  if (p_ >= 1.0) return torch::zeros_like(x);
  if (!x.device().is_cpu()) return torch::dropout(x, p_, /*train=*/true);
  return x * HashDropoutMask(x, p_, NextSeed());
}

}  // namespace retina::trainer
