#include "trainer/serving/serving_core.h"

#include <stdlib.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/config_schema.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "trainer/data/formats/format_util.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"
#include "trainer/data/formats/zarr.h"
#include "trainer/prediction/inference.h"

namespace retina::trainer::serving {
namespace fs = std::filesystem;

namespace {

// A batcher refusal inside the sliding-window pass, carried out of it.
struct StatusError {
  absl::Status status;
};

absl::StatusOr<DType> InputDType(const std::string& word) {
  if (word == "uint8") return DType::kUInt8;
  if (word == "uint16") return DType::kUInt16;
  if (word == "int16") return DType::kInt16;
  if (word == "float32") return DType::kFloat32;
  return absl::InvalidArgumentError(
      absl::StrCat("array.dtype: '", word, "' is not an input type here (uint8, uint16, int16, float32)"));
}

absl::StatusOr<RawArray> ToRaw(const ArrayInput& a) {
  RawArray raw;
  ASSIGN_OR_RETURN(raw.dtype, InputDType(a.dtype));
  if (a.shape.size() != 2 && a.shape.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat("array.shape: ", a.shape.size(),
                                                   " axes; give [y, x] or [z, y, x]"));
  }
  int64_t numel = 1;
  for (size_t i = 0; i < a.shape.size(); ++i) {
    if (a.shape[i] < 1 || a.shape[i] > (int64_t{1} << 24)) {
      return absl::InvalidArgumentError(absl::StrCat("array.shape[", i, "]: ", a.shape[i], " is not a size"));
    }
    numel *= a.shape[i];
    if (numel > (int64_t{1} << 40)) return absl::InvalidArgumentError("array.shape: too many voxels");
  }
  const size_t off = 3 - a.shape.size();
  raw.shape = {1, 1, 1};
  for (size_t i = 0; i < a.shape.size(); ++i) raw.shape[off + i] = a.shape[i];
  if (static_cast<int64_t>(a.data.size()) != numel * static_cast<int64_t>(DTypeSize(raw.dtype))) {
    return absl::InvalidArgumentError(absl::StrCat("array.data: ", a.data.size(), " bytes, but shape [",
                                                   absl::StrJoin(a.shape, ", "), "] of ", a.dtype, " needs ",
                                                   numel * static_cast<int64_t>(DTypeSize(raw.dtype))));
  }
  if (!a.spacing.empty()) {
    if (a.spacing.size() != a.shape.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("array.spacing: ", a.spacing.size(), " values for ", a.shape.size(), " axes"));
    }
    for (size_t i = 0; i < a.spacing.size(); ++i) {
      if (!(a.spacing[i] > 0)) return absl::InvalidArgumentError(absl::StrCat("array.spacing[", i, "] must be > 0"));
      raw.spacing[off + i] = a.spacing[i];
    }
    raw.has_spacing = true;
  }
  raw.unit = a.unit;
  raw.source = "array";
  raw.bytes.assign(a.data.begin(), a.data.end());
  return raw;
}

// A private directory for one upload, removed with this object.
class ScratchDir {
 public:
  // A fresh directory under `parent` with an unguessable name (mkdtemp): an
  // upload that references another file (an NRRD data file) cannot name a
  // concurrent upload's.
  static absl::StatusOr<ScratchDir> Make(const fs::path& parent, const std::string& prefix) {
    std::string t = (parent / (prefix + "XXXXXX")).string();
    if (mkdtemp(t.data()) == nullptr) return absl::InternalError(absl::StrCat(t, ": ", std::strerror(errno)));
    return ScratchDir(t);
  }
  ScratchDir(ScratchDir&& o) noexcept : dir_(std::move(o.dir_)) { o.dir_.clear(); }
  ScratchDir(const ScratchDir&) = delete;
  explicit ScratchDir(fs::path dir) : dir_(std::move(dir)) {}
  ~ScratchDir() {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }
  const fs::path& path() const { return dir_; }

 private:
  fs::path dir_;
};

absl::StatusOr<IntensityScaling> Scaling(const std::string& word) {
  if (word.empty()) return IntensityScaling::kRequireUInt8;
  if (word == "minmax") return IntensityScaling::kMinMax;
  return absl::InvalidArgumentError(absl::StrCat("scaling: '", word, "' (give minmax, or nothing for uint8 inputs)"));
}

// A region volume's file part (an HDF5 spec is "file.h5:/dataset"), split
// as the readers split it.
std::string FilePart(const std::string& spec) {
  const std::optional<std::pair<std::string, std::string>> h5 = SplitHdf5Spec(spec);
  return h5 ? h5->first : spec;
}

// A user name as one path component (served/<user>/): a token file's user
// could be anything.
bool SafeComponent(const std::string& s) {
  if (s.empty() || s == "." || s == ".." || s.size() > 128) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' && c != '@') return false;
  }
  return true;
}

// Uploads: the readers' names, and HDF5 (whose dataset comes separately).
bool UploadName(const std::string& name) {
  const std::string l = absl::AsciiStrToLower(name);
  return IsReadableImageName(name) || absl::EndsWith(l, ".h5") || absl::EndsWith(l, ".hdf5") || absl::EndsWith(l, ".hdf");
}

// <output> under served/<user>/: relative, no "..", ending in .ome.zarr.
absl::StatusOr<fs::path> OutputPath(const fs::path& store, const std::string& user, const std::string& output) {
  if (!SafeComponent(user)) {
    return absl::PermissionDeniedError(absl::StrCat("output: the user name '", user.substr(0, 64),
                                                    "' cannot name a folder; ask an admin to rename it in the token file"));
  }
  const fs::path rel = output;
  bool ok = !output.empty() && rel.is_relative() && absl::EndsWith(output, ".ome.zarr");
  for (const auto& part : rel) ok = ok && part != ".." && part != "." && !part.empty();
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output: '", output, "': give a relative name ending in .ome.zarr, without '..' (it is written under ",
        (store / "served" / user).string(), ")"));
  }
  return store / "served" / user / rel;
}

// The output array's chunks: an existing array's, else the request's (or
// 64, 256, 256) clipped to the volume; INVALID_ARGUMENT for chunks so small
// that the store would hold a file per few voxels, or a region off their grid.
absl::StatusOr<std::vector<int64_t>> OutputChunks(const fs::path& dir, const std::vector<int64_t>& requested,
                                                  const std::array<int64_t, 3>& shape, const std::array<int64_t, 6>& b) {
  std::vector<int64_t> chunks = {64, 256, 256};
  std::error_code ec;
  if (fs::exists(dir / "0" / ".zarray", ec)) {
    ASSIGN_OR_RETURN(ZarrArrayMeta meta, ReadZarrArray(dir / "0"), "output");
    chunks = meta.chunks;
  } else {
    if (!requested.empty()) {
      if (requested.size() != 3) return absl::InvalidArgumentError("output_chunks: give z, y, x");
      chunks.assign(requested.begin(), requested.end());
    }
    int64_t voxels = 1;
    for (int a = 0; a < 3; ++a) {
      if (chunks[a] < 1) return absl::InvalidArgumentError("output_chunks: each must be >= 1");
      chunks[a] = std::min(chunks[a], shape[a]);
      voxels *= chunks[a];
    }
    if (voxels < 4096 && voxels < shape[0] * shape[1] * shape[2]) {
      return absl::InvalidArgumentError(absl::StrCat("output_chunks: ", absl::StrJoin(chunks, "x"),
                                                     " is under 4096 voxels a chunk (a file each in the store)"));
    }
  }
  if (chunks.size() != 3) return absl::FailedPreconditionError("output: the existing array is not z, y, x");
  for (int a = 0; a < 3; ++a) {
    const int64_t lo = b[2 * a], hi = b[2 * a + 1];
    if (lo % chunks[a] != 0 || (hi % chunks[a] != 0 && hi != shape[a])) {
      return absl::InvalidArgumentError(absl::StrCat("region: ", std::string(1, "zyx"[a]), " ", lo, ":", hi,
                                                     " is not on the output's chunk grid (chunks ",
                                                     absl::StrJoin(chunks, "x"),
                                                     "): start on a multiple and end on one or at the volume's edge"));
    }
  }
  return chunks;
}

}  // namespace

ServingCore::ServingCore(ServingOptions options, ModelPool* models, WindowBatcher* batcher)
    : options_(std::move(options)),
      policy_(options_.store, options_.allowed_roots),
      models_(models),
      batcher_(batcher) {}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ServingCore::ModelFor(const std::string& user, bool admin,
                                                                         const std::string& model) const {
  if (model.empty()) return absl::InvalidArgumentError("model: name the model (ListModels lists them)");
  absl::StatusOr<std::shared_ptr<const LoadedModel>> found = models_->Get(model);
  if (!found.ok()) {  // name only the models this caller may use
    std::vector<std::string> names;
    for (const ModelStatus& s : models_->List()) {
      if (s.spec.owner.empty() || s.spec.owner == user || admin) names.push_back(s.spec.name);
    }
    return absl::NotFoundError(absl::StrCat("model: no model '", model.substr(0, 128), "' here (yours: ",
                                            names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
  }
  std::shared_ptr<const LoadedModel> m = *found;
  if (!m->spec.owner.empty() && m->spec.owner != user && !admin) {
    return absl::PermissionDeniedError(absl::StrCat("model: '", model, "' is ", m->spec.owner,
                                                    "'s; only its owner or an admin may use it (you are ", user, ")"));
  }
  return m;
}

int64_t ServingCore::RequestBytes(const std::array<int64_t, 3>& shape, int classes, bool orthoplane,
                                  bool probabilities, int64_t window) {
  const int64_t voxels = shape[0] * shape[1] * shape[2], c = std::max(1, classes);
  // A plane smaller than the window is padded up to it (SlidingWindowRows).
  const int64_t plane = std::max(shape[1], window) * std::max(shape[2], window);
  int64_t bytes = voxels * 2 + plane * 4 * (2 * c + 3);  // input, labels, one plane's working set
  if (orthoplane || probabilities) bytes += voxels * 4 * c;  // the accumulator
  if (probabilities) bytes += voxels * 4 * c;                // the answer's copy
  return bytes;
}

absl::StatusOr<PredictAnswer> ServingCore::Predict(const PredictQuery& q) {
  ASSIGN_OR_RETURN(std::shared_ptr<const LoadedModel> model, ModelFor(q.user, q.admin, q.model));
  const SegmentationModel& m = model->model;
  std::optional<PredictionMode> mode = q.mode.empty() ? PredictionMode::kStack : EnumFromName<PredictionMode>(q.mode);
  if (!mode) return absl::InvalidArgumentError(absl::StrCat("mode: '", q.mode, "' (2d, stack or orthoplane)"));
  const bool ortho = *mode == PredictionMode::kOrthoplane;
  ASSIGN_OR_RETURN(IntensityScaling scaling, Scaling(q.scaling));
  // At most 0.95 (as retina predict): a window step of 1 would run window^2 times the windows.
  if (q.overlap && !(*q.overlap >= 0 && *q.overlap <= 0.95)) {
    return absl::InvalidArgumentError("overlap: must be in [0, 0.95]");
  }
  const RegionInput* region = std::get_if<RegionInput>(&q.input);
  if (!q.output.empty() && region == nullptr) return absl::InvalidArgumentError("output: only for region requests");
  if (!q.output.empty() && (q.probabilities || q.uncertainty)) {
    return absl::InvalidArgumentError(absl::StrCat(q.probabilities ? "probabilities" : "uncertainty",
                                                   ": answered inline only, not with output"));
  }
  const bool keep = q.probabilities || q.uncertainty;  // the uncertainty comes from the probabilities
  if (!q.output.empty()) RETURN_IF_ERROR(OutputPath(options_.store, q.user, q.output).status());
  const int classes = m.config.num_classes;

  // The volume to predict (`crop`, with its context) and where the answer lies in it.
  Volume crop;
  std::string unit;
  std::array<int64_t, 3> volume_shape{0, 0, 0}, at{0, 0, 0}, extent{0, 0, 0};
  bool two_d = false;
  if (region == nullptr) {
    RawArray raw;
    if (const auto* a = std::get_if<ArrayInput>(&q.input)) {
      ASSIGN_OR_RETURN(raw, ToRaw(*a));
      two_d = a->shape.size() == 2;
      if (int64_t need = RequestBytes(raw.shape, classes, ortho, keep, m.config.image_size);
          need > options_.max_request_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat("array: ", need >> 20, " MiB of buffers; this server answers at most ",
                                                         options_.max_request_bytes >> 20,
                                                         " MiB per request (retina-serve --max-request-mb)"));
      }
    } else {
      const auto& f = std::get<FileInput>(q.input);
      const std::string name = fs::path(f.name).filename().string();
      if (name.empty() || !UploadName(name)) {
        return absl::InvalidArgumentError(absl::StrCat("file.name: '", f.name,
                                                       "': give the file's name with its extension (.tif, .png, "
                                                       ".h5, .nii, .nrrd)"));
      }
      ASSIGN_OR_RETURN(ScratchDir dir, ScratchDir::Make(options_.scratch, "upload-"));
      RETURN_IF_ERROR(WriteFileAtomic(dir.path() / name, f.data));
      const std::string spec = (dir.path() / name).string() + (f.dataset.empty() ? "" : ":" + f.dataset);
      absl::StatusOr<RawArray> read = ReadArray(spec);
      if (!read.ok()) return absl::InvalidArgumentError(absl::StrCat("file '", f.name, "': ", read.status().message()));
      raw = std::move(*read);
      two_d = raw.shape[0] == 1;
      // (A compressed file is decoded before its size is known; the decoded
      // array is bounded like an inline one from here on.)
      if (int64_t need = RequestBytes(raw.shape, classes, ortho, keep, m.config.image_size) +
                         static_cast<int64_t>(raw.bytes.size());
          need > options_.max_request_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat("file '", f.name, "': ", need >> 20,
                                                         " MiB of buffers; this server answers at most ",
                                                         options_.max_request_bytes >> 20,
                                                         " MiB per request (retina-serve --max-request-mb)"));
      }
    }
    absl::StatusOr<Volume> image = ToImage(raw, scaling);
    if (!image.ok()) return absl::InvalidArgumentError(std::string(image.status().message()));
    crop = std::move(*image);
    unit = raw.unit;
    volume_shape = extent = crop.shape;
  } else {
    if (region->volume.empty()) return absl::InvalidArgumentError("region.volume: name a volume in the store");
    const fs::path path = policy_.WeightsPath(FilePart(region->volume));
    RETURN_IF_ERROR(policy_.Check("region.volume", path));
    std::string spec = region->volume;
    if (fs::path(FilePart(spec)).is_relative()) spec = (options_.store / spec).string();
    absl::StatusOr<std::unique_ptr<PlaneReader>> reader = OpenPlaneReader(spec, scaling);
    if (!reader.ok()) return absl::Status(reader.status().code(), absl::StrCat("region.volume: ", reader.status().message()));
    PlaneReader& in = **reader;
    volume_shape = in.shape();
    std::array<int64_t, 6> box = region->box;
    if (box == std::array<int64_t, 6>{0, 0, 0, 0, 0, 0}) box = {0, volume_shape[0], 0, volume_shape[1], 0, volume_shape[2]};
    static const char* kNames[] = {"z", "y", "x"};
    for (int a = 0; a < 3; ++a) {
      const int64_t lo = box[2 * a], hi = box[2 * a + 1];
      if (lo < 0 || hi > volume_shape[a] || lo >= hi) {
        return absl::InvalidArgumentError(absl::StrCat("region.", kNames[a], "0:", kNames[a], "1: ", lo, ":", hi,
                                                       " is empty or outside the volume's ", kNames[a], " extent 0:",
                                                       volume_shape[a], " (", region->volume, ")"));
      }
    }
    if (!q.output.empty()) {  // before any work: the output's name and chunk grid
      ASSIGN_OR_RETURN(fs::path dir, OutputPath(options_.store, q.user, q.output));
      RETURN_IF_ERROR(OutputChunks(dir, q.output_chunks, volume_shape, box).status());
    }
    int64_t context = q.context.value_or(m.config.image_size / 2);
    if (context < 0) return absl::InvalidArgumentError("context: must be >= 0");
    context = std::min(context, std::max({volume_shape[0], volume_shape[1], volume_shape[2]}));  // no overflow
    std::array<int64_t, 3> c0, c1;
    for (int a = 0; a < 3; ++a) {
      const int64_t c = a == 0 && !ortho ? 0 : context;
      c0[a] = std::max<int64_t>(0, box[2 * a] - c);
      c1[a] = std::min(volume_shape[a], box[2 * a + 1] + c);
      at[a] = box[2 * a] - c0[a];
      extent[a] = box[2 * a + 1] - box[2 * a];
    }
    crop.shape = {c1[0] - c0[0], c1[1] - c0[1], c1[2] - c0[2]};
    const int64_t planes_bytes = crop.shape[0] * volume_shape[1] * volume_shape[2];
    if (int64_t need = planes_bytes + RequestBytes(crop.shape, classes, ortho, keep, m.config.image_size);
        need > options_.max_request_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "region: ", need >> 20, " MiB of buffers with its context; this server answers at most ",
          options_.max_request_bytes >> 20, " MiB per request (retina-serve --max-request-mb): ask for smaller regions, "
          "or run an infer job for whole volumes"));
    }
    std::vector<uint8_t> planes(static_cast<size_t>(planes_bytes));
    RETURN_IF_ERROR(in.Read(c0[0], c1[0], planes.data()), "region.volume " + region->volume);
    crop.data.resize(static_cast<size_t>(crop.numel()));
    for (int64_t z = 0; z < crop.shape[0]; ++z) {
      for (int64_t y = 0; y < crop.shape[1]; ++y) {
        std::memcpy(crop.data.data() + (z * crop.shape[1] + y) * crop.shape[2],
                    planes.data() + (z * volume_shape[1] + c0[1] + y) * volume_shape[2] + c0[2],
                    static_cast<size_t>(crop.shape[2]));
      }
    }
    crop.spacing = in.spacing();
    unit = in.has_spacing() ? in.unit() : "";
  }

  SlidingWindowOptions so;
  so.window = m.config.image_size;
  so.overlap = q.overlap.value_or(crop.shape[0] > 1 ? 0.7 : 0.5);  // retina-infer's defaults for the crop
  so.batch = model->spec.max_batch;
  int64_t windows = 0;
  const WindowForward forward = [&](const torch::Tensor& x) {
    windows += x.size(0);
    absl::StatusOr<torch::Tensor> logits = batcher_->Run(model, x, q.deadline, q.cancelled);
    if (!logits.ok()) throw StatusError{logits.status()};
    return *logits;
  };
  absl::StatusOr<VolumePrediction> prediction = absl::InternalError("not run");
  try {
    prediction = PredictVolume(forward, crop, m.mean, m.std, *mode, so, keep, nullptr);
  } catch (const StatusError& e) {
    return e.status;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("prediction failed: ", e.what()));
  }
  RETURN_IF_ERROR(prediction.status());

  PredictAnswer answer;
  answer.model = model->spec.name;
  answer.checkpoint = model->checkpoint.string();
  answer.windows = windows;
  answer.unit = unit;
  // The region's part of the crop's prediction.
  std::vector<uint8_t> labels(static_cast<size_t>(extent[0] * extent[1] * extent[2]));
  for (int64_t z = 0; z < extent[0]; ++z) {
    for (int64_t y = 0; y < extent[1]; ++y) {
      std::memcpy(labels.data() + (z * extent[1] + y) * extent[2],
                  prediction->labels.data.data() + ((at[0] + z) * crop.shape[1] + at[1] + y) * crop.shape[2] + at[2],
                  static_cast<size_t>(extent[2]));
    }
  }
  if (keep) {
    const torch::Tensor p = prediction->probabilities.slice(1, at[0], at[0] + extent[0])
                                .slice(2, at[1], at[1] + extent[1])
                                .slice(3, at[2], at[2] + extent[2])
                                .contiguous();
    if (q.probabilities) {
      answer.probabilities_shape = {p.size(0), extent[0], extent[1], extent[2]};
      answer.probabilities.assign(p.data_ptr<float>(), p.data_ptr<float>() + p.numel());
    }
    if (q.uncertainty) {
      const torch::Tensor u = NormalisedEntropy(p).contiguous();
      answer.uncertainty.assign(u.data_ptr<float>(), u.data_ptr<float>() + u.numel());
    }
  }
  if (two_d) {
    answer.shape = {extent[1], extent[2]};
    answer.spacing = {crop.spacing[1], crop.spacing[2]};
  } else {
    answer.shape = {extent[0], extent[1], extent[2]};
    answer.spacing = {crop.spacing[0], crop.spacing[1], crop.spacing[2]};
  }
  if (!q.output.empty()) {
    RETURN_IF_ERROR(WriteOutput(q, *model, *region, volume_shape, crop.spacing, unit, labels, &answer));
    return answer;
  }
  if (q.labels_tiff) {
    Volume v;
    v.shape = extent;
    v.spacing = crop.spacing;
    v.data = std::move(labels);
    ASSIGN_OR_RETURN(ScratchDir dir, ScratchDir::Make(options_.scratch, "answer-"));
    RETURN_IF_ERROR(WriteTiff((dir.path() / "labels.tif").string(), v, !unit.empty()));
    ASSIGN_OR_RETURN(answer.labels_tiff, ReadFile(dir.path() / "labels.tif"));
    return answer;
  }
  answer.labels = std::move(labels);
  return answer;
}

absl::Status ServingCore::WriteOutput(const PredictQuery& q, const LoadedModel& m, const RegionInput& region,
                                      const std::array<int64_t, 3>& volume_shape, const std::array<double, 3>& spacing,
                                      const std::string& unit, const std::vector<uint8_t>& labels,
                                      PredictAnswer* answer) {
  ASSIGN_OR_RETURN(fs::path dir, OutputPath(options_.store, q.user, q.output));
  const auto& b = region.box == std::array<int64_t, 6>{0, 0, 0, 0, 0, 0}
                      ? std::array<int64_t, 6>{0, volume_shape[0], 0, volume_shape[1], 0, volume_shape[2]}
                      : region.box;
  ZarrArrayMeta meta;
  meta.shape = {volume_shape[0], volume_shape[1], volume_shape[2]};
  ASSIGN_OR_RETURN(meta.chunks, OutputChunks(dir, q.output_chunks, volume_shape, b));
  // What the array was created for: the same volume and model only.
  nlohmann::json source = {{"volume", region.volume}, {"model", m.spec.name}, {"user", q.user}};
  {
    std::lock_guard<std::mutex> lock(output_mu_);
    std::error_code ec;
    const fs::path marker = dir / ".retina" / "serve.json";
    if (fs::exists(dir / "0" / ".zarray", ec)) {
      ASSIGN_OR_RETURN(std::string text, ReadFile(marker), "output " + q.output);
      const nlohmann::json had = nlohmann::json::parse(text, nullptr, false);
      if (had.is_discarded() || had.value("volume", "") != region.volume || had.value("model", "") != m.spec.name) {
        return absl::FailedPreconditionError(absl::StrCat("output: ", dir.string(), " holds another volume's or model's labels (",
                                                          text, "); choose another name"));
      }
      ASSIGN_OR_RETURN(meta, ReadZarrArray(dir / "0"), "output " + q.output);
      if (meta.shape != std::vector<int64_t>{volume_shape[0], volume_shape[1], volume_shape[2]}) {
        return absl::FailedPreconditionError(absl::StrCat("output: ", dir.string(), " has another shape than the volume"));
      }
    } else {
      fs::create_directories(dir / ".retina", ec);
      if (ec) return absl::InternalError(absl::StrCat("output: ", dir.string(), ": ", ec.message()));
      RETURN_IF_ERROR(WriteFileAtomic(marker, source.dump(2) + "\n"));
      RETURN_IF_ERROR(CreateZarrArray(dir / "0", meta));
      // The group metadata at once: a viewer opens the image while regions
      // fill it (absent chunks read as 0, background).
      OmeImage image;
      image.name = fs::path(q.output).filename().string();
      const std::string ngff = NgffUnit(unit);
      for (const char* axis : {"z", "y", "x"}) image.axes.push_back({axis, "space", ngff});
      image.levels.push_back({"0", {spacing[0], spacing[1], spacing[2]}});
      image.label = true;
      RETURN_IF_ERROR(WriteOmeZarrImage(dir, image));
    }
  }
  RETURN_IF_ERROR(WriteZarrRegion(dir / "0", meta, {b[0], b[2], b[4]}, {b[1] - b[0], b[3] - b[2], b[5] - b[4]},
                                  labels.data()),
                  "output " + q.output);
  answer->output = dir.string();
  answer->shape = {b[1] - b[0], b[3] - b[2], b[5] - b[4]};
  return absl::OkStatus();
}

}  // namespace retina::trainer::serving
