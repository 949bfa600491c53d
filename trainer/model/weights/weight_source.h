// One way to name trained weights, shared by fine-tuning (finetune.init),
// evaluation jobs (evaluate.checkpoint) and retina-infer --weights.
//
// A spec is one of (checked in this order):
//   - a registered model, model:NAME[:vN|@TAG] (common/model_ref.h) -> its checkpoint, verified
//                                                            (or the package it was imported from)
//   - a BioImage.IO package (.zip with rdf.yaml, bioimageio.h)  -> checked as a consumer checks it
//                                                            (format, sha256s, its test tensors), unpacked
//   - an ImageNet .npz (Google's R50+ViT-B_16 layout)       -> imported
//   - a LATEST file                                        -> its folder's latest checkpoint
//   - a checkpoint directory (holds MANIFEST)              -> its model.pt, verified
//   - a checkpoints/ folder (holds LATEST or step-*)       -> the latest checkpoint that verifies
//   - a job directory (holds checkpoints/)                 -> the same, of its checkpoints/
//   - a model.pt / any torch.save state-dict file          -> that file; verified against the
//                                                            MANIFEST beside it when there is one
// A relative spec that does not exist from the working directory is taken
// relative to the store ("jobs/<id>/checkpoints/LATEST"). Errors name
// `field` and the spec, and say what was looked for.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/model/transunet.h"

namespace retina::trainer {

struct WeightSource {
  enum class Format { kStateDict, kNpz };
  Format format = Format::kStateDict;
  std::filesystem::path file;            // model.pt, a .pt, or the .npz
  std::filesystem::path checkpoint_dir;  // the checkpoint holding `file` (state.json, MANIFEST); empty if none
  // A BioImage.IO package: the .zip, and the private directory it was
  // unpacked into (checkpoint_dir: model.pt and a state.json made from its
  // description; no MANIFEST), removed with the last copy of this source.
  std::filesystem::path package;
  std::shared_ptr<const std::filesystem::path> unpacked;
};

absl::StatusOr<WeightSource> ResolveWeights(const std::string& spec, const std::filesystem::path& store,
                                            const std::string& field);

// Reads the resolved weights; `model` is needed to import an .npz.
absl::StatusOr<StateDict> ReadWeights(const WeightSource& source, const TransUNetConfig& model);

}  // namespace retina::trainer
