#include "trainer/data/sampler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace retina::trainer {
namespace {

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [0, bound) without modulo bias (Lemire's method).
uint64_t Below(uint64_t& state, uint64_t bound) {
  for (;;) {
    const unsigned __int128 m = static_cast<unsigned __int128>(SplitMix64(state)) * bound;
    const uint64_t low = static_cast<uint64_t>(m);
    if (low >= bound || low >= (-bound) % bound) return static_cast<uint64_t>(m >> 64);
  }
}

}  // namespace

std::vector<int64_t> EpochPermutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  uint64_t state = seed * 0x2545f4914f6cdd1dull ^ (static_cast<uint64_t>(epoch) + 0x632be59bd9b4e019ull);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[Below(state, static_cast<uint64_t>(i) + 1)]);
  return p;
}

absl::StatusOr<DistributedSampler> DistributedSampler::Create(int64_t n, uint64_t seed, int world, int rank) {
  if (n < 1) return absl::InvalidArgumentError(absl::StrCat("sampler: dataset is empty (", n, " samples)"));
  if (world < 1 || rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(absl::StrCat("sampler: rank ", rank, " not in a world of ", world));
  }
  DistributedSampler s(n, seed, world, rank);
  s.Build();
  return s;
}

absl::Status DistributedSampler::Restore(const SamplerState& state) {
  if (state.epoch < 0 || state.offset < 0 || state.offset > n_) {
    return absl::InvalidArgumentError(absl::StrCat("sampler state ", SamplerStateToString(state),
                                                   " is outside the dataset of ", n_, " samples"));
  }
  state_ = state;
  Build();
  return absl::OkStatus();
}

void DistributedSampler::Build() {
  const std::vector<int64_t> perm = EpochPermutation(n_, seed_, state_.epoch);
  std::vector<int64_t> rest(perm.begin() + state_.offset, perm.end());
  const int64_t remaining = static_cast<int64_t>(rest.size());
  const int64_t padded = (remaining + world_ - 1) / world_ * world_;
  for (int64_t i = remaining; i < padded; ++i) rest.push_back(rest[(i - remaining) % remaining]);
  indices_.clear();
  for (int64_t i = rank_; i < padded; i += world_) indices_.push_back(rest[i]);
  cursor_ = 0;
  built_from_ = state_;
}

std::vector<int64_t> DistributedSampler::Next(int64_t count) {
  const int64_t take = std::min<int64_t>(count, per_rank());
  std::vector<int64_t> out(indices_.begin() + cursor_, indices_.begin() + cursor_ + take);
  cursor_ += take;
  state_.offset = std::min<int64_t>(n_, built_from_.offset + cursor_ * world_);
  return out;
}

void DistributedSampler::NextEpoch() {
  state_ = {state_.epoch + 1, 0};
  Build();
}

std::vector<int64_t> MicroBatchOrder(const std::vector<int64_t>& step_samples, int64_t accumulation) {
  const int64_t b = static_cast<int64_t>(step_samples.size()) / accumulation;
  std::vector<int64_t> out;
  out.reserve(step_samples.size());
  for (int64_t m = 0; m < accumulation; ++m) {
    for (int64_t j = 0; j < b; ++j) out.push_back(step_samples[m + j * accumulation]);
  }
  return out;
}

std::string SamplerStateToString(const SamplerState& s) { return absl::StrCat(s.epoch, ":", s.offset); }

}  // namespace retina::trainer
