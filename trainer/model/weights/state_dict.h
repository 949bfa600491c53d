// State dicts that move both ways with Python PyTorch.
//
// Order: as PyTorch's Module.state_dict(): modules in pre-order, each
// module's own parameters, then its buffers. Names are dotted paths
// ("decoder.blocks.0.conv1.1.running_mean").
//
// Files: SaveStateDictFile writes the zip format of torch.save holding a
// plain dict[str, Tensor] (trainer/model/weights/pickle_writer.h); Python loads it
// with torch.load(path, weights_only=True). ReadStateDictFile reads files written by Python's
// torch.save(model.state_dict()): an OrderedDict with a _metadata attribute,
// which libtorch's own unpickler cannot read (it turns OrderedDict into None),
// so trainer/model/weights/pickle_reader.h handles those opcodes itself.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/model/weights/pickle_reader.h"

namespace retina::trainer {

using StateDict = std::vector<std::pair<std::string, torch::Tensor>>;

// The module's parameters and buffers, in PyTorch's state_dict order.
// The tensors alias the module's (no copy).
StateDict GetStateDict(const torch::nn::Module& module);

struct LoadOptions {
  // Strict: every module entry must be present, no extra entries, every shape equal.
  bool strict = true;
  // Entries whose name contains any of these are dropped before loading (and
  // then not reported as unexpected; their module entries not as missing).
  std::vector<std::string> drop_containing;
};

struct LoadReport {
  std::vector<std::string> loaded;
  std::vector<std::string> missing;      // in the module, not in the file
  std::vector<std::string> unexpected;   // in the file, not in the module
  std::vector<std::string> mismatched;   // "name: file [a, b] vs model [c, d]"
  std::vector<std::string> dropped;
};

// Copies `dict` into the module's tensors. A "module." prefix on every key
// (DDP) is stripped. Strict mode fails with FAILED_PRECONDITION listing the
// missing, unexpected and shape-mismatched names and changes nothing;
// non-strict loads what matches and reports the rest.
absl::StatusOr<LoadReport> LoadStateDict(torch::nn::Module& module, StateDict dict,
                                         const LoadOptions& options = {});

// Serialises to torch.save's zip format (dict[str, Tensor], CPU tensors).
std::vector<char> SerializeStateDict(const StateDict& dict);
// SerializeStateDict + an atomic, durable write.
absl::Status SaveStateDictFile(const StateDict& dict, const std::filesystem::path& path);
// Reads any torch.save zip file (the values pickle_reader.h supports).
absl::StatusOr<PyValuePtr> ReadTorchSaveFile(const std::filesystem::path& path);
// Reads a torch.save zip file holding a dict/OrderedDict of tensors (or a
// dict with such a dict under "state_dict" or "model"). Errors name the file.
absl::StatusOr<StateDict> ReadStateDictFile(const std::filesystem::path& path);

// "[768, 3, 7, 7]" / "[]".
std::string ShapeString(const torch::Tensor& t);

}  // namespace retina::trainer
