#include "trainer/model/model_config.h"

#include "absl/strings/str_cat.h"

namespace retina::trainer {

absl::StatusOr<TransUNetConfig> NamedModelConfig(const std::string& name, int image_size,
                                                 int num_classes, ModelHead head) {
  if (image_size < 32 || image_size % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.image_size: must be a multiple of 16 and >= 32, got ", image_size));
  }
  if (num_classes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("model.classes: must be >= 1, got ", num_classes));
  }
  TransUNetConfig c;
  c.name = name;
  c.image_size = image_size;
  c.head = head;
  c.num_classes = head == ModelHead::kReconstruction ? 1 : num_classes;
  if (name == "r50-vit-b16") {
    // Defaults above.
  } else if (name == "r50-vit-b16-192") {
    c.hidden_size = 192;
    c.mlp_dim = 768;
  } else if (name == "tiny") {
    c.resnet_width = 32;
    c.hidden_size = 64;
    c.mlp_dim = 128;
    c.num_heads = 4;
    c.num_layers = 2;
    c.head_channels = 64;
    c.decoder_channels = {64, 32, 16, 16};
    c.skip_channels = {256, 128, 32, 0};
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.name: unknown model '", name, "' (known: r50-vit-b16, r50-vit-b16-192, tiny)"));
  }
  return c;
}

absl::StatusOr<ModelHead> ParseModelHead(const std::string& text) {
  if (text == "segmentation") return ModelHead::kSegmentation;
  if (text == "reconstruction") return ModelHead::kReconstruction;
  return absl::InvalidArgumentError(
      absl::StrCat("--head: '", text, "' is not segmentation or reconstruction"));
}

}  // namespace retina::trainer
