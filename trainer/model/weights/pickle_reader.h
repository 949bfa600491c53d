// A reader for the pickle programs Python's torch.save writes for state dicts
// (protocol 2, also 3-5 as written by newer Pythons): dicts and
// collections.OrderedDict (with the _metadata attribute set via BUILD),
// strings, numbers, tuples, lists, and tensors rebuilt by
// torch._utils._rebuild_tensor_v2 / _rebuild_parameter from storages that
// live in the zip archive's data/<key> records. Anything else (arbitrary
// classes) is rejected with the global's name: nothing is executed.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace retina::trainer {

struct PyValue;
using PyValuePtr = std::shared_ptr<PyValue>;

struct PyValue {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kTuple, kList, kDict, kGlobal, kTensor, kMark };
  Kind kind = Kind::kNone;
  int64_t i = 0;            // kBool, kInt
  double f = 0;             // kFloat
  std::string s;            // kString; kGlobal: "module.name"
  std::vector<PyValuePtr> items;                          // kTuple, kList
  std::vector<std::pair<PyValuePtr, PyValuePtr>> entries;  // kDict (insertion order)
  torch::Tensor tensor;     // kTensor (also a storage, as a flat tensor)
};

// A fresh value of `kind` (the fields for it set by the caller).
PyValuePtr MakePyValue(PyValue::Kind kind);

// Loads storage `key` of `dtype` with `numel` elements (from data/<key>).
using StorageLoader =
    std::function<absl::StatusOr<torch::Tensor>(const std::string& key, torch::ScalarType dtype, int64_t numel)>;

// Runs the pickle program `data`. `source` names the file in errors.
absl::StatusOr<PyValuePtr> Unpickle(const std::string& data, const StorageLoader& load_storage,
                                    const std::string& source);

}  // namespace retina::trainer
