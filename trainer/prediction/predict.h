// Segmenting a file with trained weights: what `retina-infer` runs, as a
// library (the program parses flags into PredictFileOptions and prints the
// summary).
//
// Weights are anything trainer/model/weights/weight_source.h resolves (a model.pt, a
// checkpoint directory, a job's checkpoints/ or its LATEST, a PyTorch .pt;
// relative names also from the store), verified against its MANIFEST. The
// model config, image size and classes come from the checkpoint's state.json
// (CheckpointState), else from the tensors' shapes; options override both.
// Normalisation comes from state.json unless mean/std are given.
//
// Volumes are read and written in z-slabs sized so that the slab's buffers fit
// `memory_mb` (the model and libtorch come on top): uint8 HDF5 and TIFF inputs
// are read slab by slab, the labels written as they are done. The result
// does not depend on the slab size. Output: .tif/.tiff (labels) or .h5
// (labels, and with `probabilities` float32 per-class probabilities
// [C, Z, Y, X]).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/job_config.h"
#include "common/records.h"
#include "trainer/data/formats/array.h"
#include "trainer/prediction/inference.h"
#include "trainer/model/transunet.h"

namespace retina::trainer {

// Which weights, and what to override of what they record.
struct ModelSelection {
  std::string weights;                 // ResolveWeights' spec
  std::filesystem::path store = ".";   // relative weights are also looked up here
  std::optional<std::string> model;    // a named config (model_config.h)
  std::optional<int> classes, image_size;
  std::optional<double> mean, std;     // both or neither
};

// A segmentation model ready to run, with the normalisation it was trained on.
struct SegmentationModel {
  TransUNetConfig config;
  VisionTransformer model{nullptr};
  double mean = 0, std = 1;
  std::filesystem::path weights_file;
  std::optional<CheckpointState> state;  // the checkpoint's, when it has one
};

// FAILED_PRECONDITION for a file that is not a segmentation TransUNet (a
// pre-training checkpoint, another network) or without a normalisation;
// INVALID_ARGUMENT for bad overrides. The model is in eval mode on `device`.
absl::StatusOr<SegmentationModel> LoadSegmentationModel(const ModelSelection& selection, const torch::Device& device);

struct PredictFileOptions {
  ModelSelection model;
  std::string input;  // anything OpenPlaneReader reads
  std::string out;    // .tif/.tiff or .h5/.hdf5
  PredictionMode mode = PredictionMode::kStack;
  std::optional<double> overlap;  // default 0.7 for volumes, 0.5 for 2D images (METHOD.md)
  bool probabilities = false;     // needs an .h5 out
  bool uncertainty = false;       // <name>.uncertainty.ome.zarr beside an .ome.zarr out (NormalisedEntropy)
  DeviceKind device = DeviceKind::kAuto;
  Precision precision = Precision::kFp32;  // fp32, or bf16 autocast (CUDA, or a CPU with bf16 units)
  IntensityScaling scaling = IntensityScaling::kRequireUInt8;
  std::optional<int> memory_mb;   // default half this machine's RAM
  bool progress = true;           // a progress bar on stderr
};

struct PredictFileReport {
  std::string model, device;
  std::array<int64_t, 3> shape{0, 0, 0};
  double seconds = 0;
  VolumeStreamStats stats;
  bool streamed = false;  // the input was read slab by slab
  double peak_rss_mib = 0;
  std::string Summary(const PredictFileOptions& options) const;  // retina-infer's last line
};

absl::StatusOr<PredictFileReport> PredictFile(const PredictFileOptions& options);

}  // namespace retina::trainer
