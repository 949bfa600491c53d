// What retina-serve answers, without gRPC (the server in services/serve/
// converts its messages to these and back; docs/serving.md).
//
// Inputs: an inline array or a file's bytes (predicted whole), or a region of
// a volume in the store. Region rule: the region [z0, z1) x [y0, y1) x
// [x0, x1) is predicted as retina-infer predicts the volume cropped to the
// region grown by `context` voxels on every side in y and x (and in z for
// orthoplane; 2d and stack predict planes independently, so they take no z
// context), clamped to the volume; the answer is the region's part of that
// prediction. So the answer equals retina-infer's on that crop up to float
// rounding of the forward passes (the labels bitwise unless a voxel sits on
// a class boundary within that rounding), and is near the whole-volume prediction
// wherever the context covers the windows that reach the region. The default
// context is half the model's window.
//
// Memory: a request's buffers (its input with context, the accumulators, the
// labels and probabilities) are bounded by max_request_bytes; a larger
// request is refused naming the limit (RESOURCE_EXHAUSTED).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/path_policy.h"
#include "trainer/serving/model_pool.h"
#include "trainer/serving/window_batcher.h"

namespace retina::trainer::serving {

struct ArrayInput {
  std::string dtype;             // uint8, uint16, int16, float32
  std::vector<int64_t> shape;    // [y, x] or [z, y, x]
  std::vector<double> spacing;   // as many as shape, or none
  std::string unit;
  std::string data;
};
struct FileInput {
  std::string name, dataset, data;
};
struct RegionInput {
  std::string volume;
  std::array<int64_t, 6> box{0, 0, 0, 0, 0, 0};  // z0, z1, y0, y1, x0, x1; all 0 = the whole volume
};

struct PredictQuery {
  std::string user;  // the caller ("anonymous" without tokens)
  bool admin = false;
  std::string model;
  std::variant<ArrayInput, FileInput, RegionInput> input;
  std::string mode;  // 2d | stack | orthoplane; "" = stack
  std::string scaling;  // "" (uint8 required) or "minmax"
  std::optional<double> overlap;
  std::optional<int64_t> context;
  bool probabilities = false;
  bool uncertainty = false;  // the uncertainty map (NormalisedEntropy), the labels' shape
  std::string output;  // region requests: <store>/served/<user>/<output>
  std::vector<int64_t> output_chunks;
  bool labels_tiff = false;
  absl::Time deadline = absl::InfiniteFuture();
  std::function<bool()> cancelled;
};

struct PredictAnswer {
  std::vector<int64_t> shape;        // z, y, x (2D inputs: y, x)
  std::vector<uint8_t> labels;
  std::vector<double> spacing;
  std::string unit;
  std::vector<int64_t> probabilities_shape;  // c, z, y, x
  std::vector<float> probabilities;
  std::vector<float> uncertainty;    // shape `shape`, when asked
  std::string labels_tiff;           // a TIFF file's bytes (labels_tiff)
  std::string model, checkpoint, output;
  int64_t windows = 0;
};

struct ServingOptions {
  std::filesystem::path store;
  std::vector<std::filesystem::path> allowed_roots;  // besides the store, where region volumes may be
  int64_t max_request_bytes = int64_t{1} << 30;
  std::filesystem::path scratch;  // where uploaded files are decoded (a private temporary directory)
};

class ServingCore {
 public:
  ServingCore(ServingOptions options, ModelPool* models, WindowBatcher* batcher);

  // PERMISSION_DENIED unless `user` may use `model` (its owner, an admin, or
  // anyone for a model without an owner); NOT_FOUND for an unknown model.
  absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelFor(const std::string& user, bool admin,
                                                              const std::string& model) const;
  absl::StatusOr<PredictAnswer> Predict(const PredictQuery& query);

  // The buffers a request of `shape` (with context) needs; what the limit checks.
  static int64_t RequestBytes(const std::array<int64_t, 3>& shape, int classes, bool orthoplane, bool probabilities,
                              int64_t window);

 private:
  absl::Status WriteOutput(const PredictQuery& q, const LoadedModel& m, const RegionInput& region,
                           const std::array<int64_t, 3>& volume_shape, const std::array<double, 3>& spacing,
                           const std::string& unit, const std::vector<uint8_t>& labels, PredictAnswer* answer);

  ServingOptions options_;
  PathPolicy policy_;
  ModelPool* models_;
  WindowBatcher* batcher_;
  std::mutex output_mu_;  // creating an output array
};

}  // namespace retina::trainer::serving
