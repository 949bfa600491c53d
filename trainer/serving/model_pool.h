// The models a server keeps loaded (retina-serve; docs/serving.md).
//
// A model is a name, a weights spec (anything ResolveWeights resolves: a
// checkpoint directory pins that checkpoint; a LATEST, a checkpoints/ folder
// or a job directory follows the newest one) and an owner ("" = every user).
// Each load is one immutable LoadedModel version, shared by the requests
// that use it: a reload swaps in a new version while requests that hold the
// old one finish on it. Refresh() reloads a followed model when its
// checkpoints' LATEST names another checkpoint; one that fails its MANIFEST
// (CheckpointStore::Latest skips it) or does not load is refused, counted and
// logged once, and the version in service stays.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/prediction/predict.h"

namespace retina::trainer::serving {

struct ServedModelSpec {
  std::string name;     // [A-Za-z0-9._-]+, unique in a server
  std::string weights;  // ResolveWeights' spec (relative: from the store)
  std::string owner;    // the only user besides admins who may use it; "" = every user
  int max_batch = 8;    // windows per forward pass (dynamic batching, window_batcher.h)
  double max_delay_ms = 2;  // how long a batch waits to fill after its first window
};

// One version of a model: never changes after its load.
struct LoadedModel {
  ServedModelSpec spec;
  int64_t version = 1;
  SegmentationModel model;
  std::filesystem::path checkpoint;  // the weights file loaded
  bool bf16 = false;                 // autocast (ModelForward's)
  // The forward pass of a batch of windows [n, 1, win, win] -> logits
  // [n, C, win, win] on the CPU. Not thread-safe: the batcher calls it from one thread.
  torch::Tensor Forward(const torch::Tensor& windows) const;
};

struct ModelStatus {
  ServedModelSpec spec;
  std::filesystem::path checkpoint;
  int64_t version = 0, reloads = 0, refused = 0;
  std::string config;
  int classes = 0, window = 0;
};

// Where the server's models run: PlanDevice's choice for `device` (auto |
// cpu | cuda) and `precision` (fp32 | bf16), with its description.
struct ServingDevice {
  torch::Device device = torch::kCPU;
  bool bf16 = false;
  std::string describe;
};
absl::StatusOr<ServingDevice> PlanServingDevice(const std::string& device, const std::string& precision);
// libtorch's intra-op threads for the forward passes (0: every core).
void ConfigureServingThreads(int threads);

class ModelPool {
 public:
  // Relative weights are taken from `store`; models run on `device`.
  ModelPool(std::filesystem::path store, torch::Device device, bool bf16 = false);

  // Loads a model now. INVALID_ARGUMENT for a bad or repeated name; the
  // loader's error (naming the spec) for weights that do not load.
  absl::Status Add(const ServedModelSpec& spec);
  // The version in service; NOT_FOUND naming the model and the names served.
  absl::StatusOr<std::shared_ptr<const LoadedModel>> Get(const std::string& name) const;
  // Reloads every followed model whose LATEST moved; returns how many were
  // swapped. Called periodically (retina-serve --reload-s).
  int Refresh();
  std::vector<ModelStatus> List() const;
  bool empty() const;

  // Counters for metrics: loads (the first of each model and every reload) and refusals.
  int64_t loads() const;
  int64_t refusals() const;

 private:
  struct Entry {
    std::shared_ptr<const LoadedModel> current;
    std::filesystem::path follow;  // the checkpoints folder whose LATEST is followed; empty = pinned
    std::string pointer;           // LATEST's content when last looked at
    int64_t reloads = 0, refused = 0;
  };
  absl::StatusOr<std::shared_ptr<const LoadedModel>> Load(const ServedModelSpec& spec, int64_t version) const;

  std::filesystem::path store_;
  torch::Device device_;
  bool bf16_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> models_;
  int64_t loads_ = 0, refusals_ = 0;
};

}  // namespace retina::trainer::serving
