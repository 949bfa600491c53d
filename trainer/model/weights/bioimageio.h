// BioImage.IO model packages (format 0.5, docs/models.md "BioImage.IO"):
// the zip that ilastik, deepImageJ, napari plugins and bioimageio.core read.
//
//   rdf.yaml          the description: name, authors, cite, license, covers,
//                     inputs/outputs (axes batch, channel, y, x; data types;
//                     pre- and postprocessing), weights, config.retina
//   weights.pt        pytorch_state_dict: a torch.save state dict (our model.pt)
//   transunet.py      the architecture: the project's Python TransUNet
//                     (trainer/model/python/transunet.py), callable
//                     VisionTransformer with kwargs {name, image_size, classes}
//   test_input.npy    uint8 [1, 1, S, S]: raw EM
//   test_output.npy   float32 [1, C, S, S]: probabilities, after the
//                     postprocessing (what a consumer's pipeline yields)
//   cover.png         the test input beside its probability map
//   README.md         documentation; lineage.json: the registry's chain
//
// The model's normalisation is its preprocessing: ensure_dtype float32,
// scale_linear (gain 1/255), fixed_zero_mean_unit_variance (the checkpoint's
// mean and std); the postprocessing is sigmoid (1 class) or softmax over
// channels. Every file is listed with its SHA-256.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/records.h"
#include "trainer/model/transunet.h"

namespace retina::trainer {

inline constexpr char kBioImageIoFormatVersion[] = "0.5.4";
// The RETINA paper, cited by every package.
inline constexpr char kRetinaDoi[] = "10.1371/journal.pcbi.1013115";

struct PackageText {
  std::string name;         // 5-128 of letters, digits, _+- () (others become '-')
  std::string description;
  std::vector<std::string> authors;  // at least one
  std::string license = "CC-BY-4.0";  // SPDX
  std::vector<std::string> tags;
  std::string documentation;          // README.md's text
  std::string lineage_json;           // lineage.json (empty: not attached)
  std::string timestamp;              // ISO 8601, UTC
};

struct PackageModel {
  std::string config_name;  // model_config.h: r50-vit-b16, r50-vit-b16-192, tiny
  int image_size = 224;
  int classes = 1;
  double mean = 0, std = 1;  // (v/255 - mean) / std
  std::filesystem::path weights;  // a torch.save state dict (model.pt)
  std::string pytorch_version;    // of the libtorch that wrote the weights
};

// The package's whole pipeline on raw uint8 [N, 1, S, S]: its preprocessing,
// the model (in eval mode), its postprocessing. float32 [N, C, S, S].
torch::Tensor PackageForward(VisionTransformer& model, const torch::Tensor& raw_u8, double mean, double std);

// Writes the package. `test_input` uint8 [S, S]; `test_output` its
// PackageForward, float32 [1, C, S, S].
absl::Status WriteBioImageIoPackage(const std::filesystem::path& zip, const PackageText& text,
                                    const PackageModel& model, const torch::Tensor& test_input,
                                    const torch::Tensor& test_output);

// A package read back as weights: the checks a consumer makes (format 0.5, a
// pytorch_state_dict of this architecture, the SHA-256 of every file it
// lists), then the weights and a state.json from its kwargs and
// preprocessing unpacked into a private directory (removed with the last
// copy of `dir`), then the package's test input run through PackageForward
// and compared with its test output. Errors name `field`, the package and
// what failed (INVALID_ARGUMENT; DATA_LOSS for a checksum or a test tensor
// that disagrees).
struct ImportedPackage {
  std::shared_ptr<const std::filesystem::path> dir;  // owns the unpacked files
  std::filesystem::path checkpoint_dir;              // model.pt, state.json
  CheckpointState state;
  double test_max_abs_diff = 0;                      // the test tensors' agreement
};
// The largest difference between a package's test output and our forward
// that import accepts (probabilities; see docs/models.md for the measurement).
inline constexpr double kPackageTestTolerance = 1e-4;
absl::StatusOr<ImportedPackage> ImportBioImageIoPackage(const std::filesystem::path& zip, const std::string& field);

// Whether `path` looks like a BioImage.IO package (a .zip holding rdf.yaml
// or bioimageio.yaml).
bool IsBioImageIoPackage(const std::filesystem::path& path);

// trainer/model/python/transunet.py, embedded at build time.
const std::string& TransUNetPythonSource();

}  // namespace retina::trainer
