#include "trainer/model/weights/transfer.h"

#include "absl/strings/match.h"
#include "common/status_macros.h"

namespace retina::trainer {

absl::StatusOr<LoadReport> TransferPretrained(torch::nn::Module& model, StateDict pretrained,
                                              bool freeze_encoder) {
  LoadOptions options;
  options.strict = true;
  options.drop_containing = {"decoder", "segmentation_head", "FinalDecoder"};
  ASSIGN_OR_RETURN(LoadReport report, LoadStateDict(model, std::move(pretrained), options),
                   "transferring pre-trained weights");
  if (freeze_encoder) FreezeEncoder(model);
  return report;
}

int FreezeEncoder(torch::nn::Module& model) {
  int frozen = 0;
  for (auto& p : model.named_parameters(/*recurse=*/true)) {
    if (absl::StartsWith(p.key(), kFrozenPrefix)) {
      p.value().set_requires_grad(false);
      ++frozen;
    }
  }
  return frozen;
}

}  // namespace retina::trainer
