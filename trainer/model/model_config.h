// Hyper-parameters of the TransUNet R50-ViT-B/16 family (METHOD.md section 1)
// and the named configurations a job can ask for.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace retina::trainer {

// Which output head(s) the model carries.
//  kSegmentation:   segmentation_head (n classes): the fine-tuning model.
//  kReconstruction: FinalDecoder.conv1 (1 channel, linear) plus the
//                   reference's unused 1-class segmentation_head: the
//                   pre-training model (411 state-dict entries).
enum class ModelHead { kSegmentation, kReconstruction };

struct TransUNetConfig {
  std::string name;
  int image_size = 224;
  int in_channels = 3;                  // 1-channel inputs are repeated to 3 in forward
  // ResNetV2 trunk.
  std::vector<int> resnet_units{3, 4, 9};
  int resnet_width = 64;                // root channels; stage k has 4*width*2^k outputs
  // Transformer.
  int hidden_size = 768;
  int mlp_dim = 3072;
  int num_heads = 12;
  int num_layers = 12;
  double dropout_rate = 0.1;
  double attention_dropout_rate = 0.0;
  // Decoder.
  int head_channels = 512;              // conv_more output
  std::vector<int> decoder_channels{256, 128, 64, 16};
  std::vector<int> skip_channels{512, 256, 64, 0};  // after n_skip = 3 zeroes the last
  // Heads.
  ModelHead head = ModelHead::kSegmentation;
  int num_classes = 1;

  int grid() const { return image_size / 16; }
  int n_patches() const { return grid() * grid(); }
};

// "r50-vit-b16" (RETINA, 768 wide), "r50-vit-b16-192" (the reference's
// default width 192, MLP 768), "tiny" (same structure and names: GN needs
// channels in multiples of 32, so width 32; hidden 64, 2 layers; for tests).
// INVALID_ARGUMENT for an unknown name, an image size not a positive
// multiple of 16, or classes < 1.
absl::StatusOr<TransUNetConfig> NamedModelConfig(const std::string& name, int image_size,
                                                 int num_classes, ModelHead head);

// "segmentation" / "reconstruction".
absl::StatusOr<ModelHead> ParseModelHead(const std::string& text);

}  // namespace retina::trainer
