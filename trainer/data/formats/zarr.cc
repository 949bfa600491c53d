#include "trainer/data/formats/zarr.h"

#include <blosc.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/data/formats/format_util.h"
#include "common/read_scope.h"

namespace retina::trainer {
namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

constexpr const char* kZarray = ".zarray";
constexpr const char* kZattrs = ".zattrs";
constexpr const char* kZgroup = ".zgroup";

std::string DTypeString(const ZarrArrayMeta& m) {
  if (m.half) return "<f2";
  switch (m.dtype) {
    case DType::kUInt8: return "|u1";
    case DType::kFloat32: return "<f4";
    default: return "";
  }
}

std::string ChunkKey(const std::vector<int64_t>& index) { return absl::StrJoin(index, "/"); }

absl::StatusOr<std::string> Compress(const ZarrArrayMeta& m, const std::string& raw, const fs::path& where) {
  if (m.compressor == ZarrCompressor::kNone) return raw;
  std::string out;
  if (m.compressor == ZarrCompressor::kZlib) {
    uLongf n = compressBound(raw.size());
    out.resize(n);
    if (compress2(reinterpret_cast<Bytef*>(out.data()), &n, reinterpret_cast<const Bytef*>(raw.data()), raw.size(),
                  m.level) != Z_OK) {
      return absl::InternalError(absl::StrCat(where.string(), ": zlib compression failed"));
    }
    out.resize(n);
    return out;
  }
  out.resize(raw.size() + BLOSC_MAX_OVERHEAD);
  const int n = blosc_compress_ctx(m.level, BLOSC_SHUFFLE, m.item_size(), raw.size(), raw.data(), out.data(),
                                   out.size(), "lz4", 0, 1);
  if (n <= 0) return absl::InternalError(absl::StrCat(where.string(), ": blosc compression failed"));
  out.resize(static_cast<size_t>(n));
  return out;
}

absl::Status Decompress(const ZarrArrayMeta& m, const std::string& stored, std::string* raw, const fs::path& file) {
  const size_t want = raw->size();
  const auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat(file.string(), ": ", why, " (a truncated or damaged chunk)"));
  };
  if (m.compressor == ZarrCompressor::kNone) {
    if (stored.size() != want) return bad(absl::StrCat(stored.size(), " bytes, expected ", want));
    *raw = stored;
    return absl::OkStatus();
  }
  if (m.compressor == ZarrCompressor::kZlib) {
    uLongf n = want;
    const int rc = uncompress(reinterpret_cast<Bytef*>(raw->data()), &n, reinterpret_cast<const Bytef*>(stored.data()),
                              stored.size());
    if (rc != Z_OK || n != want) return bad("zlib stream does not decompress to the chunk's size");
    return absl::OkStatus();
  }
  size_t nbytes = 0, cbytes = 0, blocksize = 0;
  if (stored.size() < BLOSC_MIN_HEADER_LENGTH) return bad("shorter than a blosc header");
  blosc_cbuffer_sizes(stored.data(), &nbytes, &cbytes, &blocksize);
  if (nbytes != want || cbytes != stored.size()) return bad("blosc header does not match the chunk's size");
  if (blosc_decompress_ctx(stored.data(), raw->data(), want, 1) != static_cast<int>(want)) {
    return bad("blosc stream does not decompress");
  }
  return absl::OkStatus();
}

// Calls f(chunk index) for every chunk of the grid overlapping [origin, origin + extent).
void ForEachChunk(const ZarrArrayMeta& m, const std::vector<int64_t>& origin, const std::vector<int64_t>& extent,
                  const std::function<void(const std::vector<int64_t>&)>& f) {
  const size_t rank = m.shape.size();
  std::vector<int64_t> lo(rank), hi(rank), idx(rank);
  for (size_t a = 0; a < rank; ++a) {
    lo[a] = origin[a] / m.chunks[a];
    hi[a] = (origin[a] + extent[a] + m.chunks[a] - 1) / m.chunks[a];
    if (hi[a] <= lo[a]) return;
  }
  idx = lo;
  while (true) {
    f(idx);
    size_t a = rank;
    while (a > 0) {
      --a;
      if (++idx[a] < hi[a]) break;
      idx[a] = lo[a];
      if (a == 0) return;
    }
  }
}

// Copies the overlap of a chunk (at `index`) and a region between their C-order
// buffers: to_chunk = region -> chunk, else chunk -> region.
void CopyOverlap(const ZarrArrayMeta& m, const std::vector<int64_t>& index, const std::vector<int64_t>& origin,
                 const std::vector<int64_t>& extent, char* chunk, char* region, bool to_chunk) {
  const size_t rank = m.shape.size(), item = m.item_size();
  std::vector<int64_t> a0(rank), a1(rank);  // overlap, array coordinates
  for (size_t a = 0; a < rank; ++a) {
    a0[a] = std::max(origin[a], index[a] * m.chunks[a]);
    a1[a] = std::min(origin[a] + extent[a], (index[a] + 1) * m.chunks[a]);
    if (a1[a] <= a0[a]) return;
  }
  const size_t row = static_cast<size_t>(a1[rank - 1] - a0[rank - 1]) * item;
  std::vector<int64_t> p = a0;  // iterates all but the last axis
  while (true) {
    int64_t co = 0, ro = 0;
    for (size_t a = 0; a < rank; ++a) {
      co = co * m.chunks[a] + (p[a] - index[a] * m.chunks[a]);
      ro = ro * extent[a] + (p[a] - origin[a]);
    }
    char* c = chunk + co * item;
    char* r = region + ro * item;
    if (to_chunk) std::memcpy(c, r, row);
    else std::memcpy(r, c, row);
    if (rank == 1) return;
    size_t a = rank - 1;
    while (a > 0) {
      --a;
      if (++p[a] < a1[a]) break;
      p[a] = a0[a];
      if (a == 0) return;
    }
  }
}

int64_t ChunkElements(const ZarrArrayMeta& m) {
  int64_t n = 1;
  for (int64_t c : m.chunks) n *= c;
  return n;
}

void FillChunk(const ZarrArrayMeta& m, std::string* raw) {
  if (m.fill_value == 0) {
    std::fill(raw->begin(), raw->end(), '\0');
    return;
  }
  const size_t item = m.item_size();
  for (size_t i = 0; i < raw->size(); i += item) {
    if (m.dtype == DType::kUInt8) (*raw)[i] = static_cast<char>(static_cast<uint8_t>(m.fill_value));
    else if (!m.half) {
      const float f = static_cast<float>(m.fill_value);
      std::memcpy(raw->data() + i, &f, sizeof f);
    } else {
      std::memset(raw->data() + i, 0, item);  // half fill values other than 0 are not written by us
    }
  }
}

absl::StatusOr<Json> ReadJsonFile(const fs::path& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    return absl::DataLossError(absl::StrCat(path.string(), ": not JSON: ", e.what()));
  }
}

}  // namespace

size_t ZarrArrayMeta::item_size() const { return half ? 2 : DTypeSize(dtype); }

absl::StatusOr<ZarrCompressor> ParseZarrCompressor(const std::string& name, const std::string& field) {
  if (name == "none") return ZarrCompressor::kNone;
  if (name == "zlib") return ZarrCompressor::kZlib;
  if (name == "blosc") return ZarrCompressor::kBlosc;
  return absl::InvalidArgumentError(absl::StrCat(field, ": '", name, "' is not one of none, zlib, blosc"));
}

absl::Status CreateZarrArray(const fs::path& dir, const ZarrArrayMeta& m) {
  if (m.shape.empty() || m.shape.size() != m.chunks.size() || DTypeString(m).empty()) {
    return absl::InvalidArgumentError(absl::StrCat(dir.string(), ": bad Zarr array metadata"));
  }
  Json compressor = nullptr;
  if (m.compressor == ZarrCompressor::kZlib) compressor = {{"id", "zlib"}, {"level", m.level}};
  if (m.compressor == ZarrCompressor::kBlosc) {
    compressor = {{"id", "blosc"}, {"cname", "lz4"}, {"clevel", m.level}, {"shuffle", 1}, {"blocksize", 0}};
  }
  const Json j = {{"zarr_format", 2},      {"shape", m.shape},  {"chunks", m.chunks},
                  {"dtype", DTypeString(m)}, {"compressor", compressor}, {"fill_value", m.fill_value},
                  {"order", "C"},          {"filters", nullptr}, {"dimension_separator", "/"}};
  RETURN_IF_ERROR(CreateDirectories(dir));
  return WriteFileAtomic(dir / kZarray, j.dump(2) + "\n");
}

absl::StatusOr<ZarrArrayMeta> ReadZarrArray(const fs::path& dir) {
  const fs::path file = dir / kZarray;
  RETURN_IF_ERROR(CheckRead(file.string(), file));
  ASSIGN_OR_RETURN(Json j, ReadJsonFile(file));
  const auto bad = [&](const std::string& why) { return absl::DataLossError(absl::StrCat(file.string(), ": ", why)); };
  ZarrArrayMeta m;
  try {
    if (j.at("zarr_format").get<int>() != 2) return bad("zarr_format is not 2");
    m.shape = j.at("shape").get<std::vector<int64_t>>();
    m.chunks = j.at("chunks").get<std::vector<int64_t>>();
    if (m.shape.empty() || m.shape.size() != m.chunks.size()) return bad("shape and chunks differ in rank");
    for (size_t a = 0; a < m.shape.size(); ++a) {
      if (m.shape[a] < 0 || m.chunks[a] < 1) return bad("negative shape or chunk");
    }
    const std::string dtype = j.at("dtype").get<std::string>();
    if (dtype == "|u1" || dtype == "<u1") m.dtype = DType::kUInt8;
    else if (dtype == "<f4") m.dtype = DType::kFloat32;
    else if (dtype == "<f2") m.half = true, m.dtype = DType::kFloat32;
    else return absl::UnimplementedError(absl::StrCat(file.string(), ": dtype ", dtype, " (read: |u1, <f4, <f2)"));
    if (j.value("order", "C") != "C") return absl::UnimplementedError(file.string() + ": Fortran order");
    if (j.contains("filters") && !j["filters"].is_null()) return absl::UnimplementedError(file.string() + ": filters");
    if (j.value("dimension_separator", ".") != "/" && j.value("dimension_separator", ".") != ".") {
      return bad("dimension_separator is neither '/' nor '.'");
    }
    const Json& c = j.at("compressor");
    if (c.is_null()) {
      m.compressor = ZarrCompressor::kNone;
    } else {
      const std::string id = c.at("id").get<std::string>();
      if (id == "zlib") m.compressor = ZarrCompressor::kZlib;
      else if (id == "blosc") m.compressor = ZarrCompressor::kBlosc;
      else return absl::UnimplementedError(absl::StrCat(file.string(), ": compressor ", id, " (read: zlib, blosc)"));
    }
    m.fill_value = j.at("fill_value").is_number() ? j.at("fill_value").get<double>() : 0.0;
  } catch (const Json::exception& e) {
    return bad(e.what());
  }
  // Sizes from the header, before anything is allocated from them: a chunk is
  // decompressed whole into memory, and the shape's voxel count must fit.
  int64_t chunk_bytes = static_cast<int64_t>(m.item_size()), voxels = 1;
  for (size_t a = 0; a < m.shape.size(); ++a) {
    if (__builtin_mul_overflow(chunk_bytes, m.chunks[a], &chunk_bytes) || chunk_bytes > kMaxZarrChunkBytes) {
      return bad(absl::StrCat("chunks [", absl::StrJoin(m.chunks, ", "), "] of ", m.item_size(),
                              "-byte values exceed the ", kMaxZarrChunkBytes >> 20, " MiB a chunk may hold"));
    }
    if (__builtin_mul_overflow(voxels, m.shape[a], &voxels)) {
      return bad(absl::StrCat("shape [", absl::StrJoin(m.shape, ", "), "] holds more than 2^63 values"));
    }
  }
  return m;
}

namespace {
// The chunk file of `index` (separator '/' as we write, '.' as zarr's default).
fs::path ChunkPath(const fs::path& dir, const std::vector<int64_t>& index) {
  const fs::path nested = dir / ChunkKey(index);
  std::error_code ec;
  if (index.size() > 1 && !fs::exists(nested, ec)) {
    const fs::path dotted = dir / absl::StrJoin(index, ".");
    if (fs::exists(dotted, ec)) return dotted;
  }
  return nested;
}
}  // namespace

absl::Status WriteZarrRegion(const fs::path& dir, const ZarrArrayMeta& m, const std::vector<int64_t>& origin,
                             const std::vector<int64_t>& extent, const void* data) {
  const size_t rank = m.shape.size();
  if (origin.size() != rank || extent.size() != rank) {
    return absl::InvalidArgumentError(dir.string() + ": region rank differs from the array's");
  }
  for (size_t a = 0; a < rank; ++a) {
    const int64_t end = origin[a] + extent[a];
    if (origin[a] % m.chunks[a] != 0 || (end % m.chunks[a] != 0 && end != m.shape[a]) || end > m.shape[a]) {
      return absl::InvalidArgumentError(absl::StrCat(dir.string(), ": region on axis ", a, " [", origin[a], ", ", end,
                                                     ") is not on the chunk grid (", m.chunks[a], ")"));
    }
  }
  std::string raw(static_cast<size_t>(ChunkElements(m)) * m.item_size(), '\0');
  absl::Status status;
  ForEachChunk(m, origin, extent, [&](const std::vector<int64_t>& index) {
    if (!status.ok()) return;
    FillChunk(m, &raw);
    CopyOverlap(m, index, origin, extent, raw.data(), static_cast<char*>(const_cast<void*>(data)), true);
    const fs::path file = dir / ChunkKey(index);
    absl::StatusOr<std::string> packed = Compress(m, raw, file);
    if (!packed.ok()) {
      status = packed.status();
      return;
    }
    status = CreateDirectories(file.parent_path());
    if (status.ok()) status = WriteFileAtomic(file, *packed);
  });
  return status;
}

absl::Status ReadZarrRegion(const fs::path& dir, const ZarrArrayMeta& m, const std::vector<int64_t>& origin,
                            const std::vector<int64_t>& extent, void* out) {
  const size_t rank = m.shape.size();
  if (origin.size() != rank || extent.size() != rank) {
    return absl::InvalidArgumentError(dir.string() + ": region rank differs from the array's");
  }
  for (size_t a = 0; a < rank; ++a) {
    if (origin[a] < 0 || extent[a] < 0 || origin[a] + extent[a] > m.shape[a]) {
      return absl::OutOfRangeError(absl::StrCat(dir.string(), ": region outside the array on axis ", a));
    }
  }
  std::string raw(static_cast<size_t>(ChunkElements(m)) * m.item_size(), '\0');
  absl::Status status;
  ForEachChunk(m, origin, extent, [&](const std::vector<int64_t>& index) {
    if (!status.ok()) return;
    const fs::path file = ChunkPath(dir, index);
    // A chunk may be a symlink: the file it resolves to is what is read.
    if (status = CheckRead(absl::StrCat(dir.string(), ": chunk ", file.filename().string()), file); !status.ok()) return;
    absl::StatusOr<std::string> stored = ReadFile(file);
    if (absl::IsNotFound(stored.status())) {
      FillChunk(m, &raw);
    } else if (!stored.ok()) {
      status = stored.status();
      return;
    } else {
      status = Decompress(m, *stored, &raw, file);
      if (!status.ok()) return;
    }
    CopyOverlap(m, index, origin, extent, raw.data(), static_cast<char*>(out), false);
  });
  return status;
}

// --- OME-Zarr ---------------------------------------------------------------

std::string NgffUnit(const std::string& unit) {
  static const std::map<std::string, std::string> kUnits = {
      {"nm", "nanometer"},     {"nanometer", "nanometer"},   {"um", "micrometer"},     {"µm", "micrometer"},
      {"\\u00B5m", "micrometer"}, {"micron", "micrometer"}, {"microns", "micrometer"}, {"micrometer", "micrometer"},
      {"mm", "millimeter"},    {"millimeter", "millimeter"}, {"a", "angstrom"},        {"å", "angstrom"},
      {"angstrom", "angstrom"}, {"pm", "picometer"},        {"picometer", "picometer"}, {"cm", "centimeter"},
      {"centimeter", "centimeter"}, {"m", "meter"},         {"meter", "meter"}};
  auto it = kUnits.find(Lower(unit));
  if (it == kUnits.end()) it = kUnits.find(unit);  // "µm" is not ASCII-lowered
  return it == kUnits.end() ? "" : it->second;
}

absl::Status WriteOmeZarrImage(const fs::path& dir, const OmeImage& image) {
  Json axes = Json::array();
  for (const OmeAxis& a : image.axes) {
    Json x = {{"name", a.name}, {"type", a.type}};
    if (!a.unit.empty()) x["unit"] = a.unit;
    axes.push_back(x);
  }
  Json datasets = Json::array();
  for (const OmeLevel& l : image.levels) {
    datasets.push_back({{"path", l.path},
                        {"coordinateTransformations", Json::array({{{"type", "scale"}, {"scale", l.scale}}})}});
  }
  Json multiscale = {{"version", "0.4"}, {"name", image.name}, {"axes", axes}, {"datasets", datasets}};
  if (!image.type.empty()) multiscale["type"] = image.type;
  multiscale["metadata"] = {{"method", image.type.empty() ? "none" : image.type}, {"written_by", "retina"}};
  Json attrs = {{"multiscales", Json::array({multiscale})}};
  if (image.label) attrs["image-label"] = {{"version", "0.4"}};
  RETURN_IF_ERROR(CreateDirectories(dir));
  RETURN_IF_ERROR(WriteFileAtomic(dir / kZgroup, Json{{"zarr_format", 2}}.dump() + "\n"));
  return WriteFileAtomic(dir / kZattrs, attrs.dump(2) + "\n");
}

absl::StatusOr<OmeImage> ReadOmeZarrImage(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir / kZattrs, ec)) return absl::NotFoundError(dir.string() + ": no .zattrs (not an OME-Zarr image)");
  RETURN_IF_ERROR(CheckRead((dir / kZattrs).string(), dir / kZattrs));
  ASSIGN_OR_RETURN(Json j, ReadJsonFile(dir / kZattrs));
  const auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat((dir / kZattrs).string(), ": ", why));
  };
  if (!j.is_object() || !j.contains("multiscales")) return absl::NotFoundError(dir.string() + ": no multiscales");
  OmeImage image;
  try {
    const Json& ms = j.at("multiscales").at(0);
    image.name = ms.value("name", "");
    image.type = ms.value("type", "");
    if (ms.contains("axes")) {
      for (const Json& a : ms.at("axes")) {
        if (a.is_string()) image.axes.push_back({a.get<std::string>(), "", ""});  // NGFF 0.3
        else image.axes.push_back({a.at("name").get<std::string>(), a.value("type", ""), a.value("unit", "")});
      }
    }
    for (const Json& d : ms.at("datasets")) {
      OmeLevel level{d.at("path").get<std::string>(), {}};
      if (d.contains("coordinateTransformations")) {
        for (const Json& t : d.at("coordinateTransformations")) {
          if (t.value("type", "") == "scale") level.scale = t.at("scale").get<std::vector<double>>();
        }
      }
      image.levels.push_back(level);
    }
  } catch (const Json::exception& e) {
    return bad(e.what());
  }
  if (image.levels.empty()) return bad("multiscales[0].datasets is empty");
  image.label = j.contains("image-label");
  return image;
}

bool IsZarrPath(const std::string& spec) {
  std::error_code ec;
  std::string s = spec;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  if (absl::EndsWith(Lower(s), ".zarr")) return true;
  return fs::is_directory(s, ec) && (fs::exists(fs::path(s) / kZarray, ec) || fs::exists(fs::path(s) / kZattrs, ec));
}

namespace {

class ZarrPlaneReader : public PlaneReader {
 public:
  ZarrPlaneReader(fs::path dir, ZarrArrayMeta meta, size_t lead) : dir_(std::move(dir)), meta_(std::move(meta)), lead_(lead) {}
  RawArray& header() { return header_; }
  bool streaming() const override { return true; }
  absl::Status Read(int64_t z0, int64_t z1, uint8_t* dst) override {
    std::vector<int64_t> origin(meta_.shape.size(), 0), extent(meta_.shape.size(), 1);
    const size_t rank = meta_.shape.size();
    extent[rank - 1] = header_.shape[2];
    extent[rank - 2] = header_.shape[1];
    if (rank - lead_ == 3) {
      origin[rank - 3] = z0;
      extent[rank - 3] = z1 - z0;
    }
    return ReadZarrRegion(dir_, meta_, origin, extent, dst);
  }

 private:
  fs::path dir_;
  ZarrArrayMeta meta_;
  size_t lead_;  // leading axes of extent 1 (t, c)
};

}  // namespace

absl::StatusOr<std::unique_ptr<PlaneReader>> OpenZarrPlaneReader(const std::string& spec) {
  fs::path dir = spec;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat(spec, ": no such Zarr directory"));
  RETURN_IF_ERROR(CheckRead(spec, dir));
  std::optional<OmeImage> image;
  std::string axes_unit;
  std::vector<double> scale;
  if (!fs::exists(dir / kZarray, ec)) {
    ASSIGN_OR_RETURN(OmeImage read, ReadOmeZarrImage(dir), spec);
    image = read;
    scale = read.levels[0].scale;
    dir /= read.levels[0].path;
    RETURN_IF_ERROR(CheckRead(absl::StrCat(spec, ": .zattrs multiscales[0].datasets[0].path"), dir));
  }
  ASSIGN_OR_RETURN(ZarrArrayMeta meta, ReadZarrArray(dir));
  if (meta.dtype != DType::kUInt8 || meta.half) {
    return absl::InvalidArgumentError(absl::StrCat(spec, ": a ", meta.half ? "float16" : DTypeName(meta.dtype),
                                                   " array; images to segment are uint8 (convert it, or read a "
                                                   "uint8 copy)"));
  }
  const size_t rank = meta.shape.size();
  size_t lead = 0;
  while (rank - lead > 3 && meta.shape[lead] == 1) ++lead;
  if (rank < 2 || rank - lead > 3) {
    return absl::InvalidArgumentError(absl::StrCat(spec, ": shape [", absl::StrJoin(meta.shape, ", "),
                                                   "]; read: (y, x) or (z, y, x), with leading axes of extent 1"));
  }
  auto reader = std::make_unique<ZarrPlaneReader>(dir, meta, lead);
  RawArray& h = reader->header();
  h.source = dir.string();
  h.dtype = DType::kUInt8;
  h.shape = {rank - lead == 3 ? meta.shape[rank - 3] : 1, meta.shape[rank - 2], meta.shape[rank - 1]};
  RETURN_IF_ERROR(DeclaredBytes(spec, "shape (one plane)", {h.shape[1], h.shape[2]}, 1).status());
  if (image && scale.size() == rank) {
    h.spacing = {rank - lead == 3 ? scale[rank - 3] : 1.0, scale[rank - 2], scale[rank - 1]};
    h.has_spacing = true;
    if (image->axes.size() == rank) h.unit = image->axes[rank - 1].unit;
  }
  return std::unique_ptr<PlaneReader>(std::move(reader));
}

std::vector<uint8_t> DownsampleLabelsMode(const uint8_t* in, const std::array<int64_t, 3>& s,
                                          const std::array<int, 3>& f) {
  const int64_t oz = (s[0] + f[0] - 1) / f[0], oy = (s[1] + f[1] - 1) / f[1], ox = (s[2] + f[2] - 1) / f[2];
  std::vector<uint8_t> out(static_cast<size_t>(oz * oy * ox));
  for (int64_t z = 0; z < oz; ++z) {
    for (int64_t y = 0; y < oy; ++y) {
      for (int64_t x = 0; x < ox; ++x) {
        uint8_t values[8] = {};
        int n = 0;
        for (int64_t dz = 0; dz < f[0] && z * f[0] + dz < s[0]; ++dz) {
          for (int64_t dy = 0; dy < f[1] && y * f[1] + dy < s[1]; ++dy) {
            for (int64_t dx = 0; dx < f[2] && x * f[2] + dx < s[2]; ++dx) {
              values[n++] = in[((z * f[0] + dz) * s[1] + y * f[1] + dy) * s[2] + x * f[2] + dx];
            }
          }
        }
        uint8_t best = values[0];
        int best_count = 0;
        for (int i = 0; i < n; ++i) {  // at most 8 values: count each
          int count = 0;
          for (int j = 0; j < n; ++j) count += values[j] == values[i];
          if (count > best_count || (count == best_count && values[i] < best)) best_count = count, best = values[i];
        }
        out[static_cast<size_t>((z * oy + y) * ox + x)] = best;
      }
    }
  }
  return out;
}

}  // namespace retina::trainer
