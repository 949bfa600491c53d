// Fine-tuning transfer (METHOD.md section 3): drop every entry whose name
// contains "decoder", "segmentation_head" or "FinalDecoder", load the rest
// strictly (trunk, patch and position embeddings, the whole encoder), then
// freeze transformer.encoder.* (blocks + encoder_norm).
#pragma once

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "trainer/model/weights/state_dict.h"

namespace retina::trainer {

// The prefix of the parameters frozen at fine-tuning.
inline constexpr char kFrozenPrefix[] = "transformer.encoder";

absl::StatusOr<LoadReport> TransferPretrained(torch::nn::Module& model, StateDict pretrained,
                                              bool freeze_encoder);

// Sets requires_grad = false on every parameter under transformer.encoder;
// returns how many tensors it froze.
int FreezeEncoder(torch::nn::Module& model);

}  // namespace retina::trainer
