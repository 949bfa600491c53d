#include "trainer/prediction/zarr_prediction.h"

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace retina::trainer {
namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

constexpr const char* kOwnerFile = ".retina/job.json";
constexpr const char* kDoneDir = ".retina/done";

// <name>.ome.zarr -> <name>.<what>.ome.zarr beside it.
fs::path Sibling(const fs::path& dir, const std::string& what) {
  std::string name = dir.filename().string();
  const std::string suffix = ".ome.zarr";
  if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
    name.resize(name.size() - suffix.size());
  }
  return dir.parent_path() / (name + "." + what + ".ome.zarr");
}

// Collects the planes PredictVolumeStreaming appends for one chunk row.
class RowSink : public PlaneWriter {
 public:
  RowSink(int64_t planes, int64_t plane_voxels, int64_t channels)
      : plane_(plane_voxels), channels_(channels), labels_(static_cast<size_t>(planes * plane_voxels)) {
    if (channels > 0) probabilities_ = torch::empty({channels, planes, plane_voxels});
  }
  absl::Status Append(int64_t n, const uint8_t* labels, const float* probabilities, int64_t channels) override {
    if (z_ + n > static_cast<int64_t>(labels_.size()) / plane_) return absl::InternalError("row overflow");
    std::memcpy(labels_.data() + z_ * plane_, labels, static_cast<size_t>(n * plane_));
    if (channels_ > 0) {
      if (channels != channels_) return absl::InternalError("row: channel count changed");
      const torch::Tensor p = torch::from_blob(const_cast<float*>(probabilities), {channels, n, plane_});
      probabilities_.slice(1, z_, z_ + n).copy_(p);
    }
    z_ += n;
    return absl::OkStatus();
  }
  absl::Status Finish() override { return absl::OkStatus(); }
  const std::vector<uint8_t>& labels() const { return labels_; }
  const torch::Tensor& probabilities() const { return probabilities_; }

 private:
  int64_t plane_, channels_, z_ = 0;
  std::vector<uint8_t> labels_;
  torch::Tensor probabilities_;  // [C, n, Y * X] float
};

// The probabilities as stored: uint8 round(255 p), float16 or float32 bytes.
torch::Tensor StoredProbabilities(const torch::Tensor& p, ProbabilityOutput kind) {
  switch (kind) {
    case ProbabilityOutput::kUInt8: return (p * 255.0).round_().clamp_(0, 255).to(torch::kByte).contiguous();
    case ProbabilityOutput::kFloat16: return p.to(torch::kHalf).contiguous();
    default: return p.contiguous();
  }
}

}  // namespace

std::vector<std::pair<std::array<int64_t, 3>, std::array<int, 3>>> PyramidLevels(const std::array<int64_t, 3>& shape,
                                                                                  const std::array<int64_t, 3>& chunks,
                                                                                  int levels) {
  std::vector<std::pair<std::array<int64_t, 3>, std::array<int, 3>>> out{{shape, {1, 1, 1}}};
  const int limit = levels > 0 ? levels : 16;
  while (static_cast<int>(out.size()) < limit) {
    const std::array<int64_t, 3>& s = out.back().first;
    if (levels == 0 && s[1] <= chunks[1] && s[2] <= chunks[2]) break;
    if (s[1] == 1 && s[2] == 1) break;  // nothing left to halve in y, x
    std::array<int, 3> f{};
    std::array<int64_t, 3> next{};
    for (int a = 0; a < 3; ++a) {
      f[a] = s[a] > 1 ? 2 : 1;
      next[a] = (s[a] + f[a] - 1) / f[a];
    }
    out.push_back({next, f});
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ZarrPrediction>> ZarrPrediction::Plan(const fs::path& dir,
                                                                      const std::array<int64_t, 3>& shape,
                                                                      const std::array<double, 3>& spacing,
                                                                      const std::string& unit, int classes,
                                                                      const ZarrPredictionOptions& o,
                                                                      const std::string& job,
                                                                      const std::string& fingerprint) {
  std::unique_ptr<ZarrPrediction> p(new ZarrPrediction());
  p->dir_ = dir;
  p->spacing_ = spacing;
  p->unit_ = NgffUnit(unit);
  p->classes_ = classes;
  p->options_ = o;
  p->job_ = job;
  p->fingerprint_ = fingerprint;
  for (const auto& [level_shape, factor] : PyramidLevels(shape, o.chunks, o.levels)) {
    ZarrArrayMeta m;
    for (int a = 0; a < 3; ++a) {
      m.shape.push_back(level_shape[a]);
      m.chunks.push_back(std::min(o.chunks[a], std::max<int64_t>(1, level_shape[a])));
    }
    m.compressor = o.compressor;
    m.level = o.level;
    p->meta_.push_back(m);
    p->factors_.push_back(factor);
  }
  if (o.probabilities != ProbabilityOutput::kNone) {
    ZarrArrayMeta& m = p->probabilities_;
    m.shape = {classes, shape[0], shape[1], shape[2]};
    m.chunks = {1, p->meta_[0].chunks[0], p->meta_[0].chunks[1], p->meta_[0].chunks[2]};
    m.dtype = o.probabilities == ProbabilityOutput::kUInt8 ? DType::kUInt8 : DType::kFloat32;
    m.half = o.probabilities == ProbabilityOutput::kFloat16;
    m.compressor = o.compressor;
    m.level = o.level;
  }
  if (o.uncertainty) {
    ZarrArrayMeta& m = p->uncertainty_;
    m.shape = p->meta_[0].shape;
    m.chunks = p->meta_[0].chunks;
    m.dtype = DType::kFloat32;
    m.half = true;
    m.compressor = o.compressor;
    m.level = o.level;
  }
  // What is there already.
  for (const fs::path& d : {dir, p->probabilities_dir(), p->uncertainty_dir()}) {
    std::error_code ec;
    if (!fs::exists(d, ec)) continue;
    if (fs::is_directory(d, ec) && fs::is_empty(d, ec)) continue;
    absl::StatusOr<std::string> owner = ReadFile(dir / kOwnerFile);
    if (!owner.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          d.string(), " exists and was not written by an infer job; remove it or choose another infer.output"));
    }
    const Json j = Json::parse(*owner, nullptr, false);
    if (!j.is_object() || j.value("job", "") != job) {
      return absl::FailedPreconditionError(
          absl::StrCat(d.string(), " belongs to job '", j.is_object() ? j.value("job", "?") : "?",
                       "'; remove it or choose another infer.output"));
    }
    if (j.value("fingerprint", "") != fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat(
          d.string(), " was written by this job with other settings (weights, mode, overlap, chunks or outputs); "
                      "remove it to start over"));
    }
  }
  return p;
}

fs::path ZarrPrediction::probabilities_dir() const { return Sibling(dir_, "probabilities"); }
fs::path ZarrPrediction::uncertainty_dir() const { return Sibling(dir_, "uncertainty"); }

absl::Status ZarrPrediction::Prepare() const {
  RETURN_IF_ERROR(CreateDirectories(dir_ / kDoneDir));
  const Json owner = {{"v", 1}, {"job", job_}, {"fingerprint", fingerprint_}, {"written_by", "retina infer"}};
  RETURN_IF_ERROR(WriteFileAtomic(dir_ / kOwnerFile, owner.dump(2) + "\n"));
  for (size_t l = 0; l < meta_.size(); ++l) RETURN_IF_ERROR(CreateZarrArray(dir_ / std::to_string(l), meta_[l]));
  if (options_.probabilities != ProbabilityOutput::kNone) {
    RETURN_IF_ERROR(CreateDirectories(probabilities_dir() / ".retina"));
    RETURN_IF_ERROR(WriteFileAtomic(probabilities_dir() / kOwnerFile, owner.dump(2) + "\n"));
    RETURN_IF_ERROR(CreateZarrArray(probabilities_dir() / "0", probabilities_));
  }
  if (options_.uncertainty) {
    RETURN_IF_ERROR(CreateDirectories(uncertainty_dir() / ".retina"));
    RETURN_IF_ERROR(WriteFileAtomic(uncertainty_dir() / kOwnerFile, owner.dump(2) + "\n"));
    RETURN_IF_ERROR(CreateZarrArray(uncertainty_dir() / "0", uncertainty_));
  }
  return absl::OkStatus();
}

int64_t ZarrPrediction::RowVoxels(int64_t row) const {
  const ZarrArrayMeta& m = meta_[0];
  const int64_t z0 = row * m.chunks[0], z1 = std::min(m.shape[0], z0 + m.chunks[0]);
  return (z1 - z0) * m.shape[1] * m.shape[2];
}

bool ZarrPrediction::RowDone(int64_t row) const {
  std::error_code ec;
  return fs::exists(dir_ / kDoneDir / std::to_string(row), ec);
}

int64_t ZarrPrediction::RowsDone() const {
  std::error_code ec;
  int64_t n = 0;
  for (fs::directory_iterator it(dir_ / kDoneDir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename().string().front() != '.') ++n;  // not a temporary
  }
  return n;
}

absl::Status ZarrPrediction::PredictRow(int64_t row, PlaneReader& in, const RowPredictor& p,
                                        VolumeStreamStats* stats) const {
  const ZarrArrayMeta& m = meta_[0];
  const int64_t z0 = row * m.chunks[0], z1 = std::min(m.shape[0], z0 + m.chunks[0]), n = z1 - z0;
  const int64_t Y = m.shape[1], X = m.shape[2];
  const bool probs = options_.probabilities != ProbabilityOutput::kNone;
  const bool keep = probs || options_.uncertainty;  // the uncertainty comes from the probabilities
  RowSink sink(n, Y * X, keep ? classes_ : 0);
  // The row's own buffers come out of the budget; the rest sizes the slabs.
  const int64_t held = n * Y * X * (1 + (keep ? 4 * classes_ : 0) + (options_.uncertainty ? 2 : 0));
  const int64_t slab = SlabPlanesForBudget({m.shape[0], Y, X}, classes_, p.mode, p.window,
                                           std::max<int64_t>(p.memory_bytes - held, 1));
  ASSIGN_OR_RETURN(VolumeStreamStats s, PredictVolumeStreaming(p.forward, in, p.mean, p.std, p.mode, p.window, slab,
                                                               keep, sink, nullptr, {z0, z1}));
  if (stats != nullptr) {
    stats->slabs += s.slabs;
    stats->slab_planes = std::max(stats->slab_planes, s.slab_planes);
    stats->planes_predicted += s.planes_predicted;
    stats->windows += s.windows;
  }
  RETURN_IF_ERROR(WriteZarrRegion(dir_ / "0", m, {z0, 0, 0}, {n, Y, X}, sink.labels().data()));
  if (probs) {
    const torch::Tensor stored = StoredProbabilities(sink.probabilities(), options_.probabilities);
    RETURN_IF_ERROR(WriteZarrRegion(probabilities_dir() / "0", probabilities_, {0, z0, 0, 0}, {classes_, n, Y, X},
                                    stored.data_ptr()));
  }
  if (options_.uncertainty) {
    const torch::Tensor u = NormalisedEntropy(sink.probabilities()).to(torch::kHalf).contiguous();  // [n, Y * X]
    RETURN_IF_ERROR(WriteZarrRegion(uncertainty_dir() / "0", uncertainty_, {z0, 0, 0}, {n, Y, X}, u.data_ptr()));
  }
  // The marker last: a row without one is predicted again.
  return WriteFileAtomic(dir_ / kDoneDir / std::to_string(row), absl::StrCat(z0, " ", z1, "\n"));
}

absl::Status ZarrPrediction::DownsampleRow(int level, int64_t row) const {
  const ZarrArrayMeta& below = meta_[level - 1];
  const ZarrArrayMeta& m = meta_[level];
  const std::array<int, 3>& f = factors_[level];
  const int64_t z0 = row * m.chunks[0], z1 = std::min(m.shape[0], z0 + m.chunks[0]);
  const int64_t b0 = z0 * f[0], b1 = std::min(below.shape[0], z1 * f[0]);
  std::vector<uint8_t> in(static_cast<size_t>((b1 - b0) * below.shape[1] * below.shape[2]));
  const fs::path from = dir_ / std::to_string(level - 1);
  RETURN_IF_ERROR(ReadZarrRegion(from, below, {b0, 0, 0}, {b1 - b0, below.shape[1], below.shape[2]}, in.data()));
  const std::vector<uint8_t> out = DownsampleLabelsMode(in.data(), {b1 - b0, below.shape[1], below.shape[2]}, f);
  return WriteZarrRegion(dir_ / std::to_string(level), m, {z0, 0, 0}, {z1 - z0, m.shape[1], m.shape[2]}, out.data());
}

absl::Status ZarrPrediction::Finish() const {
  const std::vector<OmeAxis> space = {{"z", "space", unit_}, {"y", "space", unit_}, {"x", "space", unit_}};
  std::string name = dir_.filename().string();
  if (absl::EndsWith(name, ".ome.zarr")) name.resize(name.size() - 9);
  if (options_.probabilities != ProbabilityOutput::kNone) {
    OmeImage probs;
    probs.name = name + " probabilities";
    probs.axes = {{"c", "channel", ""}};
    probs.axes.insert(probs.axes.end(), space.begin(), space.end());
    probs.levels = {{"0", {1.0, spacing_[0], spacing_[1], spacing_[2]}}};
    RETURN_IF_ERROR(WriteOmeZarrImage(probabilities_dir(), probs));
  }
  if (options_.uncertainty) {
    OmeImage u;
    u.name = name + " uncertainty";
    u.axes = space;
    u.levels = {{"0", {spacing_[0], spacing_[1], spacing_[2]}}};
    RETURN_IF_ERROR(WriteOmeZarrImage(uncertainty_dir(), u));
  }
  OmeImage labels;
  labels.name = name;
  labels.axes = space;
  labels.type = "mode";
  labels.label = true;
  std::array<double, 3> scale = spacing_;
  for (size_t l = 0; l < meta_.size(); ++l) {
    for (int a = 0; a < 3; ++a) scale[a] *= factors_[l][a];
    labels.levels.push_back({std::to_string(l), {scale[0], scale[1], scale[2]}});
  }
  return WriteOmeZarrImage(dir_, labels);  // last: the image is finished
}

bool ZarrPrediction::finished() const {
  std::error_code ec;
  return fs::exists(dir_ / ".zattrs", ec);
}

}  // namespace retina::trainer
