#include "trainer/model/weights/pickle_reader.h"

#include <cstring>
#include <map>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace retina::trainer {
namespace {

using PyKind = PyValue::Kind;

const std::unordered_map<std::string, torch::ScalarType>& StorageDtypes() {
  static const auto* m = new std::unordered_map<std::string, torch::ScalarType>{
      {"torch.FloatStorage", torch::kFloat},    {"torch.DoubleStorage", torch::kDouble},
      {"torch.HalfStorage", torch::kHalf},      {"torch.BFloat16Storage", torch::kBFloat16},
      {"torch.LongStorage", torch::kLong},      {"torch.IntStorage", torch::kInt},
      {"torch.ShortStorage", torch::kShort},    {"torch.CharStorage", torch::kChar},
      {"torch.ByteStorage", torch::kByte},      {"torch.BoolStorage", torch::kBool},
  };
  return *m;
}

class Machine {
 public:
  Machine(const std::string& data, const StorageLoader& loader, const std::string& source)
      : data_(data), loader_(loader), source_(source) {}

  absl::StatusOr<PyValuePtr> Run() {
    for (;;) {
      uint8_t op;
      RETURN_IF_ERROR(Byte(&op));
      const size_t at = pos_ - 1;
      absl::Status st = Step(op);
      if (!st.ok()) return Error(absl::StrCat("at byte ", at, " (opcode 0x", Hex(op), "): ", st.message()));
      if (done_) break;
    }
    if (stack_.size() != 1) return Error("malformed pickle: stack not a single value at STOP");
    return stack_.back();
  }

 private:
  absl::Status Error(const std::string& what) const {
    return absl::DataLossError(absl::StrCat(source_, ": ", what));
  }
  static std::string Hex(uint8_t b) {
    static const char* k = "0123456789abcdef";
    return {k[b >> 4], k[b & 15]};
  }

  absl::Status Need(size_t n) {
    if (pos_ + n > data_.size()) return absl::DataLossError("truncated pickle");
    return absl::OkStatus();
  }
  absl::Status Byte(uint8_t* out) {
    RETURN_IF_ERROR(Need(1));
    *out = static_cast<uint8_t>(data_[pos_++]);
    return absl::OkStatus();
  }
  template <class T>
  absl::Status LittleEndian(T* out) {  // x86/ARM hosts: little-endian
    RETURN_IF_ERROR(Need(sizeof(T)));
    std::memcpy(out, data_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }
  absl::Status Bytes(size_t n, std::string* out) {
    RETURN_IF_ERROR(Need(n));
    out->assign(data_, pos_, n);
    pos_ += n;
    return absl::OkStatus();
  }
  absl::Status Line(std::string* out) {
    const size_t nl = data_.find('\n', pos_);
    if (nl == std::string::npos) return absl::DataLossError("truncated pickle (no newline)");
    out->assign(data_, pos_, nl - pos_);
    pos_ = nl + 1;
    return absl::OkStatus();
  }
  absl::StatusOr<PyValuePtr> Pop() {
    if (stack_.empty()) return absl::DataLossError("stack underflow");
    PyValuePtr v = stack_.back();
    stack_.pop_back();
    return v;
  }
  // Pops everything down to the last MARK.
  absl::StatusOr<std::vector<PyValuePtr>> PopToMark() {
    std::vector<PyValuePtr> out;
    while (!stack_.empty() && stack_.back()->kind != PyKind::kMark) {
      out.push_back(stack_.back());
      stack_.pop_back();
    }
    if (stack_.empty()) return absl::DataLossError("MARK not found");
    stack_.pop_back();
    std::reverse(out.begin(), out.end());
    return out;
  }
  void PushInt(int64_t v) {
    PyValuePtr p = MakePyValue(PyKind::kInt);
    p->i = v;
    stack_.push_back(p);
  }
  void PushString(std::string s) {
    PyValuePtr p = MakePyValue(PyKind::kString);
    p->s = std::move(s);
    stack_.push_back(p);
  }
  void PushTuple(std::vector<PyValuePtr> items) {
    PyValuePtr p = MakePyValue(PyKind::kTuple);
    p->items = std::move(items);
    stack_.push_back(p);
  }
  absl::Status PushGlobal(const std::string& module, const std::string& name) {
    PyValuePtr p = MakePyValue(PyKind::kGlobal);
    p->s = module + "." + name;
    stack_.push_back(p);
    return absl::OkStatus();
  }
  absl::Status Memoize(int64_t index) {
    if (stack_.empty()) return absl::DataLossError("memo of empty stack");
    memo_[index] = stack_.back();
    return absl::OkStatus();
  }
  absl::Status Get(int64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return absl::DataLossError(absl::StrCat("memo ", index, " unset"));
    stack_.push_back(it->second);
    return absl::OkStatus();
  }
  absl::Status SetItems(std::vector<PyValuePtr> kv) {
    ASSIGN_OR_RETURN(PyValuePtr dict, Pop());
    if (dict->kind != PyKind::kDict) return absl::DataLossError("SETITEM(S) on a non-dict");
    if (kv.size() % 2 != 0) return absl::DataLossError("odd SETITEMS");
    for (size_t i = 0; i < kv.size(); i += 2) {
      bool replaced = false;
      if (kv[i]->kind == PyKind::kString) {
        for (auto& e : dict->entries) {
          if (e.first->kind == PyKind::kString && e.first->s == kv[i]->s) {
            e.second = kv[i + 1];
            replaced = true;
          }
        }
      }
      if (!replaced) dict->entries.emplace_back(kv[i], kv[i + 1]);
    }
    stack_.push_back(dict);
    return absl::OkStatus();
  }
  absl::Status Append(std::vector<PyValuePtr> values) {
    ASSIGN_OR_RETURN(PyValuePtr list, Pop());
    if (list->kind != PyKind::kList) return absl::DataLossError("APPEND(S) on a non-list");
    for (auto& v : values) list->items.push_back(std::move(v));
    stack_.push_back(list);
    return absl::OkStatus();
  }

  static absl::StatusOr<std::vector<int64_t>> IntTuple(const PyValuePtr& v, const char* what) {
    if (v->kind != PyKind::kTuple && v->kind != PyKind::kList) {
      return absl::DataLossError(absl::StrCat(what, " is not a tuple"));
    }
    std::vector<int64_t> out;
    for (const auto& item : v->items) {
      if (item->kind != PyKind::kInt) return absl::DataLossError(absl::StrCat(what, " holds a non-integer"));
      out.push_back(item->i);
    }
    return out;
  }

  absl::StatusOr<PyValuePtr> Reduce(const PyValuePtr& callable, const PyValuePtr& args) {
    if (callable->kind != PyKind::kGlobal) return absl::DataLossError("REDUCE of a non-global");
    const std::string& name = callable->s;
    if (name == "collections.OrderedDict") {
      PyValuePtr d = MakePyValue(PyKind::kDict);
      return d;
    }
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
      if (args->items.size() < 4 || args->items[0]->kind != PyKind::kTensor || args->items[1]->kind != PyKind::kInt) {
        return absl::DataLossError(absl::StrCat(name, ": unexpected arguments"));
      }
      ASSIGN_OR_RETURN(std::vector<int64_t> size, IntTuple(args->items[2], "tensor size"));
      ASSIGN_OR_RETURN(std::vector<int64_t> stride, IntTuple(args->items[3], "tensor stride"));
      const torch::Tensor& storage = args->items[0]->tensor;
      int64_t extent = args->items[1]->i;
      for (size_t d = 0; d < size.size(); ++d) {
        if (size[d] == 0) { extent = 0; break; }
        extent += (size[d] - 1) * stride[d];
      }
      if (extent >= storage.numel() && storage.numel() > 0) {
        return absl::DataLossError(absl::StrCat("tensor view exceeds its storage (", storage.numel(), " elements)"));
      }
      PyValuePtr t = MakePyValue(PyKind::kTensor);
      t->tensor = storage.as_strided(size, stride, args->items[1]->i).clone();
      return t;
    }
    if (name == "torch.jit._pickle.restore_type_tag") {  // libtorch's pickle_save: (value, type)
      if (args->items.empty()) return absl::DataLossError(absl::StrCat(name, ": no arguments"));
      return args->items[0];
    }
    if (name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") {
      if (args->items.empty() || args->items[0]->kind != PyKind::kTensor) {
        return absl::DataLossError(absl::StrCat(name, ": unexpected arguments"));
      }
      return args->items[0];
    }
    return absl::UnimplementedError(absl::StrCat(
        "unsupported Python object '", name, "' (only tensors, dicts and plain values are read)"));
  }

  absl::StatusOr<PyValuePtr> PersistentLoad(const PyValuePtr& pid) {
    if (pid->kind != PyKind::kTuple || pid->items.size() < 5 || pid->items[0]->kind != PyKind::kString ||
        pid->items[0]->s != "storage") {
      return absl::DataLossError("unknown persistent id");
    }
    const PyValuePtr& type = pid->items[1];
    const PyValuePtr& key = pid->items[2];
    const PyValuePtr& numel = pid->items[4];
    if (type->kind != PyKind::kGlobal || key->kind != PyKind::kString || numel->kind != PyKind::kInt) {
      return absl::DataLossError("malformed storage persistent id");
    }
    auto it = storages_.find(key->s);
    if (it == storages_.end()) {
      auto dtype = StorageDtypes().find(type->s);
      if (dtype == StorageDtypes().end()) {
        return absl::UnimplementedError(absl::StrCat("unsupported storage type ", type->s));
      }
      ASSIGN_OR_RETURN(torch::Tensor storage, loader_(key->s, dtype->second, numel->i));
      it = storages_.emplace(key->s, storage).first;
    }
    PyValuePtr t = MakePyValue(PyKind::kTensor);
    t->tensor = it->second;
    return t;
  }

  absl::Status Step(uint8_t op) {
    switch (op) {
      case 0x80: { uint8_t v; return Byte(&v); }                        // PROTO
      case 0x95: { uint64_t n; return LittleEndian(&n); }               // FRAME
      case '.': done_ = true; return absl::OkStatus();                  // STOP
      case '(': stack_.push_back(MakePyValue(PyKind::kMark)); return absl::OkStatus();
      case '}': stack_.push_back(MakePyValue(PyKind::kDict)); return absl::OkStatus();
      case ']': stack_.push_back(MakePyValue(PyKind::kList)); return absl::OkStatus();
      case ')': PushTuple({}); return absl::OkStatus();
      case 'N': stack_.push_back(MakePyValue(PyKind::kNone)); return absl::OkStatus();
      case 0x88: case 0x89: {                                           // NEWTRUE / NEWFALSE
        PyValuePtr b = MakePyValue(PyKind::kBool);
        b->i = op == 0x88;
        stack_.push_back(b);
        return absl::OkStatus();
      }
      case 'K': { uint8_t v; RETURN_IF_ERROR(Byte(&v)); PushInt(v); return absl::OkStatus(); }
      case 'M': { uint16_t v; RETURN_IF_ERROR(LittleEndian(&v)); PushInt(v); return absl::OkStatus(); }
      case 'J': { int32_t v; RETURN_IF_ERROR(LittleEndian(&v)); PushInt(v); return absl::OkStatus(); }
      case 0x8a: {                                                      // LONG1
        uint8_t n;
        RETURN_IF_ERROR(Byte(&n));
        std::string b;
        RETURN_IF_ERROR(Bytes(n, &b));
        if (n > 8) return absl::DataLossError("integer wider than 64 bits");
        int64_t v = 0;
        for (int k = n - 1; k >= 0; --k) v = (v << 8) | static_cast<uint8_t>(b[k]);
        if (n > 0 && n < 8 && (static_cast<uint8_t>(b[n - 1]) & 0x80)) v -= int64_t{1} << (8 * n);
        PushInt(v);
        return absl::OkStatus();
      }
      case 'G': {                                                       // BINFLOAT (big-endian)
        std::string b;
        RETURN_IF_ERROR(Bytes(8, &b));
        uint64_t bits = 0;
        for (char c : b) bits = (bits << 8) | static_cast<uint8_t>(c);
        PyValuePtr f = MakePyValue(PyKind::kFloat);
        std::memcpy(&f->f, &bits, 8);
        stack_.push_back(f);
        return absl::OkStatus();
      }
      case 'X': case 'T': {                                             // BINUNICODE / BINSTRING
        uint32_t n; RETURN_IF_ERROR(LittleEndian(&n));
        std::string s; RETURN_IF_ERROR(Bytes(n, &s)); PushString(std::move(s));
        return absl::OkStatus();
      }
      case 0x8c: case 'U': {                                            // SHORT_BINUNICODE / SHORT_BINSTRING
        uint8_t n; RETURN_IF_ERROR(Byte(&n));
        std::string s; RETURN_IF_ERROR(Bytes(n, &s)); PushString(std::move(s));
        return absl::OkStatus();
      }
      case 0x8d: {                                                      // BINUNICODE8
        uint64_t n; RETURN_IF_ERROR(LittleEndian(&n));
        std::string s; RETURN_IF_ERROR(Bytes(n, &s)); PushString(std::move(s));
        return absl::OkStatus();
      }
      case 'q': { uint8_t i; RETURN_IF_ERROR(Byte(&i)); return Memoize(i); }        // BINPUT
      case 'r': { uint32_t i; RETURN_IF_ERROR(LittleEndian(&i)); return Memoize(i); }  // LONG_BINPUT
      case 0x94: return Memoize(static_cast<int64_t>(memo_.size()));                 // MEMOIZE
      case 'h': { uint8_t i; RETURN_IF_ERROR(Byte(&i)); return Get(i); }            // BINGET
      case 'j': { uint32_t i; RETURN_IF_ERROR(LittleEndian(&i)); return Get(i); }   // LONG_BINGET
      case 't': { ASSIGN_OR_RETURN(auto items, PopToMark()); PushTuple(std::move(items)); return absl::OkStatus(); }
      case 0x85: case 0x86: case 0x87: {                                // TUPLE1..3
        const size_t n = op - 0x84;
        if (stack_.size() < n) return absl::DataLossError("stack underflow");
        std::vector<PyValuePtr> items(stack_.end() - n, stack_.end());
        stack_.resize(stack_.size() - n);
        PushTuple(std::move(items));
        return absl::OkStatus();
      }
      case 'c': {                                                       // GLOBAL
        std::string module, name;
        RETURN_IF_ERROR(Line(&module));
        RETURN_IF_ERROR(Line(&name));
        return PushGlobal(module, name);
      }
      case 0x93: {                                                      // STACK_GLOBAL
        ASSIGN_OR_RETURN(PyValuePtr name, Pop());
        ASSIGN_OR_RETURN(PyValuePtr module, Pop());
        return PushGlobal(module->s, name->s);
      }
      case 'R': case 0x81: {                                            // REDUCE / NEWOBJ
        ASSIGN_OR_RETURN(PyValuePtr args, Pop());
        ASSIGN_OR_RETURN(PyValuePtr callable, Pop());
        ASSIGN_OR_RETURN(PyValuePtr result, Reduce(callable, args));
        stack_.push_back(result);
        return absl::OkStatus();
      }
      case 'b': {                                                       // BUILD: state is ignored
        ASSIGN_OR_RETURN(PyValuePtr state, Pop());
        (void)state;  // OrderedDict's __dict__ ({"_metadata": ...}); tensors' hooks
        if (stack_.empty()) return absl::DataLossError("BUILD on empty stack");
        return absl::OkStatus();
      }
      case 'Q': {                                                       // BINPERSID
        ASSIGN_OR_RETURN(PyValuePtr pid, Pop());
        ASSIGN_OR_RETURN(PyValuePtr storage, PersistentLoad(pid));
        stack_.push_back(storage);
        return absl::OkStatus();
      }
      case 's': {                                                       // SETITEM
        ASSIGN_OR_RETURN(PyValuePtr value, Pop());
        ASSIGN_OR_RETURN(PyValuePtr key, Pop());
        return SetItems({key, value});
      }
      case 'u': { ASSIGN_OR_RETURN(auto kv, PopToMark()); return SetItems(std::move(kv)); }
      case 'a': { ASSIGN_OR_RETURN(PyValuePtr v, Pop()); return Append({v}); }
      case 'e': { ASSIGN_OR_RETURN(auto vs, PopToMark()); return Append(std::move(vs)); }
      default:
        return absl::UnimplementedError("unsupported pickle opcode");
    }
  }

  const std::string& data_;
  const StorageLoader& loader_;
  const std::string& source_;
  size_t pos_ = 0;
  bool done_ = false;
  std::vector<PyValuePtr> stack_;
  std::unordered_map<int64_t, PyValuePtr> memo_;
  std::map<std::string, torch::Tensor> storages_;
};

}  // namespace

PyValuePtr MakePyValue(PyValue::Kind kind) {
  auto v = std::make_shared<PyValue>();
  v->kind = kind;
  return v;
}

absl::StatusOr<PyValuePtr> Unpickle(const std::string& data, const StorageLoader& load_storage,
                                    const std::string& source) {
  Machine m(data, load_storage, source);
  return m.Run();
}

}  // namespace retina::trainer
