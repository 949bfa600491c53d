#include "trainer/model/weights/vit_npz_import.h"

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/model/weights/npz.h"

namespace retina::trainer {
namespace {

class Importer {
 public:
  Importer(std::map<std::string, torch::Tensor> arrays, std::string source, const TransUNetConfig& c)
      : arrays_(std::move(arrays)), source_(std::move(source)), c_(c) {}

  absl::StatusOr<StateDict> Run() {
    const std::string emb = "transformer.embeddings.";
    const std::string trunk = emb + "hybrid_model.";
    RETURN_IF_ERROR(PositionEmbedding(emb + "position_embeddings"));
    RETURN_IF_ERROR(Put(trunk + "root.conv.weight", "conv_root/kernel", Conv));
    RETURN_IF_ERROR(Put(trunk + "root.gn.weight", "gn_root/scale", Flat));
    RETURN_IF_ERROR(Put(trunk + "root.gn.bias", "gn_root/bias", Flat));
    for (size_t b = 0; b < c_.resnet_units.size(); ++b) {
      for (int u = 1; u <= c_.resnet_units[b]; ++u) {
        const std::string src = absl::StrCat("block", b + 1, "/unit", u, "/");
        const std::string dst = absl::StrCat(trunk, "body.block", b + 1, ".unit", u, ".");
        for (const char* n : {"1", "2", "3"}) {
          RETURN_IF_ERROR(Put(dst + "gn" + n + ".weight", src + "gn" + n + "/scale", Flat));
          RETURN_IF_ERROR(Put(dst + "gn" + n + ".bias", src + "gn" + n + "/bias", Flat));
          RETURN_IF_ERROR(Put(dst + "conv" + n + ".weight", src + "conv" + n + "/kernel", Conv));
        }
        if (u == 1) {  // the first unit of each stage projects the residual
          RETURN_IF_ERROR(Put(dst + "downsample.weight", src + "conv_proj/kernel", Conv));
          RETURN_IF_ERROR(Put(dst + "gn_proj.weight", src + "gn_proj/scale", Flat));
          RETURN_IF_ERROR(Put(dst + "gn_proj.bias", src + "gn_proj/bias", Flat));
        }
      }
    }
    RETURN_IF_ERROR(Put(emb + "patch_embeddings.weight", "embedding/kernel", Conv));
    RETURN_IF_ERROR(Put(emb + "patch_embeddings.bias", "embedding/bias", Flat));
    for (int i = 0; i < c_.num_layers; ++i) {
      const std::string src = absl::StrCat("Transformer/encoderblock_", i, "/");
      const std::string dst = absl::StrCat("transformer.encoder.layer.", i, ".");
      const std::string attn = src + "MultiHeadDotProductAttention_1/";
      RETURN_IF_ERROR(Put(dst + "attention_norm.weight", src + "LayerNorm_0/scale", Flat));
      RETURN_IF_ERROR(Put(dst + "attention_norm.bias", src + "LayerNorm_0/bias", Flat));
      RETURN_IF_ERROR(Put(dst + "ffn_norm.weight", src + "LayerNorm_2/scale", Flat));
      RETURN_IF_ERROR(Put(dst + "ffn_norm.bias", src + "LayerNorm_2/bias", Flat));
      RETURN_IF_ERROR(Put(dst + "ffn.fc1.weight", src + "MlpBlock_3/Dense_0/kernel", Dense));
      RETURN_IF_ERROR(Put(dst + "ffn.fc1.bias", src + "MlpBlock_3/Dense_0/bias", Flat));
      RETURN_IF_ERROR(Put(dst + "ffn.fc2.weight", src + "MlpBlock_3/Dense_1/kernel", Dense));
      RETURN_IF_ERROR(Put(dst + "ffn.fc2.bias", src + "MlpBlock_3/Dense_1/bias", Flat));
      for (const char* qkvo : {"query", "key", "value", "out"}) {
        RETURN_IF_ERROR(Put(dst + "attn." + qkvo + ".weight", attn + qkvo + "/kernel", Attention));
        RETURN_IF_ERROR(Put(dst + "attn." + qkvo + ".bias", attn + qkvo + "/bias", Flat));
      }
    }
    RETURN_IF_ERROR(Put("transformer.encoder.encoder_norm.weight", "Transformer/encoder_norm/scale", Flat));
    RETURN_IF_ERROR(Put("transformer.encoder.encoder_norm.bias", "Transformer/encoder_norm/bias", Flat));
    return std::move(out_);
  }

 private:
  static torch::Tensor Conv(const torch::Tensor& t) { return t.permute({3, 2, 0, 1}); }  // HWIO -> OIHW
  static torch::Tensor Flat(const torch::Tensor& t) { return t.reshape({-1}); }
  static torch::Tensor Dense(const torch::Tensor& t) { return t.t(); }  // [in, out] -> [out, in]
  // q/k/v [hidden, heads, d] and out [heads, d, hidden] -> [hidden, hidden]^T.
  static torch::Tensor Attention(const torch::Tensor& t) {
    const auto hidden = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(t.numel()))));
    return t.reshape({hidden, hidden}).t();
  }

  absl::StatusOr<torch::Tensor> Get(const std::string& key) {
    auto it = arrays_.find(key);
    if (it == arrays_.end()) return absl::NotFoundError(absl::StrCat(source_, ": no array '", key, "'"));
    return it->second.to(torch::kFloat);
  }

  absl::Status Put(const std::string& name, const std::string& key, torch::Tensor (*convert)(const torch::Tensor&)) {
    ASSIGN_OR_RETURN(torch::Tensor t, Get(key));
    out_.emplace_back(name, convert(t).contiguous());
    return absl::OkStatus();
  }

  absl::Status PositionEmbedding(const std::string& name) {
    ASSIGN_OR_RETURN(torch::Tensor pos, Get("Transformer/posembed_input/pos_embedding"));
    if (pos.dim() != 3 || pos.size(0) != 1 || pos.size(2) != c_.hidden_size) {
      return absl::FailedPreconditionError(absl::StrCat(source_, ": pos_embedding has shape ", ShapeString(pos),
                                                        ", expected [1, N, ", c_.hidden_size, "]"));
    }
    // A grid with a class token has side^2 + 1 entries; drop the token.
    int64_t n = pos.size(1);
    auto side_of = [](int64_t m) { return static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(m)))); };
    if (side_of(n - 1) * side_of(n - 1) == n - 1) {
      pos = pos.slice(1, 1);
      n -= 1;
    }
    const int64_t side = side_of(n);
    if (side * side != n) {
      return absl::FailedPreconditionError(absl::StrCat(source_, ": pos_embedding has ", n, " tokens, not a square grid"));
    }
    const int64_t grid = c_.grid();
    if (side != grid) {
      namespace F = torch::nn::functional;
      torch::Tensor g = pos.reshape({1, side, side, c_.hidden_size}).permute({0, 3, 1, 2});
      g = F::interpolate(g, F::InterpolateFuncOptions()
                                .size(std::vector<int64_t>{grid, grid})
                                .mode(torch::kBilinear)
                                .align_corners(true));
      pos = g.permute({0, 2, 3, 1}).reshape({1, grid * grid, c_.hidden_size});
    }
    out_.emplace_back(name, pos.contiguous());
    return absl::OkStatus();
  }

  std::map<std::string, torch::Tensor> arrays_;
  std::string source_;
  const TransUNetConfig& c_;
  StateDict out_;
};

}  // namespace

absl::StatusOr<StateDict> ImportViTNpz(const std::filesystem::path& path, const TransUNetConfig& config) {
  ASSIGN_OR_RETURN(auto arrays, ReadNpz(path));
  return Importer(std::move(arrays), path.string(), config).Run();
}

}  // namespace retina::trainer
