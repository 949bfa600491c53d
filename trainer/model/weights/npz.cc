#include "trainer/model/weights/npz.h"

#include <zip.h>

#include <cstring>
#include <memory>
#include <regex>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace retina::trainer {
namespace {

struct ZipCloser {
  void operator()(zip_t* z) const { zip_discard(z); }  // read-only: discard == close
};
struct ZipFileCloser {
  void operator()(zip_file_t* f) const { zip_fclose(f); }
};

absl::StatusOr<torch::ScalarType> DtypeOf(const std::string& descr, const std::string& source) {
  if (descr == "<f4") return torch::kFloat;
  if (descr == "<f8") return torch::kDouble;
  if (descr == "<i4") return torch::kInt;
  if (descr == "<i8") return torch::kLong;
  if (descr == "|u1") return torch::kByte;
  if (descr == "|b1") return torch::kBool;
  return absl::UnimplementedError(absl::StrCat(source, ": unsupported dtype '", descr, "'"));
}

}  // namespace

absl::StatusOr<torch::Tensor> ParseNpy(const std::string& bytes, const std::string& source) {
  auto bad = [&](const std::string& what) { return absl::DataLossError(absl::StrCat(source, ": ", what)); };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) return bad("not a .npy array (bad magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return bad("truncated header");
    uint32_t n;
    std::memcpy(&n, bytes.data() + 8, 4);
    header_len = n;
    offset = 12;
  } else {
    return bad(absl::StrCat("unsupported .npy version ", major));
  }
  if (offset + header_len > bytes.size()) return bad("truncated header");
  const std::string header = bytes.substr(offset, header_len);
  std::smatch m;
  static const std::regex kDescr("'descr':\\s*'([^']+)'");
  static const std::regex kOrder("'fortran_order':\\s*(True|False)");
  static const std::regex kShape("'shape':\\s*\\(([^)]*)\\)");
  std::string descr, order, shape_text;
  if (std::regex_search(header, m, kDescr)) descr = m[1];
  if (std::regex_search(header, m, kOrder)) order = m[1];
  if (std::regex_search(header, m, kShape)) shape_text = m[1];
  if (descr.empty() || order.empty()) return bad(absl::StrCat("unparseable header: ", header));
  std::vector<int64_t> shape;
  for (absl::string_view part : absl::StrSplit(shape_text, ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &d) || d < 0) return bad("bad shape in header");
    shape.push_back(d);
  }
  absl::StatusOr<torch::ScalarType> dtype = DtypeOf(descr, source);
  if (!dtype.ok()) return dtype.status();
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t data_offset = offset + header_len;
  const size_t want = static_cast<size_t>(numel) * c10::elementSize(*dtype);
  if (bytes.size() - data_offset < want) {
    return bad(absl::StrCat("data truncated: ", bytes.size() - data_offset, " bytes, need ", want));
  }
  const bool fortran = order == "True";
  std::vector<int64_t> storage_shape = shape;
  if (fortran) std::reverse(storage_shape.begin(), storage_shape.end());
  torch::Tensor t = torch::empty(storage_shape, torch::TensorOptions().dtype(*dtype));
  std::memcpy(t.data_ptr(), bytes.data() + data_offset, want);
  if (fortran && t.dim() > 1) {
    std::vector<int64_t> perm(t.dim());
    for (int64_t i = 0; i < t.dim(); ++i) perm[i] = t.dim() - 1 - i;
    t = t.permute(perm).contiguous();
  }
  return t;
}

absl::StatusOr<std::map<std::string, torch::Tensor>> ReadNpz(const std::filesystem::path& path) {
  const std::string source = path.string();
  int err = 0;
  std::unique_ptr<zip_t, ZipCloser> archive(zip_open(source.c_str(), ZIP_RDONLY, &err));
  if (!archive) {
    zip_error_t error;
    zip_error_init_with_code(&error, err);
    const std::string msg = zip_error_strerror(&error);
    zip_error_fini(&error);
    if (err == ZIP_ER_NOENT) return absl::NotFoundError(absl::StrCat(source, ": ", msg));
    return absl::DataLossError(absl::StrCat(source, ": not a readable .npz (zip) archive: ", msg));
  }
  std::map<std::string, torch::Tensor> out;
  const zip_int64_t n = zip_get_num_entries(archive.get(), 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    zip_stat_t st;
    if (zip_stat_index(archive.get(), i, 0, &st) != 0) {
      return absl::DataLossError(absl::StrCat(source, ": entry ", i, " unreadable"));
    }
    std::string name = st.name;
    const std::string where = absl::StrCat(source, ":", name);
    std::unique_ptr<zip_file_t, ZipFileCloser> file(zip_fopen_index(archive.get(), i, 0));
    if (!file) return absl::DataLossError(absl::StrCat(where, ": cannot open entry"));
    std::string bytes(st.size, '\0');
    zip_int64_t got = 0;
    while (got < static_cast<zip_int64_t>(st.size)) {
      const zip_int64_t r = zip_fread(file.get(), bytes.data() + got, st.size - got);
      if (r <= 0) return absl::DataLossError(absl::StrCat(where, ": read failed (damaged archive?)"));
      got += r;
    }
    absl::StatusOr<torch::Tensor> t = ParseNpy(bytes, where);
    if (!t.ok()) return t.status();
    if (absl::EndsWith(name, ".npy")) name.resize(name.size() - 4);
    out[name] = *t;
  }
  return out;
}

}  // namespace retina::trainer
