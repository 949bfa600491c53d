#include "trainer/engine/optimizer_state.h"

#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/model/weights/pickle_writer.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/torch_compat.h"

namespace retina::trainer {
namespace {

const PyValue* Find(const PyValue& dict, const std::string& key) {
  for (const auto& [k, v] : dict.entries) {
    if (k->kind == PyValue::Kind::kString && k->s == key) return v.get();
  }
  return nullptr;
}

}  // namespace

std::vector<char> SerializeSgdState(torch::optim::SGD& opt, const std::vector<torch::Tensor>& params) {
  const auto& o = static_cast<const torch::optim::SGDOptions&>(opt.param_groups().at(0).options());
  std::vector<std::pair<PyValuePtr, PyValuePtr>> state;
  std::vector<PyValuePtr> indices;
  for (size_t i = 0; i < params.size(); ++i) {
    indices.push_back(PyInt(static_cast<int64_t>(i)));
    auto it = opt.state().find(OptimizerStateKey(opt, params[i]));
    if (it == opt.state().end()) continue;
    const auto& s = static_cast<const torch::optim::SGDParamState&>(*it->second);
    if (!s.momentum_buffer().defined()) continue;
    state.emplace_back(PyInt(static_cast<int64_t>(i)),
                       PyDict({{PyString("momentum_buffer"), PyTensor(s.momentum_buffer())}}));
  }
  PyValuePtr group = PyDict({{PyString("lr"), PyFloat(o.lr())},
                             {PyString("momentum"), PyFloat(o.momentum())},
                             {PyString("dampening"), PyFloat(o.dampening())},
                             {PyString("weight_decay"), PyFloat(o.weight_decay())},
                             {PyString("nesterov"), PyBool(o.nesterov())},
                             {PyString("maximize"), PyBool(false)},
                             {PyString("foreach"), PyNone()},
                             {PyString("differentiable"), PyBool(false)},
                             {PyString("params"), PyList(std::move(indices))}});
  PyValuePtr root = PyDict({{PyString("state"), PyDict(std::move(state))},
                            {PyString("param_groups"), PyList({group})}});
  return TorchSaveBytes(*root);
}

absl::Status LoadSgdState(torch::optim::SGD& opt, const std::vector<torch::Tensor>& params,
                          const std::filesystem::path& file) {
  ASSIGN_OR_RETURN(PyValuePtr root, ReadTorchSaveFile(file));
  const PyValue* state = root->kind == PyValue::Kind::kDict ? Find(*root, "state") : nullptr;
  const PyValue* groups = root->kind == PyValue::Kind::kDict ? Find(*root, "param_groups") : nullptr;
  if (state == nullptr || groups == nullptr) {
    // libtorch's own archive (torch::save(optimizer)), as older checkpoints hold.
    try {
      torch::load(opt, file.string());
      return absl::OkStatus();
    } catch (const c10::Error& e) {
      return absl::DataLossError(absl::StrCat(file.string(), ": neither a PyTorch optimizer state_dict nor a libtorch optimizer archive: ",
                                              e.what_without_backtrace()));
    }
  }
  const std::string where = file.string();
  if (state->kind != PyValue::Kind::kDict || groups->kind != PyValue::Kind::kList || groups->items.size() != 1 ||
      groups->items[0]->kind != PyValue::Kind::kDict) {
    return absl::DataLossError(absl::StrCat(where, ": expected 'state' to be a dict and 'param_groups' a list of one group"));
  }
  const PyValue* indices = Find(*groups->items[0], "params");
  if (indices == nullptr || indices->kind != PyValue::Kind::kList || indices->items.size() != params.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, ": param_groups[0].params lists ", indices ? indices->items.size() : 0, " parameters; the model has ",
        params.size()));
  }
  if (const PyValue* lr = Find(*groups->items[0], "lr"); lr != nullptr && lr->kind == PyValue::Kind::kFloat) {
    static_cast<torch::optim::SGDOptions&>(opt.param_groups().at(0).options()).lr(lr->f);
  }
  std::map<int64_t, torch::Tensor> buffers;
  for (const auto& [key, value] : state->entries) {
    const PyValue* buf = value->kind == PyValue::Kind::kDict ? Find(*value, "momentum_buffer") : nullptr;
    if (key->kind != PyValue::Kind::kInt || key->i < 0 || key->i >= static_cast<int64_t>(params.size())) {
      return absl::DataLossError(absl::StrCat(where, ": state key is not a parameter index below ", params.size()));
    }
    if (buf == nullptr || buf->kind == PyValue::Kind::kNone) continue;
    if (buf->kind != PyValue::Kind::kTensor || buf->tensor.sizes() != params[key->i].sizes()) {
      return absl::FailedPreconditionError(absl::StrCat(where, ": momentum_buffer of parameter ", key->i, " is ",
                                                        buf->kind == PyValue::Kind::kTensor ? ShapeString(buf->tensor) : "not a tensor",
                                                        ", the parameter ", ShapeString(params[key->i])));
    }
    buffers[key->i] = buf->tensor;
  }
  opt.state().clear();
  for (const auto& [i, buf] : buffers) {
    auto s = std::make_unique<torch::optim::SGDParamState>();
    s->momentum_buffer(buf.to(params[i].options()).contiguous());
    opt.state()[OptimizerStateKey(opt, params[i])] = std::move(s);
  }
  return absl::OkStatus();
}

}  // namespace retina::trainer
