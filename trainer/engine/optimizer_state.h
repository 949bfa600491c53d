// SGD state in PyTorch's own format: optimizer.pt is what
// torch.optim.SGD.state_dict() returns for the same model,
//   {"state": {i: {"momentum_buffer": Tensor}},
//    "param_groups": [{"lr", "momentum", "dampening", "weight_decay",
//                      "nesterov", "maximize", "foreach", "differentiable",
//                      "params": [0, ..., N-1]}]}
// where i indexes model.parameters() (every parameter, frozen ones included,
// in registration order; parameters that never had a gradient have no
// entry). A Python user continues a C++ run with
//   opt = torch.optim.SGD(model.parameters(), lr=..., momentum=0.9, weight_decay=1e-4)
//   opt.load_state_dict(torch.load("optimizer.pt"))
// (PyTorch 1.13's weights_only unpickler lacks the float opcode, so there use
// weights_only=False; 2.x loads it with weights_only=True).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <vector>

#include "absl/status/status.h"

namespace retina::trainer {

// optimizer.pt bytes for `opt`, whose single param group holds exactly `params`.
std::vector<char> SerializeSgdState(torch::optim::SGD& opt, const std::vector<torch::Tensor>& params);

// Restores momentum buffers (and the group's lr) from an optimizer.pt written
// by SerializeSgdState or by Python's torch.save(opt.state_dict()); files in
// libtorch's own archive format (checkpoints before December 2026) are read
// too. Errors name the file: a parameter count or shape that does not match.
absl::Status LoadSgdState(torch::optim::SGD& opt, const std::vector<torch::Tensor>& params,
                          const std::filesystem::path& file);

}  // namespace retina::trainer
