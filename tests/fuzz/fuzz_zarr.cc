// Zarr v2 and OME-Zarr: the input is `.zarray` JSON, a NUL, a chunk's
// stored bytes (raw, zlib, gzip or blosc per the metadata), a NUL, and
// `.zattrs` JSON; the array's first chunk is read as a region and through
// the plane reader.
#include <algorithm>
#include <cstring>

#include "tests/fuzz/fuzz_util.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/zarr.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace retina::trainer;
  namespace fs = std::filesystem;
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t a = in.find('\0');
  const size_t b = a == std::string::npos ? std::string::npos : in.find('\0', a + 1);
  const std::string zarray = in.substr(0, a);
  const std::string chunk = a == std::string::npos ? "" : in.substr(a + 1, b == std::string::npos ? b : b - a - 1);
  const std::string zattrs = b == std::string::npos ? "" : in.substr(b + 1);
  const fs::path dir = retina::fuzz::TempDir() / "in.zarr";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir / "0");
  const auto put = [](const fs::path& p, const std::string& s) {
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    retina::fuzz::WriteTemp(fs::relative(p, retina::fuzz::TempDir()).string(),
                            reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  put(dir / "0" / ".zarray", zarray);
  put(dir / "0" / "0.0", chunk);
  put(dir / "0" / "0" / "0", chunk);
  put(dir / "0" / "0.0.0", chunk);
  put(dir / ".zattrs", zattrs);
  put(dir / ".zgroup", "{\"zarr_format\": 2}");
  absl::StatusOr<ZarrArrayMeta> m = ReadZarrArray(dir / "0");
  if (m.ok()) {
    std::vector<int64_t> origin(m->shape.size(), 0), extent(m->shape.size(), 0);
    int64_t n = 1;
    for (size_t i = 0; i < m->shape.size(); ++i) {
      extent[i] = std::min<int64_t>(m->shape[i], std::min<int64_t>(m->chunks[i], 64));
      n *= extent[i];
    }
    if (n > 0 && n <= (1 << 20)) {
      std::string out(static_cast<size_t>(n) * m->item_size(), '\0');
      (void)ReadZarrRegion(dir / "0", *m, origin, extent, out.data());
    }
  }
  (void)ReadOmeZarrImage(dir);
  absl::StatusOr<std::unique_ptr<PlaneReader>> r = OpenZarrPlaneReader(dir.string());
  if (r.ok() && *r && (*r)->shape()[1] * (*r)->shape()[2] <= (1 << 20)) {
    std::string plane(static_cast<size_t>((*r)->shape()[1] * (*r)->shape()[2]), '\0');
    (void)(*r)->Read(0, 1, reinterpret_cast<uint8_t*>(plane.data()));
  }
  return 0;
}
