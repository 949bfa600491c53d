// Arrays read from EM files, before and after conversion to what training
// uses: uint8 images and uint8 label masks, laid out z, y, x (a 2D image has
// z = 1), with voxel spacing (z, y, x) when the format records it.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace retina::trainer {

enum class DType { kUInt8, kInt8, kUInt16, kInt16, kUInt32, kInt32, kUInt64, kInt64, kFloat32, kFloat64 };

const char* DTypeName(DType dtype);
size_t DTypeSize(DType dtype);

struct RawArray {
  DType dtype = DType::kUInt8;
  std::array<int64_t, 3> shape{0, 0, 0};    // z, y, x
  std::array<double, 3> spacing{1, 1, 1};   // z, y, x, in the file's unit
  bool has_spacing = false;
  std::string unit;                         // the spacing's unit as the file names it ("nm"); "" = unknown
  std::string source;                       // file (and dataset) for errors
  std::vector<uint8_t> bytes;               // native-endian, C order

  int64_t numel() const { return shape[0] * shape[1] * shape[2]; }
  template <class T>
  const T* as() const { return reinterpret_cast<const T*>(bytes.data()); }
};

// A uint8 volume (image or mask), z, y, x.
struct Volume {
  std::array<int64_t, 3> shape{0, 0, 0};
  std::array<double, 3> spacing{1, 1, 1};
  std::vector<uint8_t> data;
  int64_t numel() const { return shape[0] * shape[1] * shape[2]; }
  const uint8_t* plane(int64_t z) const { return data.data() + z * shape[1] * shape[2]; }
};

// How non-uint8 images become uint8.
enum class IntensityScaling {
  kRequireUInt8,  // anything else is an error that says how to convert
  kMinMax,        // linear map of the array's [min, max] to [0, 255] (per file)
};

// How label files become class indices.
enum class MaskConvention {
  kBinary,        // 0/1 or 0/255 (255 -> 1); any other value is an error
  kClassIndex,    // values are class indices < 256
  kCremiClefts,   // uint64: 0xFFFFFFFFFFFFFFFF -> 0 (background), else 1
};

absl::StatusOr<Volume> ToImage(const RawArray& raw, IntensityScaling scaling);
absl::StatusOr<Volume> ToMask(const RawArray& raw, MaskConvention convention);

}  // namespace retina::trainer
