// PNG (libpng): 8/16-bit grey, palette and RGB(A) converted to grey.
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/data/formats/format_util.h"
#include "common/read_scope.h"
#include "trainer/data/formats/readers.h"

namespace retina::trainer {
namespace {

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

}  // namespace

absl::StatusOr<RawArray> ReadPng(const std::string& path) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  RETURN_IF_ERROR(CheckRead(path, path));
  std::unique_ptr<FILE, int (*)(FILE*)> fp(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!fp) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  // The size IHDR declares, against the memory budget, before libpng
  // allocates rows (signature, IHDR length and type, width, height, depth).
  unsigned char ihdr[25];
  if (std::fread(ihdr, 1, sizeof ihdr, fp.get()) == sizeof ihdr && std::memcmp(ihdr + 12, "IHDR", 4) == 0) {
    const auto be32 = [&](int at) {
      return int64_t{ihdr[at]} << 24 | int64_t{ihdr[at + 1]} << 16 | int64_t{ihdr[at + 2]} << 8 | int64_t{ihdr[at + 3]};
    };
    RETURN_IF_ERROR(DeclaredBytes(path, "IHDR width x height", {be32(20), be32(16)}, ihdr[24] == 16 ? 2 : 1).status());
  }
  std::rewind(fp.get());
  RawArray out;
  out.source = path;
  PngState st;
  st.out = &out;
  if (!DecodePng(fp.get(), &st)) {
    return absl::DataLossError(absl::StrCat(path, ": unreadable PNG: ", st.error));
  }
  return out;
}

}  // namespace retina::trainer
