// A writer of torch.save's zip format for plain Python values, the
// counterpart of pickle_reader.h.
//
// The pickle (protocol 2) uses only what torch.load(weights_only=True)
// accepts (PyTorch >= 2.6 makes that the default): dict, list, tuple, str,
// int, float, bool, None, and tensors rebuilt by
// torch._utils._rebuild_tensor_v2 from torch.<Type>Storage records. No
// TorchScript type tags (torch::pickle_save writes
// torch.jit._pickle.restore_type_tag, which weights_only rejects), no other
// globals. Dicts are written as plain dicts (ordered in Python >= 3.7).
// Note: PyTorch 1.13's weights_only unpickler has no BINFLOAT opcode, so
// there a file holding floats (an optimizer state dict) loads with
// weights_only=False only; files of tensors and ints (state dicts) load
// with weights_only=True everywhere.
#pragma once

#include <vector>

#include "trainer/model/weights/pickle_reader.h"

namespace retina::trainer {

// Convenience constructors for the value tree.
PyValuePtr PyNone();
PyValuePtr PyBool(bool v);
PyValuePtr PyInt(int64_t v);
PyValuePtr PyFloat(double v);
PyValuePtr PyString(std::string v);
PyValuePtr PyTensor(torch::Tensor t);
PyValuePtr PyList(std::vector<PyValuePtr> items = {});
PyValuePtr PyDict(std::vector<std::pair<PyValuePtr, PyValuePtr>> entries = {});

// torch.save's zip archive ("archive/data.pkl", "archive/data/<k>",
// "archive/version") holding `root`. Tensors are written contiguous, from
// the CPU. Throws c10::Error only on internal misuse (a kGlobal/kMark value).
std::vector<char> TorchSaveBytes(const PyValue& root);

}  // namespace retina::trainer
