#include "trainer/data/readers.h"

#include <hdf5.h>
#include <nifti2_io.h>
#include <png.h>
#include <teem/biff.h>
#include <teem/nrrd.h>
#include <tiffio.h>

#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/data/hdf5_handle.h"

namespace retina::trainer {
namespace {

std::string Lower(const std::string& s) { return absl::AsciiStrToLower(s); }

absl::Status NotFoundUnlessExists(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  return absl::OkStatus();
}

// --- PNG ---------------------------------------------------------------------

struct PngState {
  char error[256] = {0};
  RawArray* out = nullptr;
};

void PngError(png_structp png, png_const_charp msg) {
  auto* st = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(st->error, sizeof(st->error), "%s", msg);
  png_longjmp(png, 1);
}
void PngWarning(png_structp, png_const_charp) {}

// All libpng work happens here, between setjmp and the normal return; only
// memory reached through `st` is modified (no locals live across longjmp).
bool DecodePng(FILE* fp, PngState* st) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, st, PngError, PngWarning);
  if (png == nullptr) {
    std::snprintf(st->error, sizeof(st->error), "out of memory");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    if (st->error[0] == 0) std::snprintf(st->error, sizeof(st->error), "out of memory");
    return false;
  }
  png_init_io(png, fp);
  png_read_info(png, info);
  const png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
  const int depth = png_get_bit_depth(png, info), color = png_get_color_type(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  if (color == PNG_COLOR_TYPE_RGB || color == PNG_COLOR_TYPE_RGB_ALPHA || color == PNG_COLOR_TYPE_PALETTE) {
    png_set_rgb_to_gray_fixed(png, /*error_action=*/1, -1, -1);  // EM is grey: convert silently
  }
  if (depth == 16) png_set_swap(png);  // PNG is big-endian; we store native (little) endian
  png_read_update_info(png, info);
  const size_t rowbytes = png_get_rowbytes(png, info);
  st->out->dtype = depth == 16 ? DType::kUInt16 : DType::kUInt8;
  st->out->shape = {1, static_cast<int64_t>(height), static_cast<int64_t>(width)};
  if (rowbytes != width * DTypeSize(st->out->dtype)) {
    png_error(png, "unexpected row size after conversion to grey");
  }
  st->out->bytes.resize(rowbytes * height);
  for (png_uint_32 y = 0; y < height; ++y) png_read_row(png, st->out->bytes.data() + y * rowbytes, nullptr);
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

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
    std::vector<uint8_t> tile(TIFFTileSize(tif));
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

// --- HDF5 --------------------------------------------------------------------

void SilenceHdf5() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

// Reads a float attribute of 2 or 3 values into spacing (z, y, x).
bool ReadSpacingAttribute(hid_t dataset, const char* name, RawArray* out) {
  if (H5Aexists(dataset, name) <= 0) return false;
  Hid attr(H5Aopen(dataset, name, H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) return false;
  Hid space(H5Aget_space(attr.get()), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n != 2 && n != 3) return false;
  double v[3];
  if (H5Aread(attr.get(), H5T_NATIVE_DOUBLE, v) < 0) return false;
  if (n == 3) out->spacing = {v[0], v[1], v[2]};
  else out->spacing = {1.0, v[0], v[1]};
  out->has_spacing = true;
  return true;
}

}  // namespace

absl::StatusOr<RawArray> ReadPng(const std::string& path) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  std::unique_ptr<FILE, int (*)(FILE*)> fp(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!fp) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  RawArray out;
  out.source = path;
  PngState st;
  st.out = &out;
  if (!DecodePng(fp.get(), &st)) {
    return absl::DataLossError(absl::StrCat(path, ": unreadable PNG: ", st.error));
  }
  return out;
}

namespace {

// Opens `path` and walks its directories without decoding pixels: dtype, shape
// (pages = z) and spacing, every page checked against the first. Leaves the
// TIFF at its first directory. Call with g_tiff_mutex held.
absl::StatusOr<RawArray> ScanTiff(const std::string& path, std::unique_ptr<TIFF, TiffCloser>* opened) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
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
      out.dtype = *dtype;
      out.shape = {0, height, width};
      char* description = nullptr;
      bool imagej_unit = false;
      if (TIFFGetField(tif.get(), TIFFTAG_IMAGEDESCRIPTION, &description) && description != nullptr) {
        const char* sp = std::strstr(description, "spacing=");
        if (sp != nullptr) out.spacing[0] = std::atof(sp + 8);
        imagej_unit = std::strstr(description, "ImageJ=") != nullptr && std::strstr(description, "unit=") != nullptr;
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

}  // namespace

absl::StatusOr<RawArray> ReadTiff(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_tiff_mutex);
  std::unique_ptr<TIFF, TiffCloser> tif;
  ASSIGN_OR_RETURN(RawArray out, ScanTiff(path, &tif));
  out.bytes.resize(static_cast<size_t>(out.numel()) * DTypeSize(out.dtype));
  int64_t current = 0;
  RETURN_IF_ERROR(ReadTiffPages(tif.get(), out, 0, out.shape[0], &current, out.bytes.data()));
  return out;
}

namespace {

// An open HDF5 dataset of rank 2 (y, x) or 3 (z, y, x) and what it holds.
struct Hdf5Dataset {
  std::unique_ptr<Hid> file, ds;
  hid_t native = -1;  // the memory type matching header.dtype
  int rank = 0;
  RawArray header;    // dtype, shape, spacing, source; no bytes
};

absl::Status OpenHdf5Dataset(const std::string& path, const std::string& dataset, Hdf5Dataset* out) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  SilenceHdf5();
  const std::string where = absl::StrCat(path, ":", dataset);
  if (H5Fis_hdf5(path.c_str()) <= 0) return absl::DataLossError(absl::StrCat(path, ": not an HDF5 file"));
  out->file = std::make_unique<Hid>(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!out->file->ok()) return absl::DataLossError(absl::StrCat(path, ": cannot open HDF5 file"));
  if (H5Lexists(out->file->get(), dataset.c_str(), H5P_DEFAULT) <= 0) {
    return absl::NotFoundError(absl::StrCat(where, ": no such dataset in the file"));
  }
  out->ds = std::make_unique<Hid>(H5Dopen2(out->file->get(), dataset.c_str(), H5P_DEFAULT), H5Dclose);
  if (!out->ds->ok()) return absl::NotFoundError(absl::StrCat(where, ": not a dataset"));
  const hid_t ds = out->ds->get();
  Hid space(H5Dget_space(ds), H5Sclose);
  out->rank = H5Sget_simple_extent_ndims(space.get());
  if (out->rank != 2 && out->rank != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": dataset has rank ", out->rank, ", expected 2 (y, x) or 3 (z, y, x)"));
  }
  hsize_t dims[3] = {1, 1, 1};
  H5Sget_simple_extent_dims(space.get(), dims + (3 - out->rank), nullptr);
  Hid type(H5Dget_type(ds), H5Tclose);
  const H5T_class_t cls = H5Tget_class(type.get());
  const size_t size = H5Tget_size(type.get());
  const bool is_signed = cls == H5T_INTEGER && H5Tget_sign(type.get()) == H5T_SGN_2;
  RawArray& h = out->header;
  h.source = where;
  hid_t& native = out->native;
  if (cls == H5T_FLOAT && size == 4) { h.dtype = DType::kFloat32; native = H5T_NATIVE_FLOAT; }
  else if (cls == H5T_FLOAT && size == 8) { h.dtype = DType::kFloat64; native = H5T_NATIVE_DOUBLE; }
  else if (cls == H5T_INTEGER && size == 1) { h.dtype = is_signed ? DType::kInt8 : DType::kUInt8; native = is_signed ? H5T_NATIVE_INT8 : H5T_NATIVE_UINT8; }
  else if (cls == H5T_INTEGER && size == 2) { h.dtype = is_signed ? DType::kInt16 : DType::kUInt16; native = is_signed ? H5T_NATIVE_INT16 : H5T_NATIVE_UINT16; }
  else if (cls == H5T_INTEGER && size == 4) { h.dtype = is_signed ? DType::kInt32 : DType::kUInt32; native = is_signed ? H5T_NATIVE_INT32 : H5T_NATIVE_UINT32; }
  else if (cls == H5T_INTEGER && size == 8) { h.dtype = is_signed ? DType::kInt64 : DType::kUInt64; native = is_signed ? H5T_NATIVE_INT64 : H5T_NATIVE_UINT64; }
  else return absl::UnimplementedError(absl::StrCat(where, ": unsupported HDF5 element type (class ", cls, ", ", size, " bytes)"));
  h.shape = {static_cast<int64_t>(dims[0]), static_cast<int64_t>(dims[1]), static_cast<int64_t>(dims[2])};
  if (!ReadSpacingAttribute(ds, "resolution", &h)) ReadSpacingAttribute(ds, "element_size_um", &h);
  return absl::OkStatus();
}

// Reads planes [z0, z1) of an open dataset into dst (native type of header.dtype).
absl::Status ReadHdf5Planes(const Hdf5Dataset& d, int64_t z0, int64_t z1, uint8_t* dst) {
  Hid file_space(H5Dget_space(d.ds->get()), H5Sclose);
  const hsize_t start3[3] = {static_cast<hsize_t>(z0), 0, 0};
  const hsize_t count3[3] = {static_cast<hsize_t>(z1 - z0), static_cast<hsize_t>(d.header.shape[1]),
                             static_cast<hsize_t>(d.header.shape[2])};
  const hsize_t* start = d.rank == 3 ? start3 : start3 + 1;
  const hsize_t* count = d.rank == 3 ? count3 : count3 + 1;
  Hid mem_space(H5Screate_simple(d.rank, count, nullptr), H5Sclose);
  if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
      H5Dread(d.ds->get(), d.native, mem_space.get(), file_space.get(), H5P_DEFAULT, dst) < 0) {
    return absl::DataLossError(
        absl::StrCat(d.header.source, ": reading planes ", z0, "..", z1 - 1, " failed (damaged or truncated file?)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RawArray> ReadHdf5(const std::string& path, const std::string& dataset) {
  Hdf5Dataset d;
  RETURN_IF_ERROR(OpenHdf5Dataset(path, dataset, &d));
  RawArray out = d.header;
  out.bytes.resize(static_cast<size_t>(out.numel()) * DTypeSize(out.dtype));
  if (H5Dread(d.ds->get(), d.native, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.bytes.data()) < 0) {
    return absl::DataLossError(absl::StrCat(out.source, ": read failed (damaged or truncated file?)"));
  }
  return out;
}

absl::StatusOr<RawArray> ReadNifti(const std::string& path) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  nifti_set_debug_level(0);
  std::unique_ptr<nifti_image, void (*)(nifti_image*)> img(nifti_image_read(path.c_str(), 1), &nifti_image_free);
  if (!img || img->data == nullptr) return absl::DataLossError(absl::StrCat(path, ": not a readable NIfTI file"));
  if (img->ndim > 3 && (img->nt > 1 || img->nu > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": NIfTI has ", img->ndim, " dimensions; expected 2 or 3"));
  }
  RawArray out;
  out.source = path;
  switch (img->datatype) {
    case DT_UINT8: out.dtype = DType::kUInt8; break;
    case DT_INT8: out.dtype = DType::kInt8; break;
    case DT_UINT16: out.dtype = DType::kUInt16; break;
    case DT_INT16: out.dtype = DType::kInt16; break;
    case DT_UINT32: out.dtype = DType::kUInt32; break;
    case DT_INT32: out.dtype = DType::kInt32; break;
    case DT_UINT64: out.dtype = DType::kUInt64; break;
    case DT_INT64: out.dtype = DType::kInt64; break;
    case DT_FLOAT32: out.dtype = DType::kFloat32; break;
    case DT_FLOAT64: out.dtype = DType::kFloat64; break;
    default:
      return absl::UnimplementedError(absl::StrCat(path, ": unsupported NIfTI datatype ", img->datatype));
  }
  out.shape = {std::max<int64_t>(1, img->nz), std::max<int64_t>(1, img->ny), std::max<int64_t>(1, img->nx)};
  const size_t n = static_cast<size_t>(out.numel()) * DTypeSize(out.dtype);
  out.bytes.assign(static_cast<uint8_t*>(img->data), static_cast<uint8_t*>(img->data) + n);
  out.spacing = {img->nz > 1 ? img->dz : 1.0, img->dy, img->dx};
  out.has_spacing = img->dx > 0 && img->dy > 0;
  return out;
}

absl::StatusOr<RawArray> ReadNrrd(const std::string& path) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  std::unique_ptr<Nrrd, Nrrd* (*)(Nrrd*)> nrrd(nrrdNew(), &nrrdNuke);
  if (nrrdLoad(nrrd.get(), path.c_str(), nullptr) != 0) {
    char* err = biffGetDone(NRRD);
    std::string msg = err != nullptr ? err : "unknown error";
    std::free(err);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    return absl::DataLossError(absl::StrCat(path, ": not a readable NRRD: ", msg));
  }
  const unsigned dim = nrrd->dim;
  if (dim != 2 && dim != 3) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": NRRD has ", dim, " dimensions; expected 2 or 3"));
  }
  RawArray out;
  out.source = path;
  switch (nrrd->type) {
    case nrrdTypeUChar: out.dtype = DType::kUInt8; break;
    case nrrdTypeChar: out.dtype = DType::kInt8; break;
    case nrrdTypeUShort: out.dtype = DType::kUInt16; break;
    case nrrdTypeShort: out.dtype = DType::kInt16; break;
    case nrrdTypeUInt: out.dtype = DType::kUInt32; break;
    case nrrdTypeInt: out.dtype = DType::kInt32; break;
    case nrrdTypeULLong: out.dtype = DType::kUInt64; break;
    case nrrdTypeLLong: out.dtype = DType::kInt64; break;
    case nrrdTypeFloat: out.dtype = DType::kFloat32; break;
    case nrrdTypeDouble: out.dtype = DType::kFloat64; break;
    default: return absl::UnimplementedError(absl::StrCat(path, ": unsupported NRRD type ", nrrd->type));
  }
  const int64_t x = nrrd->axis[0].size, y = nrrd->axis[1].size, z = dim == 3 ? nrrd->axis[2].size : 1;
  out.shape = {z, y, x};
  const size_t n = static_cast<size_t>(out.numel()) * DTypeSize(out.dtype);
  out.bytes.assign(static_cast<uint8_t*>(nrrd->data), static_cast<uint8_t*>(nrrd->data) + n);
  // Spacing: per-axis "spacings", else the norms of "space directions".
  double sp[3] = {1, 1, 1};
  bool found = false;
  for (unsigned a = 0; a < dim; ++a) {
    double s = nrrd->axis[a].spacing;
    if (!std::isfinite(s) && nrrd->spaceDim > 0) {
      double norm = 0;
      for (unsigned k = 0; k < nrrd->spaceDim; ++k) norm += nrrd->axis[a].spaceDirection[k] * nrrd->axis[a].spaceDirection[k];
      s = std::sqrt(norm);
    }
    if (std::isfinite(s) && s > 0) {
      sp[a] = s;
      found = true;
    }
  }
  out.spacing = {sp[2], sp[1], sp[0]};
  out.has_spacing = found;
  return out;
}

bool IsReadableImageName(const std::string& name) {
  const std::string l = Lower(name);
  for (const char* ext : {".png", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd", ".nhdr"}) {
    if (absl::EndsWith(l, ext)) return true;
  }
  return false;
}

absl::StatusOr<RawArray> ReadArray(const std::string& spec) {
  const std::string l = Lower(spec);
  for (const char* ext : {".h5:", ".hdf5:", ".hdf:"}) {
    const size_t at = l.find(ext);
    if (at != std::string::npos) {
      const size_t colon = at + std::strlen(ext) - 1;
      return ReadHdf5(spec.substr(0, colon), spec.substr(colon + 1));
    }
  }
  if (absl::EndsWith(l, ".h5") || absl::EndsWith(l, ".hdf5") || absl::EndsWith(l, ".hdf")) {
    return absl::InvalidArgumentError(absl::StrCat(spec, ": name the dataset, e.g. ", spec, ":/volumes/raw"));
  }
  if (absl::EndsWith(l, ".png")) return ReadPng(spec);
  if (absl::EndsWith(l, ".tif") || absl::EndsWith(l, ".tiff")) return ReadTiff(spec);
  if (absl::EndsWith(l, ".nii") || absl::EndsWith(l, ".nii.gz")) return ReadNifti(spec);
  if (absl::EndsWith(l, ".nrrd") || absl::EndsWith(l, ".nhdr")) return ReadNrrd(spec);
  return absl::InvalidArgumentError(absl::StrCat(
      spec, ": unknown format (known: .png, .tif/.tiff, .h5:/dataset, .nii/.nii.gz, .nrrd/.nhdr)"));
}

// --- Plane readers -----------------------------------------------------------

namespace {

class HeldPlaneReader : public PlaneReader {
 public:
  HeldPlaneReader(const Volume* v, Volume owned, const std::string& source) : owned_(std::move(owned)) {
    v_ = v != nullptr ? v : &owned_;
    header_.shape = v_->shape;
    header_.spacing = v_->spacing;
    header_.source = source;
  }
  void set_has_spacing(bool b) { header_.has_spacing = b; }
  bool streaming() const override { return false; }
  absl::Status Read(int64_t z0, int64_t z1, uint8_t* dst) override {
    std::memcpy(dst, v_->plane(z0), static_cast<size_t>((z1 - z0) * v_->shape[1] * v_->shape[2]));
    return absl::OkStatus();
  }

 private:
  Volume owned_;
  const Volume* v_;
};

class Hdf5PlaneReader : public PlaneReader {
 public:
  explicit Hdf5PlaneReader(Hdf5Dataset d) : d_(std::move(d)) { header_ = d_.header; }
  bool streaming() const override { return true; }
  absl::Status Read(int64_t z0, int64_t z1, uint8_t* dst) override { return ReadHdf5Planes(d_, z0, z1, dst); }

 private:
  Hdf5Dataset d_;
};

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

std::unique_ptr<PlaneReader> VolumePlaneReader(const Volume& volume) {
  return std::make_unique<HeldPlaneReader>(&volume, Volume{}, "volume");
}

absl::StatusOr<std::unique_ptr<PlaneReader>> OpenPlaneReader(const std::string& spec, IntensityScaling scaling) {
  const std::string l = Lower(spec);
  for (const char* ext : {".h5:", ".hdf5:", ".hdf:"}) {
    const size_t at = l.find(ext);
    if (at == std::string::npos) continue;
    const size_t colon = at + std::strlen(ext) - 1;
    Hdf5Dataset d;
    RETURN_IF_ERROR(OpenHdf5Dataset(spec.substr(0, colon), spec.substr(colon + 1), &d));
    if (d.header.dtype == DType::kUInt8) return std::unique_ptr<PlaneReader>(new Hdf5PlaneReader(std::move(d)));
    break;
  }
  if (absl::EndsWith(l, ".tif") || absl::EndsWith(l, ".tiff")) {
    std::lock_guard<std::mutex> lock(g_tiff_mutex);
    std::unique_ptr<TIFF, TiffCloser> tif;
    ASSIGN_OR_RETURN(RawArray header, ScanTiff(spec, &tif));
    if (header.dtype == DType::kUInt8) {
      return std::unique_ptr<PlaneReader>(new TiffPlaneReader(std::move(header), std::move(tif)));
    }
  }
  ASSIGN_OR_RETURN(RawArray raw, ReadArray(spec));
  ASSIGN_OR_RETURN(Volume v, ToImage(raw, scaling));
  auto reader = std::make_unique<HeldPlaneReader>(nullptr, std::move(v), raw.source);
  reader->set_has_spacing(raw.has_spacing);
  return std::unique_ptr<PlaneReader>(std::move(reader));
}

}  // namespace retina::trainer
