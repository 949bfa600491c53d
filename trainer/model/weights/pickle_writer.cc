#include "trainer/model/weights/pickle_writer.h"

#include <caffe2/serialize/inline_container.h>

#include <cstring>

namespace retina::trainer {
namespace {

const char* StorageClass(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return "FloatStorage";
    case torch::kDouble: return "DoubleStorage";
    case torch::kHalf: return "HalfStorage";
    case torch::kBFloat16: return "BFloat16Storage";
    case torch::kLong: return "LongStorage";
    case torch::kInt: return "IntStorage";
    case torch::kShort: return "ShortStorage";
    case torch::kChar: return "CharStorage";
    case torch::kByte: return "ByteStorage";
    case torch::kBool: return "BoolStorage";
    default: TORCH_CHECK(false, "torch.save writer: unsupported dtype ", c10::toString(t));
  }
}

// Emits the pickle program; collects the storages it references.
class Pickler {
 public:
  void Dump(const PyValue& root) {
    out_ += "\x80\x02";  // PROTO 2
    Value(root);
    out_ += '.';  // STOP
  }
  const std::string& bytes() const { return out_; }
  const std::vector<torch::Tensor>& storages() const { return storages_; }

 private:
  void Global(const char* module, const char* name) {
    out_ += 'c';
    out_ += module;
    out_ += '\n';
    out_ += name;
    out_ += '\n';
  }
  void Int(int64_t v) {
    if (v >= 0 && v < 256) {
      out_ += 'K';  // BININT1
      out_ += static_cast<char>(v);
    } else if (v >= 0 && v < 65536) {
      out_ += 'M';  // BININT2
      out_ += static_cast<char>(v & 0xff);
      out_ += static_cast<char>(v >> 8);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      out_ += 'J';  // BININT, signed little-endian
      const auto u = static_cast<uint32_t>(static_cast<int32_t>(v));
      for (int k = 0; k < 4; ++k) out_ += static_cast<char>((u >> (8 * k)) & 0xff);
    } else {
      out_ += '\x8a';  // LONG1: 8 bytes two's complement, little-endian
      out_ += static_cast<char>(8);
      const auto u = static_cast<uint64_t>(v);
      for (int k = 0; k < 8; ++k) out_ += static_cast<char>((u >> (8 * k)) & 0xff);
    }
  }
  void String(const std::string& s) {
    out_ += 'X';  // BINUNICODE
    const auto n = static_cast<uint32_t>(s.size());
    for (int k = 0; k < 4; ++k) out_ += static_cast<char>((n >> (8 * k)) & 0xff);
    out_ += s;
  }
  void IntTuple(c10::IntArrayRef v) {
    if (v.empty()) {
      out_ += ')';
      return;
    }
    out_ += '(';
    for (int64_t x : v) Int(x);
    out_ += 't';
  }
  void Tensor(const torch::Tensor& tensor) {
    const torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    const std::string key = std::to_string(storages_.size());
    storages_.push_back(t);
    Global("torch._utils", "_rebuild_tensor_v2");
    out_ += '(';
    out_ += '(';  // persistent id: ('storage', class, key, location, numel)
    String("storage");
    Global("torch", StorageClass(t.scalar_type()));
    String(key);
    String("cpu");
    Int(t.numel());
    out_ += 't';
    out_ += 'Q';  // BINPERSID
    Int(0);       // storage offset
    IntTuple(t.sizes());
    IntTuple(t.strides());
    out_ += '\x89';  // requires_grad False
    Global("collections", "OrderedDict");  // backward hooks: OrderedDict()
    out_ += ')';
    out_ += 'R';
    out_ += 't';
    out_ += 'R';
  }
  void Value(const PyValue& v) {
    using Kind = PyValue::Kind;
    switch (v.kind) {
      case Kind::kNone: out_ += 'N'; return;
      case Kind::kBool: out_ += v.i ? '\x88' : '\x89'; return;
      case Kind::kInt: Int(v.i); return;
      case Kind::kFloat: {
        out_ += 'G';  // BINFLOAT, big-endian IEEE double
        uint64_t u;
        std::memcpy(&u, &v.f, sizeof(u));
        for (int k = 7; k >= 0; --k) out_ += static_cast<char>((u >> (8 * k)) & 0xff);
        return;
      }
      case Kind::kString: String(v.s); return;
      case Kind::kTensor: Tensor(v.tensor); return;
      case Kind::kTuple:
        out_ += '(';
        for (const PyValuePtr& item : v.items) Value(*item);
        out_ += 't';
        return;
      case Kind::kList:
        out_ += ']';
        if (v.items.empty()) return;
        out_ += '(';
        for (const PyValuePtr& item : v.items) Value(*item);
        out_ += 'e';  // APPENDS
        return;
      case Kind::kDict:
        out_ += '}';
        if (v.entries.empty()) return;
        out_ += '(';
        for (const auto& [key, value] : v.entries) {
          Value(*key);
          Value(*value);
        }
        out_ += 'u';  // SETITEMS
        return;
      default: TORCH_CHECK(false, "torch.save writer: a global or mark is not a value");
    }
  }

  std::string out_;
  std::vector<torch::Tensor> storages_;
};

}  // namespace

PyValuePtr PyNone() { return MakePyValue(PyValue::Kind::kNone); }
PyValuePtr PyBool(bool b) {
  PyValuePtr v = MakePyValue(PyValue::Kind::kBool);
  v->i = b ? 1 : 0;
  return v;
}
PyValuePtr PyInt(int64_t i) {
  PyValuePtr v = MakePyValue(PyValue::Kind::kInt);
  v->i = i;
  return v;
}
PyValuePtr PyFloat(double f) {
  PyValuePtr v = MakePyValue(PyValue::Kind::kFloat);
  v->f = f;
  return v;
}
PyValuePtr PyString(std::string s) {
  PyValuePtr v = MakePyValue(PyValue::Kind::kString);
  v->s = std::move(s);
  return v;
}
PyValuePtr PyTensor(torch::Tensor t) {
  PyValuePtr v = MakePyValue(PyValue::Kind::kTensor);
  v->tensor = std::move(t);
  return v;
}
PyValuePtr PyList(std::vector<PyValuePtr> items) {
  PyValuePtr v = MakePyValue(PyValue::Kind::kList);
  v->items = std::move(items);
  return v;
}
PyValuePtr PyDict(std::vector<std::pair<PyValuePtr, PyValuePtr>> entries) {
  PyValuePtr v = MakePyValue(PyValue::Kind::kDict);
  v->entries = std::move(entries);
  return v;
}

std::vector<char> TorchSaveBytes(const PyValue& root) {
  Pickler p;
  p.Dump(root);
  std::vector<char> out;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t size) {
    const char* c = static_cast<const char*>(data);
    out.insert(out.end(), c, c + size);
    return size;
  });
  writer.writeRecord("data.pkl", p.bytes().data(), p.bytes().size());
  static const char kByteOrder[] = "little";
  writer.writeRecord("byteorder", kByteOrder, std::strlen(kByteOrder));
  for (size_t k = 0; k < p.storages().size(); ++k) {
    const torch::Tensor& t = p.storages()[k];
    writer.writeRecord("data/" + std::to_string(k), t.data_ptr(), t.numel() * t.element_size());
  }
  writer.writeEndOfFile();
  return out;
}

}  // namespace retina::trainer
