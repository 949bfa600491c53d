// The transformer half of TransUNet (reference: vit_seg_modeling.py):
// hybrid embeddings (ResNetV2 trunk + 1x1 patch embedding + learned position
// embeddings) and 12 pre-norm encoder blocks. Names follow the reference:
// transformer.embeddings.{position_embeddings, hybrid_model, patch_embeddings},
// transformer.encoder.layer.{i}.{attention_norm, ffn_norm, ffn.fc1, ffn.fc2,
// attn.query, attn.key, attn.value, attn.out}, transformer.encoder.encoder_norm.
#pragma once

#include <torch/torch.h>

#include "trainer/model/dropout.h"
#include "trainer/model/model_config.h"
#include "trainer/model/resnet_v2.h"

namespace retina::trainer {

// Multi-head self-attention: softmax(q k^T / sqrt(d)) v, then `out`.
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const TransUNetConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // [B, N, hidden] -> same

 private:
  int num_heads_;
  torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr}, out{nullptr};
  Dropout attn_dropout{nullptr}, proj_dropout{nullptr};
};
TORCH_MODULE(Attention);

// fc1 -> exact (erf) GELU -> dropout -> fc2 -> dropout. fc weights
// xavier-uniform, biases N(0, 1e-6) (the reference's _init_weights).
class MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(const TransUNetConfig& config);
  torch::Tensor forward(const torch::Tensor& x);
  void reset_parameters();

 private:
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(Mlp);

// x + attn(attention_norm(x)); then x + ffn(ffn_norm(x)). LayerNorm eps 1e-6.
class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const TransUNetConfig& config);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::LayerNorm attention_norm{nullptr}, ffn_norm{nullptr};
  Mlp ffn{nullptr};
  Attention attn{nullptr};
};
TORCH_MODULE(Block);

class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const TransUNetConfig& config);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::ModuleList layer{nullptr};
  torch::nn::LayerNorm encoder_norm{nullptr};
};
TORCH_MODULE(Encoder);

// Image -> tokens [B, grid^2, hidden] (+ the trunk's skip features).
class EmbeddingsImpl : public torch::nn::Module {
 public:
  explicit EmbeddingsImpl(const TransUNetConfig& config);
  ResNetFeatures forward(const torch::Tensor& x);  // .x holds the tokens

  torch::Tensor position_embeddings;

 private:
  ResNetV2 hybrid_model{nullptr};
  torch::nn::Conv2d patch_embeddings{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(Embeddings);

class TransformerImpl : public torch::nn::Module {
 public:
  explicit TransformerImpl(const TransUNetConfig& config);
  ResNetFeatures forward(const torch::Tensor& x);  // .x: encoded tokens

 private:
  Embeddings embeddings{nullptr};
  Encoder encoder{nullptr};
};
TORCH_MODULE(Transformer);

}  // namespace retina::trainer
