#include "trainer/model/vit.h"

#include <cmath>

#include "trainer/model/mixed_precision.h"

namespace retina::trainer {

AttentionImpl::AttentionImpl(const TransUNetConfig& c) : num_heads_(c.num_heads) {
  TORCH_CHECK(c.hidden_size % c.num_heads == 0, "hidden_size must divide by num_heads");
  query = register_module("query", torch::nn::Linear(c.hidden_size, c.hidden_size));
  key = register_module("key", torch::nn::Linear(c.hidden_size, c.hidden_size));
  value = register_module("value", torch::nn::Linear(c.hidden_size, c.hidden_size));
  out = register_module("out", torch::nn::Linear(c.hidden_size, c.hidden_size));
  attn_dropout = register_module("attn_dropout", Dropout(c.attention_dropout_rate));
  proj_dropout = register_module("proj_dropout", Dropout(c.attention_dropout_rate));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), n = x.size(1), hidden = x.size(2);
  const int64_t d = hidden / num_heads_;
  auto heads = [&](const torch::Tensor& t) {  // [B, N, H*d] -> [B, H, N, d]
    return t.view({b, n, num_heads_, d}).permute({0, 2, 1, 3});
  };
  const torch::Tensor q = heads(query(x)), k = heads(key(x)), v = heads(value(x));
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(d));
  torch::Tensor probs = attn_dropout(torch::softmax(ToParamDtype(scores, query->weight), -1));
  torch::Tensor context = torch::matmul(probs, v).permute({0, 2, 1, 3}).contiguous().view({b, n, hidden});
  return proj_dropout(out(context));
}

MlpImpl::MlpImpl(const TransUNetConfig& c) {
  fc1 = register_module("fc1", torch::nn::Linear(c.hidden_size, c.mlp_dim));
  fc2 = register_module("fc2", torch::nn::Linear(c.mlp_dim, c.hidden_size));
  dropout = register_module("dropout", Dropout(c.dropout_rate));
  reset_parameters();
}

void MlpImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  torch::nn::init::xavier_uniform_(fc1->weight);
  torch::nn::init::xavier_uniform_(fc2->weight);
  torch::nn::init::normal_(fc1->bias, 0.0, 1e-6);
  torch::nn::init::normal_(fc2->bias, 0.0, 1e-6);
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return dropout(fc2(dropout(torch::gelu(fc1(x)))));  // gelu: exact (erf) form
}

BlockImpl::BlockImpl(const TransUNetConfig& c) {
  using torch::nn::LayerNormOptions;
  attention_norm = register_module(
      "attention_norm", torch::nn::LayerNorm(LayerNormOptions({c.hidden_size}).eps(1e-6)));
  ffn_norm = register_module("ffn_norm",
                             torch::nn::LayerNorm(LayerNormOptions({c.hidden_size}).eps(1e-6)));
  ffn = register_module("ffn", Mlp(c));
  attn = register_module("attn", Attention(c));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x + attn(attention_norm(ToParamDtype(x, attention_norm->weight)));
  return h + ffn(ffn_norm(ToParamDtype(h, ffn_norm->weight)));
}

EncoderImpl::EncoderImpl(const TransUNetConfig& c) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int i = 0; i < c.num_layers; ++i) layer->push_back(Block(c));
  encoder_norm = register_module(
      "encoder_norm",
      torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(1e-6)));
}

torch::Tensor EncoderImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x;
  for (const auto& block : *layer) h = block->as<Block>()->forward(h);
  return encoder_norm(ToParamDtype(h, encoder_norm->weight));
}

EmbeddingsImpl::EmbeddingsImpl(const TransUNetConfig& c) {
  // Own parameter first: it leads the reference's state dict.
  position_embeddings =
      register_parameter("position_embeddings", torch::zeros({1, c.n_patches(), c.hidden_size}));
  hybrid_model = register_module("hybrid_model", ResNetV2(c.resnet_units, c.resnet_width, c.in_channels));
  // The trunk's output has width * 16 channels; grid = S/16 needs a 1x1 patch.
  patch_embeddings = register_module(
      "patch_embeddings",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(c.resnet_width * 16, c.hidden_size, 1)));
  dropout = register_module("dropout", Dropout(c.dropout_rate));
}

ResNetFeatures EmbeddingsImpl::forward(const torch::Tensor& x) {
  ResNetFeatures f = hybrid_model(x);
  torch::Tensor tokens = patch_embeddings(f.x).flatten(2).transpose(-1, -2);
  TORCH_CHECK(tokens.size(1) == position_embeddings.size(1), "input gives ", tokens.size(1),
              " patches but the model was built for ", position_embeddings.size(1),
              " (image size mismatch)");
  f.x = dropout(tokens + position_embeddings);
  return f;
}

TransformerImpl::TransformerImpl(const TransUNetConfig& c) {
  embeddings = register_module("embeddings", Embeddings(c));
  encoder = register_module("encoder", Encoder(c));
}

ResNetFeatures TransformerImpl::forward(const torch::Tensor& x) {
  ResNetFeatures f = embeddings(x);
  f.x = encoder(f.x);
  return f;
}

}  // namespace retina::trainer
