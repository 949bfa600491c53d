#include "trainer/prediction/suggest.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/data/formats/writers.h"
#include "trainer/data/formats/zarr.h"
#include "trainer/prediction/inference.h"

namespace retina::trainer {
namespace fs = std::filesystem;

double LabelBlock::Distance(const LabelBlock& o) const {
  const double dz = static_cast<double>(z - o.z);
  const double dy = (y + height / 2.0) - (o.y + o.height / 2.0);
  const double dx = (x + width / 2.0) - (o.x + o.width / 2.0);
  return std::sqrt(dz * dz + dy * dy + dx * dx);
}

absl::StatusOr<std::vector<Suggestion>> SuggestBlocks(const std::vector<float>& u, const std::array<int64_t, 3>& shape,
                                                      const SuggestOptions& o) {
  const auto [Z, Y, X] = shape;
  if (Z * Y * X <= 0 || static_cast<int64_t>(u.size()) != Z * Y * X) {
    return absl::InvalidArgumentError(absl::StrCat("uncertainty map: ", u.size(), " values for shape ", Z, "x", Y, "x", X));
  }
  if (o.block < 1) return absl::InvalidArgumentError("block: must be at least 1");
  const int64_t h = std::min(o.block, Y), w = std::min(o.block, X);
  const std::vector<int64_t> ys = WindowOrigins(Y, h, 0.5), xs = WindowOrigins(X, w, 0.5);
  // LabelBlock means from one summed-area table per plane.
  std::vector<Suggestion> candidates;
  std::vector<double> sat(static_cast<size_t>((Y + 1) * (X + 1)));
  for (int64_t z = 0; z < Z; ++z) {
    const float* p = u.data() + z * Y * X;
    for (int64_t r = 0; r < Y; ++r) {
      double row = 0;
      for (int64_t c = 0; c < X; ++c) {
        row += p[r * X + c];
        sat[(r + 1) * (X + 1) + c + 1] = sat[r * (X + 1) + c + 1] + row;
      }
    }
    for (int64_t y : ys) {
      for (int64_t x : xs) {
        LabelBlock b{z, y, x, h, w};
        if (std::any_of(o.labelled.begin(), o.labelled.end(), [&](const LabelBlock& l) { return l.Overlaps(b); })) continue;
        const double sum = sat[(y + h) * (X + 1) + x + w] - sat[y * (X + 1) + x + w] - sat[(y + h) * (X + 1) + x] +
                           sat[y * (X + 1) + x];
        candidates.push_back({0, b, sum / static_cast<double>(h * w)});
      }
    }
  }
  const double min_distance = o.min_distance > 0 ? o.min_distance : static_cast<double>(o.block) / 2;
  std::vector<Suggestion> out;
  auto take = [&](const Suggestion& s, bool distance) {
    for (const Suggestion& t : out) {
      if (t.block.Overlaps(s.block)) return false;
      if (distance && t.block.Distance(s.block) < min_distance) return false;
    }
    if (distance) {  // the rule holds against the blocks labelled before, too
      for (const LabelBlock& l : o.labelled) {
        if (l.Distance(s.block) < min_distance) return false;
      }
    }
    return true;
  };
  if (o.strategy == SelectionStrategy::kRandom) {
    std::mt19937_64 rng(o.seed);
    std::shuffle(candidates.begin(), candidates.end(), rng);
    for (const Suggestion& s : candidates) {
      if (static_cast<int>(out.size()) == o.count) break;
      if (take(s, false)) out.push_back(s);
    }
  } else {
    // Candidates are generated in (z, y, x) order: a stable sort keeps it for ties.
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const Suggestion& a, const Suggestion& b) { return a.score > b.score; });
    const bool diverse = o.strategy == SelectionStrategy::kUncertainty;
    for (const Suggestion& s : candidates) {
      if (static_cast<int>(out.size()) == o.count) break;
      if (!diverse || take(s, true)) out.push_back(s);
    }
  }
  for (size_t i = 0; i < out.size(); ++i) out[i].rank = static_cast<int>(i) + 1;
  return out;
}

absl::StatusOr<std::pair<std::vector<float>, std::array<int64_t, 3>>> ReadUncertaintyMap(const fs::path& dir) {
  ASSIGN_OR_RETURN(const ZarrArrayMeta m, ReadZarrArray(dir / "0"));
  if (m.shape.size() != 3 || (m.dtype != DType::kFloat32)) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir.string(), ": not an uncertainty map (expected a float16 or float32 z, y, x array at 0/)"));
  }
  const std::array<int64_t, 3> shape{m.shape[0], m.shape[1], m.shape[2]};
  const int64_t n = shape[0] * shape[1] * shape[2];
  std::vector<uint8_t> raw(static_cast<size_t>(n) * m.item_size());
  RETURN_IF_ERROR(ReadZarrRegion(dir / "0", m, {0, 0, 0}, {shape[0], shape[1], shape[2]}, raw.data()));
  std::vector<float> values(static_cast<size_t>(n));
  const torch::Tensor t = torch::from_blob(raw.data(), {n}, m.half ? torch::kHalf : torch::kFloat).to(torch::kFloat);
  std::memcpy(values.data(), t.data_ptr<float>(), values.size() * sizeof(float));
  return std::make_pair(std::move(values), shape);
}

absl::Status WriteSuggestions(const fs::path& dir, const std::vector<Suggestion>& suggestions, const Volume& image,
                              const std::string& unit) {
  RETURN_IF_ERROR(CreateDirectories(dir / "crops"));
  std::string table = "rank,z,y,x,height,width,score\n";
  std::string napari = "index,shape-type,vertex-index,axis-0,axis-1,axis-2\n";
  nlohmann::ordered_json boxes = nlohmann::ordered_json::array();
  for (const Suggestion& s : suggestions) {
    const LabelBlock& b = s.block;
    if (b.z < 0 || b.z >= image.shape[0] || b.y + b.height > image.shape[1] || b.x + b.width > image.shape[2]) {
      return absl::InvalidArgumentError(absl::StrCat("suggestion ", s.rank, " lies outside the image"));
    }
    absl::StrAppend(&table, s.rank, ",", b.z, ",", b.y, ",", b.x, ",", b.height, ",", b.width, ",",
                    absl::StrFormat("%.6f", s.score), "\n");
    // napari rectangle vertices: (y0, x0), (y0, x1), (y1, x1), (y1, x0) on plane z.
    const int64_t corners[4][2] = {{b.y, b.x}, {b.y, b.x + b.width}, {b.y + b.height, b.x + b.width}, {b.y + b.height, b.x}};
    for (int v = 0; v < 4; ++v) {
      absl::StrAppend(&napari, s.rank - 1, ",rectangle,", v, ",", b.z, ",", corners[v][0], ",", corners[v][1], "\n");
    }
    boxes.push_back({{"type", "axis_aligned_bounding_box"},
                     {"id", std::to_string(s.rank)},
                     {"pointA", {b.x, b.y, b.z}},
                     {"pointB", {b.x + b.width, b.y + b.height, b.z + 1}},
                     {"description", absl::StrFormat("rank %d, mean uncertainty %.4f", s.rank, s.score)}});
    Volume crop;
    crop.shape = {1, b.height, b.width};
    crop.spacing = image.spacing;
    crop.data.resize(static_cast<size_t>(b.height * b.width));
    for (int64_t r = 0; r < b.height; ++r) {
      std::memcpy(crop.data.data() + r * b.width, image.plane(b.z) + (b.y + r) * image.shape[2] + b.x,
                  static_cast<size_t>(b.width));
    }
    RETURN_IF_ERROR(WriteTiff((dir / "crops" / absl::StrFormat("rank-%03d.tif", s.rank)).string(), crop, true));
  }
  // Neuroglancer: dimensions x, y, z in metres (its convention) when the unit
  // is known, else in voxels.
  const std::optional<double> um = MicrometresPer(unit);
  auto dim = [&](double spacing) {
    return um ? nlohmann::ordered_json{spacing * *um * 1e-6, "m"} : nlohmann::ordered_json{1, ""};
  };
  nlohmann::ordered_json layer = {
      {"type", "annotation"},
      {"name", "retina suggestions"},
      {"source", {{"url", "local://annotations"},
                  {"transform", {{"outputDimensions", {{"x", dim(image.spacing[2])},
                                                       {"y", dim(image.spacing[1])},
                                                       {"z", dim(image.spacing[0])}}}}}}},
      {"annotationColor", "#ffcc00"},
      {"annotations", boxes}};
  RETURN_IF_ERROR(WriteFileAtomic(dir / "suggestions.csv", table));
  RETURN_IF_ERROR(WriteFileAtomic(dir / "suggestions.napari.csv", napari));
  return WriteFileAtomic(dir / "suggestions.neuroglancer.json", layer.dump(2) + "\n");
}

absl::StatusOr<std::vector<LabelBlock>> ReadSuggestionBlocks(const fs::path& csv) {
  ASSIGN_OR_RETURN(const std::string text, ReadFile(csv), csv.string());
  std::vector<LabelBlock> out;
  int line = 0;
  for (absl::string_view row : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (++line == 1) continue;  // header
    std::vector<std::string> f = absl::StrSplit(row, ',');
    LabelBlock b;
    if (f.size() < 6 || !absl::SimpleAtoi(f[1], &b.z) || !absl::SimpleAtoi(f[2], &b.y) ||
        !absl::SimpleAtoi(f[3], &b.x) || !absl::SimpleAtoi(f[4], &b.height) || !absl::SimpleAtoi(f[5], &b.width)) {
      return absl::InvalidArgumentError(absl::StrCat(csv.string(), ":", line, ": expected rank,z,y,x,height,width,..."));
    }
    out.push_back(b);
  }
  return out;
}

}  // namespace retina::trainer
