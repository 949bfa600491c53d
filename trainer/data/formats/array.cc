#include "trainer/data/formats/array.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace retina::trainer {

const char* DTypeName(DType d) {
  switch (d) {
    case DType::kUInt8: return "uint8";
    case DType::kInt8: return "int8";
    case DType::kUInt16: return "uint16";
    case DType::kInt16: return "int16";
    case DType::kUInt32: return "uint32";
    case DType::kInt32: return "int32";
    case DType::kUInt64: return "uint64";
    case DType::kInt64: return "int64";
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
  }
  return "?";
}

size_t DTypeSize(DType d) {
  switch (d) {
    case DType::kUInt8: case DType::kInt8: return 1;
    case DType::kUInt16: case DType::kInt16: return 2;
    case DType::kUInt32: case DType::kInt32: case DType::kFloat32: return 4;
    default: return 8;
  }
}

namespace {

// Calls f(value_as_double) for each element, whatever the dtype.
template <class F>
void ForEach(const RawArray& a, F&& f) {
  const int64_t n = a.numel();
  auto run = [&](auto* p) { for (int64_t i = 0; i < n; ++i) f(i, static_cast<double>(p[i])); };
  switch (a.dtype) {
    case DType::kUInt8: run(a.as<uint8_t>()); break;
    case DType::kInt8: run(a.as<int8_t>()); break;
    case DType::kUInt16: run(a.as<uint16_t>()); break;
    case DType::kInt16: run(a.as<int16_t>()); break;
    case DType::kUInt32: run(a.as<uint32_t>()); break;
    case DType::kInt32: run(a.as<int32_t>()); break;
    case DType::kUInt64: run(a.as<uint64_t>()); break;
    case DType::kInt64: run(a.as<int64_t>()); break;
    case DType::kFloat32: run(a.as<float>()); break;
    case DType::kFloat64: run(a.as<double>()); break;
  }
}

Volume Empty(const RawArray& raw) {
  Volume v;
  v.shape = raw.shape;
  v.spacing = raw.spacing;
  v.data.resize(static_cast<size_t>(raw.numel()));
  return v;
}

absl::Status CheckSize(const RawArray& raw) {
  if (raw.bytes.size() != static_cast<size_t>(raw.numel()) * DTypeSize(raw.dtype)) {
    return absl::InternalError(absl::StrCat(raw.source, ": array holds ", raw.bytes.size(),
                                            " bytes for shape ", raw.shape[0], "x", raw.shape[1], "x", raw.shape[2]));
  }
  if (raw.numel() == 0) return absl::InvalidArgumentError(absl::StrCat(raw.source, ": empty array"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Volume> ToImage(const RawArray& raw, IntensityScaling scaling) {
  if (absl::Status s = CheckSize(raw); !s.ok()) return s;
  Volume v = Empty(raw);
  if (raw.dtype == DType::kUInt8) {
    v.data.assign(raw.bytes.begin(), raw.bytes.end());
    return v;
  }
  if (scaling == IntensityScaling::kRequireUInt8) {
    return absl::FailedPreconditionError(absl::StrCat(
        raw.source, ": image is ", DTypeName(raw.dtype), ", training needs uint8; "
        "ask for min-max scaling (--scale minmax) or convert the file"));
  }
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  bool finite = true;
  ForEach(raw, [&](int64_t, double x) {
    if (!std::isfinite(x)) finite = false;
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  });
  if (!finite) return absl::InvalidArgumentError(absl::StrCat(raw.source, ": image holds NaN or infinite values"));
  const double scale = hi > lo ? 255.0 / (hi - lo) : 0.0;
  ForEach(raw, [&](int64_t i, double x) { v.data[i] = static_cast<uint8_t>(std::lround((x - lo) * scale)); });
  return v;
}

absl::StatusOr<Volume> ToMask(const RawArray& raw, MaskConvention convention) {
  if (absl::Status s = CheckSize(raw); !s.ok()) return s;
  Volume v = Empty(raw);
  if (convention == MaskConvention::kCremiClefts) {
    if (raw.dtype != DType::kUInt64) {
      return absl::FailedPreconditionError(absl::StrCat(raw.source, ": CREMI clefts must be uint64, got ",
                                                        DTypeName(raw.dtype)));
    }
    const uint64_t* p = raw.as<uint64_t>();
    for (int64_t i = 0; i < raw.numel(); ++i) v.data[i] = p[i] == ~uint64_t{0} ? 0 : 1;
    return v;
  }
  if (raw.dtype == DType::kFloat32 || raw.dtype == DType::kFloat64) {
    return absl::FailedPreconditionError(absl::StrCat(raw.source, ": masks must be integer, got ", DTypeName(raw.dtype)));
  }
  absl::Status bad;
  ForEach(raw, [&](int64_t i, double x) {
    if (!bad.ok()) return;
    if (convention == MaskConvention::kBinary) {
      if (x == 0) v.data[i] = 0;
      else if (x == 1 || x == 255) v.data[i] = 1;
      else bad = absl::InvalidArgumentError(absl::StrCat(raw.source, ": binary mask holds value ", x,
                                                         " at index ", i, " (expected 0/1 or 0/255)"));
    } else {
      if (x < 0 || x > 255) {
        bad = absl::InvalidArgumentError(absl::StrCat(raw.source, ": class index ", x, " at index ", i,
                                                      " outside 0..255"));
      } else {
        v.data[i] = static_cast<uint8_t>(x);
      }
    }
  });
  if (!bad.ok()) return bad;
  return v;
}

}  // namespace retina::trainer
