// Zarr v2 arrays and OME-Zarr (NGFF 0.4) images: what infer jobs write and
// what OpenPlaneReader reads as input.
//
// An array is a directory with `.zarray` (shape, chunks, dtype, compressor,
// fill value, C order, dimension separator "/") and one file per chunk,
// "<i>/<j>/<k>", holding the full chunk shape (edge chunks padded with the
// fill value), compressed with zlib (numcodecs "zlib"), blosc (lz4 + byte
// shuffle, numcodecs "blosc") or not at all. A chunk that is absent reads as
// the fill value (the Zarr rule). Every chunk and metadata file is written
// to a temporary beside it and renamed, so concurrent writers of disjoint
// chunks (ranks) need no coordination and a reader never sees half a chunk.
//
// An OME-Zarr image is a group (`.zgroup`) whose `.zattrs` hold
// "multiscales" (version 0.4): axes (name, type "space"/"channel", unit) and
// one dataset per level with a coordinateTransformations scale. Writers put
// the group metadata last, so a group without it is not a finished image.
//
// Libraries: zlib, libblosc. No libtorch.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/data/formats/array.h"
#include "trainer/data/formats/readers.h"

namespace retina::trainer {

enum class ZarrCompressor { kNone, kZlib, kBlosc };

// "none", "zlib", "blosc"; INVALID_ARGUMENT naming `field` otherwise.
absl::StatusOr<ZarrCompressor> ParseZarrCompressor(const std::string& name, const std::string& field);

struct ZarrArrayMeta {
  std::vector<int64_t> shape, chunks;  // C order, same rank
  DType dtype = DType::kUInt8;         // uint8, float32 or float16 (kHalf below)
  bool half = false;                   // dtype "<f2": 2-byte IEEE half floats
  ZarrCompressor compressor = ZarrCompressor::kZlib;
  int level = 1;                       // zlib level, blosc clevel
  double fill_value = 0;

  size_t item_size() const;
  int64_t chunk_count(size_t axis) const { return (shape[axis] + chunks[axis] - 1) / chunks[axis]; }
};

// Writes `dir`/.zarray (creating `dir`); the chunks come later.
absl::Status CreateZarrArray(const std::filesystem::path& dir, const ZarrArrayMeta& meta);
// The most bytes one decompressed chunk may hold (it is held whole in memory).
inline constexpr int64_t kMaxZarrChunkBytes = int64_t{1} << 30;
// Reads and checks `dir`/.zarray: DATA_LOSS naming the file for a malformed
// one (also chunks past kMaxZarrChunkBytes or a shape whose voxel count
// overflows 64 bits: sizes from a header are checked before any allocation),
// UNIMPLEMENTED for an order, dtype, filter or codec this reader lacks.
absl::StatusOr<ZarrArrayMeta> ReadZarrArray(const std::filesystem::path& dir);

// Writes every chunk of the region [origin, origin + extent), which must start
// on chunk boundaries and end on one or at the array's edge; `data` holds the
// region in C order (extent's shape). INVALID_ARGUMENT for an unaligned region.
absl::Status WriteZarrRegion(const std::filesystem::path& dir, const ZarrArrayMeta& meta,
                             const std::vector<int64_t>& origin, const std::vector<int64_t>& extent, const void* data);
// Reads any region into `out` (extent's shape, C order). A chunk that does
// not decompress to the chunk's size is DATA_LOSS naming its file.
absl::Status ReadZarrRegion(const std::filesystem::path& dir, const ZarrArrayMeta& meta,
                            const std::vector<int64_t>& origin, const std::vector<int64_t>& extent, void* out);

// --- OME-Zarr ---------------------------------------------------------------

struct OmeAxis {
  std::string name;  // "c", "z", "y", "x"
  std::string type;  // "channel" or "space"
  std::string unit;  // UDUNITS-2 name ("nanometer"); "" = none
};

struct OmeLevel {
  std::string path;           // "0", "1", ...
  std::vector<double> scale;  // one per axis
};

struct OmeImage {
  std::string name;
  std::vector<OmeAxis> axes;
  std::vector<OmeLevel> levels;
  std::string type;           // the downsampling method ("mode", "mean"); "" = none
  bool label = false;         // also write "image-label" (a segmentation)
};

// Writes `dir`/.zgroup and `dir`/.zattrs (multiscales, and image-label for a
// label image). Call it last: it marks the image finished.
absl::Status WriteOmeZarrImage(const std::filesystem::path& dir, const OmeImage& image);
// Reads `dir`/.zattrs' first multiscale; NOT_FOUND when `dir` has none.
absl::StatusOr<OmeImage> ReadOmeZarrImage(const std::filesystem::path& dir);

// The NGFF unit for a file's unit ("nm", "um", "µm", "micron", "A", or a
// UDUNITS name already): "" when unknown.
std::string NgffUnit(const std::string& unit);

// A directory that is a Zarr array or an OME-Zarr image ("in.zarr",
// "in.ome.zarr/0").
bool IsZarrPath(const std::string& spec);
// Streams a uint8 Zarr array of rank 2 (y, x) or 3 (z, y, x), also with
// leading axes of extent 1 (t, c). An OME-Zarr image reads its level 0, with
// spacing and unit from the level's scale and the axes.
absl::StatusOr<std::unique_ptr<PlaneReader>> OpenZarrPlaneReader(const std::string& spec);

// 2x downsampling of a label block by mode: `in` is [n, Y, X] uint8; each
// output voxel is the most frequent label of its (up to) 2x2x2 block (the
// smallest label among equally frequent ones); `factor` per axis is 1 or 2;
// outputs ceil(extent / factor).
std::vector<uint8_t> DownsampleLabelsMode(const uint8_t* in, const std::array<int64_t, 3>& shape,
                                          const std::array<int, 3>& factor);

}  // namespace retina::trainer
