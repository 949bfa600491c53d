// The distributed sampler (ARCHITECTURE.md "Data path").
//
// Epoch e visits a permutation P_e of all N samples drawn from (seed, e)
// with a portable generator (same order on every platform and build). Its
// state is (epoch, offset): `offset` samples of P_e have been consumed,
// counted over all ranks. The rest of the epoch, R = P_e[offset:], is padded
// to a multiple of the world size W by repeating its first entries, and rank
// r takes R[r], R[r + W], R[r + 2W], ...
//
// Ranks consume in lock step, so after each rank took c samples the consumed
// set is exactly P_e[0 : c W]: the state does not depend on W. A run resumed
// from (epoch, offset), with the same or a different world size, therefore
// sees exactly the samples it had not seen (plus at most W-1 repeats of
// padding, as torch's DistributedSampler pads).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace retina::trainer {

struct SamplerState {
  int64_t epoch = 0;
  int64_t offset = 0;  // samples of the epoch's permutation consumed, all ranks together
};

// The permutation of [0, n) for (seed, epoch): Fisher-Yates driven by
// splitmix64, independent of the standard library's distributions.
std::vector<int64_t> EpochPermutation(int64_t n, uint64_t seed, int64_t epoch);

class DistributedSampler {
 public:
  // INVALID_ARGUMENT unless n >= 1, world >= 1, 0 <= rank < world.
  static absl::StatusOr<DistributedSampler> Create(int64_t n, uint64_t seed, int world, int rank);

  // Positions the sampler; `offset` must be in [0, n].
  absl::Status Restore(const SamplerState& state);
  const SamplerState& state() const { return state_; }

  // This rank's sample indices for the rest of the current epoch, in order.
  const std::vector<int64_t>& indices() const { return indices_; }
  // Samples per rank left in the epoch (all ranks have the same count).
  int64_t per_rank() const { return static_cast<int64_t>(indices_.size()) - cursor_; }
  // The next `count` indices of this rank (fewer at the epoch's end). Every
  // rank calls it with the same count per step, which advances the shared
  // offset by count * world (capped at n).
  std::vector<int64_t> Next(int64_t count);
  bool EpochDone() const { return cursor_ >= static_cast<int64_t>(indices_.size()); }
  // Starts the next epoch (offset 0).
  void NextEpoch();

 private:
  DistributedSampler(int64_t n, uint64_t seed, int world, int rank) : n_(n), seed_(seed), world_(world), rank_(rank) {}
  void Build();

  int64_t n_;
  uint64_t seed_;
  int world_, rank_;
  SamplerState state_;
  SamplerState built_from_;
  std::vector<int64_t> indices_;
  int64_t cursor_ = 0;
};

// Elastic data parallelism (docs/training.md, docs/service.md "Elastic jobs"). A job whose
// full world size is W may run on w ranks, w dividing W, with
// a = W / w micro-batches per rank and step (gradient accumulation), b
// samples each (b = global batch / W, whatever w is). Each rank takes
// Next(b * a) per step; its micro-batch m is the full world's rank
// v = VirtualRank(r, w, m) batch, exactly and in the same order: with
// L = this rank's Next(b * a), L[k] = R[r + k w], micro-batch m takes
// L[m + j a] = R[(m w + r) + j W], j = 0..b-1, which is what rank v of the
// W-rank run takes (R[v + j W]). So every step sees the same samples, split
// the same way, whatever w is; augmentation and dropout seeded by
// (seed, v, step) then draw the same values too.
inline int VirtualRank(int rank, int world, int micro) { return micro * world + rank; }
// `step_samples` (this rank's Next(b * a)) reordered so that micro-batch m is
// positions [m b, (m + 1) b). `accumulation` must divide its size.
std::vector<int64_t> MicroBatchOrder(const std::vector<int64_t>& step_samples, int64_t accumulation);

// "epoch:offset" and back, for state.json.
std::string SamplerStateToString(const SamplerState& s);

}  // namespace retina::trainer
