#include "trainer/prediction/predict.h"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/read_scope.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/model/weights/weight_source.h"
#include "trainer/runtime/device.h"
#include "trainer/runtime/threads.h"
#include "trainer/prediction/zarr_prediction.h"

namespace retina::trainer {
namespace {

// The tensor `name`, saved with or without DataParallel's "module." prefix.
const torch::Tensor* Find(const std::map<std::string, torch::Tensor>& byname, const std::string& name) {
  for (const std::string& key : {name, "module." + name}) {
    if (auto it = byname.find(key); it != byname.end()) return &it->second;
  }
  return nullptr;
}

// The model config: state.json's where it records it, else the tensors'
// shapes; the selection's overrides win.
absl::StatusOr<TransUNetConfig> ConfigFor(const std::map<std::string, torch::Tensor>& byname,
                                          const std::optional<CheckpointState>& state, const ModelSelection& s) {
  const torch::Tensor& pos = *Find(byname, "transformer.embeddings.position_embeddings");
  const int64_t hidden = pos.size(2);
  std::string name = hidden == 768 ? "r50-vit-b16" : hidden == 192 ? "r50-vit-b16-192" : "tiny";
  if (state && !state->model.empty()) name = state->model;
  int image_size = static_cast<int>(16 * std::lround(std::sqrt(static_cast<double>(pos.size(1)))));
  if (state && state->image_size > 0) image_size = state->image_size;
  int classes = static_cast<int>(Find(byname, "segmentation_head.0.weight")->size(0));
  return NamedModelConfig(s.model.value_or(name), s.image_size.value_or(image_size), s.classes.value_or(classes),
                          ModelHead::kSegmentation);
}

int DefaultMemoryMb() {
  const int64_t half = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE) / 2;
  return static_cast<int>(std::min<int64_t>(int64_t{1} << 30, half >> 20));
}

// TIFF/HDF5: planes appended in z order, the file committed at the end.
absl::StatusOr<VolumeStreamStats> PredictPlanes(SegmentationModel& m, PlaneReader& in, const PredictFileOptions& o,
                                                const SlidingWindowOptions& so, int64_t slab, int classes) {
  ASSIGN_OR_RETURN(std::unique_ptr<PlaneWriter> writer,
                   OpenPlaneWriter(o.out, in.shape(), in.spacing(), in.has_spacing(), o.probabilities ? classes : 0,
                                   in.unit()));
  std::unique_ptr<ProgressBar> bar;
  ASSIGN_OR_RETURN(VolumeStreamStats stats,
                   PredictVolumeStreaming(ModelForward(m.model, so.bf16), in, m.mean, m.std, o.mode, so, slab, o.probabilities,
                                          *writer, [&](int64_t done, int64_t total) {
                                            if (!o.progress) return;
                                            if (!bar) bar = std::make_unique<ProgressBar>("infer", total, "planes");
                                            bar->Update(done);
                                          }));
  if (bar) bar->Finish();
  RETURN_IF_ERROR(writer->Finish());
  return stats;
}

// OME-Zarr (trainer/prediction/zarr_prediction.h) in one process; an unfinished
// output of the same settings resumes.
absl::StatusOr<VolumeStreamStats> PredictZarr(SegmentationModel& m, PlaneReader& in, const PredictFileOptions& o,
                                              const SlidingWindowOptions& so, const std::string& dir,
                                              int64_t memory_bytes) {
  ZarrPredictionOptions zo;
  zo.probabilities = o.probabilities ? ProbabilityOutput::kFloat32 : ProbabilityOutput::kNone;
  zo.uncertainty = o.uncertainty;
  const std::string fingerprint = Sha256Hex(absl::StrCat(m.weights_file.string(), "|", o.input, "|",
                                                         PredictionModeName(o.mode), "|", so.overlap, "|", m.mean, "|",
                                                         m.std, "|", o.probabilities, o.uncertainty ? "|entropy" : ""));
  ASSIGN_OR_RETURN(std::unique_ptr<ZarrPrediction> z,
                   ZarrPrediction::Plan(dir, in.shape(), in.spacing(), in.has_spacing() ? in.unit() : "",
                                        m.config.num_classes, zo, "retina-infer", fingerprint));
  if (z->finished()) return absl::AlreadyExistsError(dir + ": already written; remove it to predict again");
  RETURN_IF_ERROR(z->Prepare());
  RowPredictor p{ModelForward(m.model, so.bf16), m.mean, m.std, o.mode, so, memory_bytes};
  VolumeStreamStats stats;
  std::unique_ptr<ProgressBar> bar;
  if (o.progress) bar = std::make_unique<ProgressBar>("infer", z->rows(), "chunk rows");
  for (int64_t row = 0; row < z->rows(); ++row) {
    if (!z->RowDone(row)) RETURN_IF_ERROR(z->PredictRow(row, in, p, &stats));
    if (bar) bar->Update(row + 1);
  }
  if (bar) bar->Finish();
  for (int level = 1; level < z->levels(); ++level) {
    for (int64_t row = 0; row < z->LevelRows(level); ++row) RETURN_IF_ERROR(z->DownsampleRow(level, row));
  }
  RETURN_IF_ERROR(z->Finish());
  return stats;
}

}  // namespace

absl::StatusOr<SegmentationModel> LoadSegmentationModel(const ModelSelection& s, const torch::Device& device) {
  if (s.mean.has_value() != s.std.has_value()) return absl::InvalidArgumentError("give both --mean and --std, or neither");
  ASSIGN_OR_RETURN(WeightSource source, ResolveWeights(s.weights, s.store, "--weights"));
  SegmentationModel m;
  m.weights_file = source.file;
  ASSIGN_OR_RETURN(StateDict weights, ReadStateDictFile(m.weights_file));
  const std::map<std::string, torch::Tensor> byname(weights.begin(), weights.end());
  for (const char* required : {"transformer.embeddings.position_embeddings", "segmentation_head.0.weight"}) {
    if (Find(byname, required) == nullptr) {
      return absl::FailedPreconditionError(m.weights_file.string() + ": not a TransUNet state dict (no " + required + ")");
    }
  }
  if (Find(byname, "FinalDecoder.conv1.weight") != nullptr) {
    return absl::FailedPreconditionError(m.weights_file.string() +
                                         ": a pre-training (reconstruction) checkpoint; fine-tune it before segmenting");
  }
  // The checkpoint's CheckpointState (or one beside a bare model.pt), when there is one.
  const std::filesystem::path state_path =
      (source.checkpoint_dir.empty() ? m.weights_file.parent_path() : source.checkpoint_dir) /
      StoreLayout::kCheckpointState;
  // (A package's is our own, unpacked from the package the read scope passed.)
  if (source.package.empty()) RETURN_IF_ERROR(CheckRead(state_path.string(), state_path));
  if (absl::StatusOr<std::string> text = ReadFile(state_path); text.ok()) {
    ASSIGN_OR_RETURN(m.state, DecodeCheckpointState(*text, state_path.string()));
  }
  ASSIGN_OR_RETURN(m.config, ConfigFor(byname, m.state, s));
  if (s.mean) {
    m.mean = *s.mean;
    m.std = *s.std;
  } else if (m.state && m.state->mean && m.state->std) {
    m.mean = *m.state->mean;
    m.std = *m.state->std;
  } else {
    return absl::FailedPreconditionError("no --mean/--std and no normalisation recorded in " + state_path.string() +
                                         "; pass --mean and --std");
  }
  if (!(m.std > 0)) return absl::InvalidArgumentError("--std must be > 0");
  m.model = VisionTransformer(m.config);
  RETURN_IF_ERROR(LoadStateDict(*m.model, std::move(weights)).status(), m.weights_file.string());
  m.model->to(device);
  m.model->eval();
  return m;
}

absl::StatusOr<PredictFileReport> PredictFile(const PredictFileOptions& o) {
  const bool h5 = absl::EndsWith(o.out, ".h5") || absl::EndsWith(o.out, ".hdf5");
  std::string out_dir = o.out;
  while (out_dir.size() > 1 && out_dir.back() == '/') out_dir.pop_back();
  const bool zarr = absl::EndsWith(out_dir, ".zarr");
  if (!h5 && !zarr && !absl::EndsWith(o.out, ".tif") && !absl::EndsWith(o.out, ".tiff")) {
    return absl::InvalidArgumentError("--out: write .tif/.tiff, .h5 or .ome.zarr, got '" + o.out + "'");
  }
  if (o.probabilities && !h5 && !zarr) return absl::InvalidArgumentError("--probabilities needs an .h5 or .ome.zarr --out");
  if (o.uncertainty && !zarr) return absl::InvalidArgumentError("--uncertainty needs an .ome.zarr --out");
  const int memory_mb = o.memory_mb.value_or(DefaultMemoryMb());
  if (memory_mb < 1) return absl::InvalidArgumentError("--memory-mb must be >= 1");
  if (o.overlap && (*o.overlap < 0 || *o.overlap >= 1)) return absl::InvalidArgumentError("--overlap must be in [0, 1)");

  ConfigureTorchThreads(1);
  ASSIGN_OR_RETURN(DevicePlan device, PlanDevice(o.device, o.precision, 0));
  ASSIGN_OR_RETURN(SegmentationModel m, LoadSegmentationModel(o.model, device.device));
  ASSIGN_OR_RETURN(std::unique_ptr<PlaneReader> in, OpenPlaneReader(o.input, o.scaling));
  const auto shape = in->shape();
  SlidingWindowOptions so;
  so.window = m.config.image_size;
  so.overlap = o.overlap.value_or(shape[0] > 1 ? 0.7 : 0.5);  // METHOD.md: 0.7 for 3D test, 0.5 for 2D
  so.device = device.device;
  so.bf16 = device.bf16;
  const int classes = m.config.num_classes;
  const int64_t slab = SlabPlanesForBudget(shape, classes, o.mode, so, int64_t{memory_mb} << 20);
  if (o.mode == VolumeMode::kOrthoplane && slab < shape[0] && slab < so.window) {
    // Every slab re-runs the xz/yz windows that reach into it (up to a window's height).
    RETINA_LOG(Warning) << "--memory-mb " << memory_mb << " allows slabs of " << slab << " planes, thinner than the "
                        << so.window << "-pixel window: the xz/yz passes repeat up to "
                        << (slab + so.window - 1) / slab << "x; give more memory if you can";
  }
  const auto t0 = std::chrono::steady_clock::now();
  PredictFileReport r;
  if (zarr) {
    ASSIGN_OR_RETURN(r.stats, PredictZarr(m, *in, o, so, out_dir, int64_t{memory_mb} << 20));
  } else {
    ASSIGN_OR_RETURN(r.stats, PredictPlanes(m, *in, o, so, slab, classes));
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  r.peak_rss_mib = usage.ru_maxrss / 1024.0;
  r.model = m.config.name;
  r.device = device.describe;
  r.shape = {shape[0], shape[1], shape[2]};
  r.streamed = in->streaming();
  return r;
}

std::string PredictFileReport::Summary(const PredictFileOptions& o) const {
  const double voxels = static_cast<double>(shape[0]) * shape[1] * shape[2];
  return absl::StrFormat(
      "%s: %dx%dx%d voxels, %s, %s, %.1f s (%.0f voxels/s), %d slab(s) of %d planes (%s input), %d windows, "
      "peak memory %.0f MiB -> %s",
      model, shape[0], shape[1], shape[2], PredictionModeName(o.mode), device, seconds,
      voxels / std::max(seconds, 1e-9), stats.slabs, stats.slab_planes, streamed ? "streamed" : "held", stats.windows,
      peak_rss_mib, o.out);
}

}  // namespace retina::trainer
