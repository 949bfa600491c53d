// TIFF (libtiff): 8/16/32-bit and float pages, strips or tiles; pages are z.
// Spacing from X/YResolution and ImageJ's "spacing=". uint8 stacks stream
// page by page (OpenTiffPlaneReader).
#include <tiffio.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/data/formats/format_util.h"
#include "common/read_scope.h"
#include "trainer/data/formats/readers.h"

namespace retina::trainer {
namespace {

// --- TIFF --------------------------------------------------------------------

std::mutex g_tiff_mutex;  // libtiff's handlers are process-wide
thread_local std::string g_tiff_error;

void TiffError(const char* module, const char* fmt, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  g_tiff_error = buf;
}

struct TiffCloser {
  void operator()(TIFF* t) const { TIFFClose(t); }
};

absl::StatusOr<DType> TiffDType(uint16_t bits, uint16_t format, const std::string& where) {
  if (format == SAMPLEFORMAT_IEEEFP) {
    if (bits == 32) return DType::kFloat32;
    if (bits == 64) return DType::kFloat64;
  } else if (format == SAMPLEFORMAT_INT) {
    if (bits == 8) return DType::kInt8;
    if (bits == 16) return DType::kInt16;
    if (bits == 32) return DType::kInt32;
  } else {
    if (bits == 8) return DType::kUInt8;
    if (bits == 16) return DType::kUInt16;
    if (bits == 32) return DType::kUInt32;
  }
  return absl::UnimplementedError(absl::StrCat(where, ": unsupported TIFF sample format ", format, " with ", bits, " bits"));
}

// Decodes the current page (tiled or stripped) into dst (height rows of
// width * es bytes). Call with g_tiff_mutex held.
absl::Status ReadTiffPage(TIFF* tif, uint32_t width, uint32_t height, size_t es, uint8_t* dst, const std::string& where) {
  const size_t row = static_cast<size_t>(width) * es;
  if (TIFFIsTiled(tif)) {
    uint32_t tw = 0, th = 0;
    TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw);
    TIFFGetField(tif, TIFFTAG_TILELENGTH, &th);
    // The tile a header declares, checked before it is allocated (a few
    // bytes of file may declare a 10 GB tile; a zero size would loop forever).
    if (tw == 0 || th == 0) return absl::DataLossError(absl::StrCat(where, ": TileWidth x TileLength is ", tw, " x ", th));
    ASSIGN_OR_RETURN(const uint64_t tile_bytes, DeclaredBytes(where, "TileWidth x TileLength", {th, tw}, es));
    const tmsize_t declared = TIFFTileSize(tif);
    if (declared <= 0 || static_cast<uint64_t>(declared) < tile_bytes) {
      return absl::DataLossError(absl::StrCat(where, ": TIFFTileSize ", declared, " is smaller than a ", tw, " x ", th, " tile"));
    }
    std::vector<uint8_t> tile(static_cast<size_t>(declared));
    for (uint32_t ty = 0; ty < height; ty += th) {
      for (uint32_t tx = 0; tx < width; tx += tw) {
        if (TIFFReadTile(tif, tile.data(), tx, ty, 0, 0) < 0) {
          return absl::DataLossError(absl::StrCat(where, ": tile at ", tx, ",", ty, " unreadable: ", g_tiff_error));
        }
        for (uint32_t y = ty; y < std::min(height, ty + th); ++y) {
          const uint32_t n = std::min(tw, width - tx);
          std::memcpy(dst + y * row + tx * es, tile.data() + (y - ty) * tw * es, n * es);
        }
      }
    }
    return absl::OkStatus();
  }
  for (uint32_t y = 0; y < height; ++y) {
    if (TIFFReadScanline(tif, dst + y * row, y, 0) < 0) {
      return absl::DataLossError(absl::StrCat(where, ": row ", y, " unreadable (truncated?): ", g_tiff_error));
    }
  }
  return absl::OkStatus();
}


// Opens `path` and walks its directories without decoding pixels: dtype, shape
// (pages = z) and spacing, every page checked against the first. Leaves the
// TIFF at its first directory. Call with g_tiff_mutex held.
absl::StatusOr<RawArray> ScanTiff(const std::string& path, std::unique_ptr<TIFF, TiffCloser>* opened) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  RETURN_IF_ERROR(CheckRead(path, path));
  TIFFSetErrorHandler(TiffError);
  TIFFSetWarningHandler(nullptr);
  g_tiff_error.clear();
  std::unique_ptr<TIFF, TiffCloser> tif(TIFFOpen(path.c_str(), "r"));
  if (!tif) return absl::DataLossError(absl::StrCat(path, ": not a readable TIFF: ", g_tiff_error));
  RawArray out;
  out.source = path;
  int64_t pages = 0;
  int64_t imagej_pages = 0;  // the page count ImageJ's description promises
  do {
    const std::string where = absl::StrCat(path, " (page ", pages, ")");
    uint32_t width = 0, height = 0;
    uint16_t bits = 8, spp = 1, format = SAMPLEFORMAT_UINT;
    TIFFGetField(tif.get(), TIFFTAG_IMAGEWIDTH, &width);
    TIFFGetField(tif.get(), TIFFTAG_IMAGELENGTH, &height);
    TIFFGetFieldDefaulted(tif.get(), TIFFTAG_BITSPERSAMPLE, &bits);
    TIFFGetFieldDefaulted(tif.get(), TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted(tif.get(), TIFFTAG_SAMPLEFORMAT, &format);
    if (spp != 1) {
      return absl::UnimplementedError(absl::StrCat(where, ": ", spp, " samples per pixel; EM images must be single-channel"));
    }
    absl::StatusOr<DType> dtype = TiffDType(bits, format, where);
    if (!dtype.ok()) return dtype.status();
    if (pages == 0) {
      // One page is what a streaming reader holds at least.
      RETURN_IF_ERROR(DeclaredBytes(where, "ImageWidth x ImageLength", {height, width}, DTypeSize(*dtype)).status());
      out.dtype = *dtype;
      out.shape = {0, height, width};
      char* description = nullptr;
      bool imagej_unit = false;
      if (TIFFGetField(tif.get(), TIFFTAG_IMAGEDESCRIPTION, &description) && description != nullptr) {
        const char* sp = std::strstr(description, "spacing=");
        if (sp != nullptr) out.spacing[0] = std::atof(sp + 8);
        imagej_unit = std::strstr(description, "ImageJ=") != nullptr && std::strstr(description, "unit=") != nullptr;
        if (imagej_unit) {
          const char* u = std::strstr(description, "unit=") + 5;
          const std::string word(u, std::strcspn(u, "\n"));
          if (word != "unit" && word != "pixel") out.unit = word == "micron" ? "um" : word;
        }
        const char* images = std::strstr(description, "images=");
        if (images != nullptr && std::strstr(description, "ImageJ=") != nullptr) {
          imagej_pages = std::atoll(images + 7);
        }
      }
      // Resolution counts when it has a unit: the TIFF tag, or ImageJ's "unit=".
      float xres = 0, yres = 0;
      uint16_t unit = RESUNIT_NONE;
      TIFFGetFieldDefaulted(tif.get(), TIFFTAG_RESOLUTIONUNIT, &unit);
      if (TIFFGetField(tif.get(), TIFFTAG_XRESOLUTION, &xres) && TIFFGetField(tif.get(), TIFFTAG_YRESOLUTION, &yres) &&
          xres > 0 && yres > 0 && (unit != RESUNIT_NONE || imagej_unit)) {
        out.spacing = {out.spacing[0], 1.0 / yres, 1.0 / xres};
        out.has_spacing = true;
        if (out.unit.empty() && unit == RESUNIT_CENTIMETER) out.unit = "cm";
        if (out.unit.empty() && unit == RESUNIT_INCH) out.unit = "inch";
      }
    } else if (*dtype != out.dtype || height != out.shape[1] || width != out.shape[2]) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": page is ", width, "x", height, " ", DTypeName(*dtype),
                                                     ", first page ", out.shape[2], "x", out.shape[1], " ",
                                                     DTypeName(out.dtype)));
    }
    ++pages;
  } while (TIFFReadDirectory(tif.get()));
  // TIFFReadDirectory returns 0 both at the end and on a damaged directory.
  if (!g_tiff_error.empty()) {
    return absl::DataLossError(absl::StrCat(path, ": damaged after page ", pages - 1, ": ", g_tiff_error));
  }
  if (imagej_pages > 0 && imagej_pages != pages) {
    return absl::DataLossError(absl::StrCat(path, ": ImageJ description promises ", imagej_pages,
                                            " pages, found ", pages, " (truncated?)"));
  }
  out.shape[0] = pages;
  if (!TIFFSetDirectory(tif.get(), 0)) return absl::DataLossError(absl::StrCat(path, ": cannot rewind: ", g_tiff_error));
  *opened = std::move(tif);
  return out;
}

// Decodes pages [z0, z1) into dst; `*current` is the directory the TIFF is at
// (sequential reads walk forward instead of seeking from the start).
absl::Status ReadTiffPages(TIFF* tif, const RawArray& header, int64_t z0, int64_t z1, int64_t* current, uint8_t* dst) {
  const size_t es = DTypeSize(header.dtype);
  const size_t plane = static_cast<size_t>(header.shape[1] * header.shape[2]) * es;
  for (int64_t z = z0; z < z1; ++z) {
    const std::string where = absl::StrCat(header.source, " (page ", z, ")");
    if (z != *current) {
      const bool ok = z > *current ? [&] {
        while (*current < z) {
          if (!TIFFReadDirectory(tif)) return false;
          ++*current;
        }
        return true;
      }() : TIFFSetDirectory(tif, static_cast<tdir_t>(z)) != 0;
      if (!ok) return absl::DataLossError(absl::StrCat(where, ": cannot seek: ", g_tiff_error));
      *current = z;
    }
    RETURN_IF_ERROR(ReadTiffPage(tif, static_cast<uint32_t>(header.shape[2]), static_cast<uint32_t>(header.shape[1]), es,
                                 dst + (z - z0) * plane, where));
  }
  return absl::OkStatus();
}


class TiffPlaneReader : public PlaneReader {
 public:
  TiffPlaneReader(RawArray header, std::unique_ptr<TIFF, TiffCloser> tif) : tif_(std::move(tif)) {
    header_ = std::move(header);
  }
  bool streaming() const override { return true; }
  absl::Status Read(int64_t z0, int64_t z1, uint8_t* dst) override {
    std::lock_guard<std::mutex> lock(g_tiff_mutex);
    TIFFSetErrorHandler(TiffError);
    g_tiff_error.clear();
    return ReadTiffPages(tif_.get(), header_, z0, z1, &current_, dst);
  }

 private:
  std::unique_ptr<TIFF, TiffCloser> tif_;
  int64_t current_ = 0;
};

}  // namespace

absl::StatusOr<RawArray> ReadTiff(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_tiff_mutex);
  std::unique_ptr<TIFF, TiffCloser> tif;
  ASSIGN_OR_RETURN(RawArray out, ScanTiff(path, &tif));
  ASSIGN_OR_RETURN(const uint64_t bytes, DeclaredBytes(path, "pages x ImageLength x ImageWidth",
                                                       {out.shape[0], out.shape[1], out.shape[2]}, DTypeSize(out.dtype)));
  out.bytes.resize(static_cast<size_t>(bytes));
  int64_t current = 0;
  RETURN_IF_ERROR(ReadTiffPages(tif.get(), out, 0, out.shape[0], &current, out.bytes.data()));
  return out;
}

absl::StatusOr<std::unique_ptr<PlaneReader>> OpenTiffPlaneReader(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_tiff_mutex);
  std::unique_ptr<TIFF, TiffCloser> tif;
  ASSIGN_OR_RETURN(RawArray header, ScanTiff(path, &tif));
  if (header.dtype != DType::kUInt8) return std::unique_ptr<PlaneReader>();
  return std::unique_ptr<PlaneReader>(new TiffPlaneReader(std::move(header), std::move(tif)));
}

}  // namespace retina::trainer
