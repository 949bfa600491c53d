#include "trainer/model/weights/state_dict.h"

#include <caffe2/serialize/inline_container.h>
#include <zip.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/model/weights/pickle_reader.h"
#include "trainer/model/weights/pickle_writer.h"

namespace retina::trainer {
namespace {

constexpr char kDdpPrefix[] = "module.";
constexpr size_t kMaxListed = 20;  // names listed per category in an error

std::string ListSome(const std::vector<std::string>& names) {
  std::vector<std::string> head(names.begin(),
                                names.begin() + std::min(names.size(), kMaxListed));
  std::string out = absl::StrJoin(head, ", ");
  if (names.size() > kMaxListed) absl::StrAppend(&out, ", ... (", names.size(), " in all)");
  return out;
}

}  // namespace

std::string ShapeString(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

StateDict GetStateDict(const torch::nn::Module& module) {
  StateDict out;
  for (const auto& item : module.named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    const std::string prefix = item.key().empty() ? "" : item.key() + ".";
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) {
      if (p.value().defined()) out.emplace_back(prefix + p.key(), p.value());
    }
    for (const auto& b : item.value()->named_buffers(/*recurse=*/false)) {
      if (b.value().defined()) out.emplace_back(prefix + b.key(), b.value());
    }
  }
  return out;
}

absl::StatusOr<LoadReport> LoadStateDict(torch::nn::Module& module, StateDict dict,
                                         const LoadOptions& options) {
  // Strip DDP's "module." when every key carries it.
  const bool ddp = !dict.empty() && std::all_of(dict.begin(), dict.end(), [](const auto& kv) {
    return absl::StartsWith(kv.first, kDdpPrefix);
  });
  auto dropped = [&](const std::string& name) {
    return std::any_of(options.drop_containing.begin(), options.drop_containing.end(),
                       [&](const std::string& d) { return absl::StrContains(name, d); });
  };
  LoadReport report;
  std::map<std::string, torch::Tensor> file;
  for (auto& [name, tensor] : dict) {
    std::string key = ddp ? name.substr(std::strlen(kDdpPrefix)) : name;
    if (dropped(key)) {
      report.dropped.push_back(key);
      continue;
    }
    file[key] = tensor;
  }
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
  std::map<std::string, bool> used;
  for (const auto& [name, target] : GetStateDict(module)) {
    if (dropped(name)) continue;
    auto it = file.find(name);
    if (it == file.end()) {
      report.missing.push_back(name);
      continue;
    }
    used[name] = true;
    if (it->second.sizes() != target.sizes()) {
      report.mismatched.push_back(absl::StrCat(name, ": file ", ShapeString(it->second), " vs model ",
                                               ShapeString(target)));
      continue;
    }
    copies.emplace_back(target, it->second);
    report.loaded.push_back(name);
  }
  for (const auto& [name, tensor] : file) {
    if (!used.count(name)) report.unexpected.push_back(name);
  }
  const bool clean = report.missing.empty() && report.unexpected.empty() && report.mismatched.empty();
  if (options.strict && !clean) {
    std::string msg = "state dict does not match the model (strict):";
    if (!report.missing.empty()) absl::StrAppend(&msg, "\n  missing ", report.missing.size(), ": ", ListSome(report.missing));
    if (!report.unexpected.empty()) absl::StrAppend(&msg, "\n  unexpected ", report.unexpected.size(), ": ", ListSome(report.unexpected));
    if (!report.mismatched.empty()) absl::StrAppend(&msg, "\n  shape mismatch ", report.mismatched.size(), ": ", ListSome(report.mismatched));
    return absl::FailedPreconditionError(msg);
  }
  torch::NoGradGuard no_grad;
  for (auto& [target, source] : copies) target.copy_(source);
  return report;
}

std::vector<char> SerializeStateDict(const StateDict& dict) {
  std::vector<std::pair<PyValuePtr, PyValuePtr>> entries;
  entries.reserve(dict.size());
  for (const auto& [name, tensor] : dict) entries.emplace_back(PyString(name), PyTensor(tensor));
  return TorchSaveBytes(*PyDict(std::move(entries)));
}

absl::Status SaveStateDictFile(const StateDict& dict, const std::filesystem::path& path) {
  const std::vector<char> bytes = SerializeStateDict(dict);
  return WriteFileAtomic(path, absl::string_view(bytes.data(), bytes.size()));
}

namespace {

// The CRC-32 that the archive's central directory records for each entry, by
// its name below the archive's top folder ("data.pkl", "data/0"): libtorch's
// reader (miniz built without CRC checks) returns a record's bytes unchecked.
absl::StatusOr<std::map<std::string, uint32_t>> ZipEntryCrcs(const std::string& source) {
  int err = 0;
  std::unique_ptr<zip_t, void (*)(zip_t*)> archive(zip_open(source.c_str(), ZIP_RDONLY, &err),
                                                   [](zip_t* z) { zip_discard(z); });
  if (!archive) {
    zip_error_t error;
    zip_error_init_with_code(&error, err);
    const std::string why = zip_error_strerror(&error);
    zip_error_fini(&error);
    return absl::DataLossError(absl::StrCat(source, ": not a readable zip archive: ", why));
  }
  std::map<std::string, uint32_t> crcs;
  const zip_int64_t n = zip_get_num_entries(archive.get(), 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(archive.get(), static_cast<zip_uint64_t>(i), 0, &st) != 0 ||
        (st.valid & ZIP_STAT_NAME) == 0 || (st.valid & ZIP_STAT_CRC) == 0) {
      continue;
    }
    const std::string name = st.name;
    const size_t slash = name.find('/');
    crcs[slash == std::string::npos ? name : name.substr(slash + 1)] = st.crc;
  }
  return crcs;
}

// OK when `record`'s bytes have the CRC-32 the archive recorded for it.
absl::Status CheckRecordCrc(const std::map<std::string, uint32_t>& crcs, const std::string& record, const void* data,
                            size_t size) {
  const auto it = crcs.find(record);
  if (it == crcs.end()) return absl::DataLossError(absl::StrCat("record ", record, " has no CRC-32 in the archive"));
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* bytes = static_cast<const Bytef*>(data);
  for (size_t done = 0; done < size;) {  // crc32 takes a uInt length
    const size_t chunk = std::min<size_t>(size - done, 1u << 30);
    crc = crc32(crc, bytes + done, static_cast<uInt>(chunk));
    done += chunk;
  }
  if (static_cast<uint32_t>(crc) == it->second) return absl::OkStatus();
  return absl::DataLossError(absl::StrFormat("record %s: CRC-32 %08x, the archive recorded %08x (the file is damaged)",
                                             record, static_cast<uint32_t>(crc), it->second));
}

}  // namespace

absl::StatusOr<PyValuePtr> ReadTorchSaveFile(const std::filesystem::path& path) {
  const std::string source = path.string();
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  std::string pickle;
  std::map<std::string, uint32_t> crcs;
  try {
    if (!std::filesystem::exists(path)) return absl::NotFoundError(absl::StrCat(source, ": no such file"));
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(source);
    if (!reader->hasRecord("data.pkl")) {
      return absl::DataLossError(absl::StrCat(source, ": zip archive without data.pkl (not a torch.save file)"));
    }
    ASSIGN_OR_RETURN(crcs, ZipEntryCrcs(source));
    auto [ptr, size] = reader->getRecord("data.pkl");
    if (absl::Status crc = CheckRecordCrc(crcs, "data.pkl", ptr.get(), size); !crc.ok()) {
      return absl::DataLossError(absl::StrCat(source, ": ", crc.message()));
    }
    pickle.assign(static_cast<const char*>(ptr.get()), size);
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat(
        source, ": not a readable torch.save zip archive (files saved with "
                "_use_new_zipfile_serialization=False are not supported): ",
        e.what_without_backtrace()));
  }
  StorageLoader loader = [&](const std::string& key, torch::ScalarType dtype,
                             int64_t numel) -> absl::StatusOr<torch::Tensor> {
    const std::string record = "data/" + key;
    try {
      if (!reader->hasRecord(record)) return absl::DataLossError(absl::StrCat("missing record ", record));
      auto [ptr, size] = reader->getRecord(record);
      RETURN_IF_ERROR(CheckRecordCrc(crcs, record, ptr.get(), size));
      const size_t want = static_cast<size_t>(numel) * c10::elementSize(dtype);
      if (size < want) {
        return absl::DataLossError(absl::StrCat("record ", record, " holds ", size, " bytes, need ", want));
      }
      torch::Tensor t = torch::empty({numel}, torch::TensorOptions().dtype(dtype));
      std::memcpy(t.data_ptr(), ptr.get(), want);
      return t;
    } catch (const c10::Error& e) {
      return absl::DataLossError(absl::StrCat("record ", record, ": ", e.what_without_backtrace()));
    }
  };
  return Unpickle(pickle, loader, source);
}

absl::StatusOr<StateDict> ReadStateDictFile(const std::filesystem::path& path) {
  const std::string source = path.string();
  ASSIGN_OR_RETURN(PyValuePtr root, ReadTorchSaveFile(path));

  auto is_tensor_dict = [](const PyValuePtr& v) {
    return v->kind == PyValue::Kind::kDict && !v->entries.empty() &&
           std::all_of(v->entries.begin(), v->entries.end(), [](const auto& e) {
             return e.first->kind == PyValue::Kind::kString && e.second->kind == PyValue::Kind::kTensor;
           });
  };
  PyValuePtr dict = root;
  if (!is_tensor_dict(dict) && dict->kind == PyValue::Kind::kDict) {
    for (const auto& [key, value] : root->entries) {
      if (key->kind == PyValue::Kind::kString && (key->s == "state_dict" || key->s == "model") &&
          is_tensor_dict(value)) {
        dict = value;
      }
    }
  }
  if (!is_tensor_dict(dict)) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": not a state dict (expected a dict of name -> tensor, or one under 'state_dict'/'model')"));
  }
  StateDict out;
  for (const auto& [key, value] : dict->entries) out.emplace_back(key->s, value->tensor);
  return out;
}

}  // namespace retina::trainer
