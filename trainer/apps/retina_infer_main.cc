// retina-infer: segment an image or volume with trained weights.
//
//   retina-infer --weights WEIGHTS --input FILE --out FILE [--mode 2d|stack|orthoplane] [--store STORE]
//                [--overlap F] [--mean M --std S] [--probabilities] [--device cpu|cuda]
//                [--model CONFIG] [--classes N] [--image-size S] [--scale minmax] [--memory-mb M]
// Volumes are read and written in z-slabs sized so that the slab's buffers fit
// --memory-mb (default: half of this machine's RAM; the model and libtorch
// come on top): uint8 HDF5
// and TIFF inputs are read slab by slab, the labels are written as they are
// done. The result does not depend on the slab size. WEIGHTS is anything
// trainer/model/weight_source.h resolves (a model.pt, a checkpoint
// directory, a job's checkpoints/ or its LATEST, a PyTorch .pt; relative
// names also from --store / RETINA_STORE), verified against its MANIFEST.
// The model config, image size and classes come from the checkpoint's
// state.json, else from the tensors' shapes (flags override); normalisation
// from state.json unless --mean/--std are given. Output: .tif/.tiff (labels) or .h5 (labels,
// and with --probabilities float32 per-class probabilities [C, Z, Y, X]).
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "absl/strings/match.h"
#include "common/cli.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "trainer/data/readers.h"
#include "trainer/data/writers.h"
#include "trainer/eval/inference.h"
#include "trainer/model/state_dict.h"
#include "trainer/model/weight_source.h"
#include "trainer/runtime/device.h"
#include "trainer/runtime/threads.h"

namespace retina::trainer {
namespace {

constexpr char kUsage[] =
    "usage: retina-infer --weights WEIGHTS --input FILE --out FILE.tif|FILE.h5 [--mode 2d|stack|orthoplane]\n"
    "                    WEIGHTS: model.pt, a checkpoint dir, jobs/<id>/checkpoints[/LATEST] (in --store), a .pt\n"
    "                    [--store STORE (default $RETINA_STORE, else .)]\n"
    "                    [--overlap F] [--mean M --std S] [--probabilities] [--device cpu|cuda]\n"
    "                    [--model CONFIG] [--classes N] [--image-size S] [--scale minmax] [--memory-mb M]\n";

absl::Status Infer(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(CliFlags f, ParseCliFlags(args, {"--weights", "--input", "--out", "--mode", "--overlap", "--mean",
                                                    "--std", "--device", "--model", "--classes", "--image-size", "--scale",
                                                    "--memory-mb", "--store"},
                                             {"--probabilities"}));
  RETURN_IF_ERROR(f.Require({"--weights", "--input", "--out"}));
  const std::string out = f.Get("--out");
  const bool h5 = absl::EndsWith(out, ".h5") || absl::EndsWith(out, ".hdf5");
  if (!h5 && !absl::EndsWith(out, ".tif") && !absl::EndsWith(out, ".tiff")) {
    return absl::InvalidArgumentError("--out: write .tif/.tiff or .h5, got '" + out + "'");
  }
  if (f.Has("--probabilities") && !h5) return absl::InvalidArgumentError("--probabilities needs an .h5 --out");

  // Weights -> config.
  ASSIGN_OR_RETURN(WeightSource source, ResolveWeights(f.Get("--weights"), f.Store(), "--weights"));
  const std::filesystem::path weights_path = source.file;
  ASSIGN_OR_RETURN(StateDict weights, ReadStateDictFile(weights_path));
  std::map<std::string, torch::Tensor> byname(weights.begin(), weights.end());
  for (const char* required : {"transformer.embeddings.position_embeddings", "segmentation_head.0.weight"}) {
    if (!byname.count(required) && !byname.count(std::string("module.") + required)) {
      return absl::FailedPreconditionError(weights_path.string() + ": not a TransUNet state dict (no " + required + ")");
    }
  }
  if (byname.count("FinalDecoder.conv1.weight") || byname.count("module.FinalDecoder.conv1.weight")) {
    return absl::FailedPreconditionError(weights_path.string() +
                                         ": a pre-training (reconstruction) checkpoint; fine-tune it before segmenting");
  }
  // The checkpoint's CheckpointState (or one beside a bare model.pt), when there is one.
  const std::filesystem::path state_path =
      (source.checkpoint_dir.empty() ? weights_path.parent_path() : source.checkpoint_dir) /
      StoreLayout::kCheckpointState;
  std::optional<CheckpointState> state;
  if (absl::StatusOr<std::string> text = ReadFile(state_path); text.ok()) {
    ASSIGN_OR_RETURN(state, DecodeCheckpointState(*text, state_path.string()));
  }
  const torch::Tensor pos = byname.count("transformer.embeddings.position_embeddings")
                                ? byname["transformer.embeddings.position_embeddings"]
                                : byname["module.transformer.embeddings.position_embeddings"];
  const int64_t hidden = pos.size(2);
  // The state's model and image size where it records them, else from the shapes.
  std::string model_name = hidden == 768 ? "r50-vit-b16" : hidden == 192 ? "r50-vit-b16-192" : "tiny";
  if (state && !state->model.empty()) model_name = state->model;
  model_name = f.Get("--model", model_name);
  int image_size = static_cast<int>(16 * std::lround(std::sqrt(static_cast<double>(pos.size(1)))));
  if (state && state->image_size > 0) image_size = state->image_size;
  int classes = static_cast<int>((byname.count("segmentation_head.0.weight") ? byname["segmentation_head.0.weight"]
                                                                            : byname["module.segmentation_head.0.weight"]).size(0));
  RETURN_IF_ERROR(f.GetInt("--image-size", &image_size));
  RETURN_IF_ERROR(f.GetInt("--classes", &classes));
  ASSIGN_OR_RETURN(TransUNetConfig config, NamedModelConfig(model_name, image_size, classes, ModelHead::kSegmentation));

  // Normalisation.
  double mean = 0, std = 0;
  if (f.Has("--mean") != f.Has("--std")) return absl::InvalidArgumentError("give both --mean and --std, or neither");
  if (f.Has("--mean")) {
    RETURN_IF_ERROR(f.GetDouble("--mean", &mean));
    RETURN_IF_ERROR(f.GetDouble("--std", &std));
  } else if (state && state->mean && state->std) {
    mean = *state->mean;
    std = *state->std;
  } else {
    return absl::FailedPreconditionError("no --mean/--std and no normalisation recorded in " + state_path.string() +
                                         "; pass --mean and --std");
  }
  if (!(std > 0)) return absl::InvalidArgumentError("--std must be > 0");

  ConfigureTorchThreads(1);
  ASSIGN_OR_RETURN(DevicePlan device, PlanDevice(f.Get("--device", "auto"), "fp32", 0));
  VisionTransformer model(config);
  RETURN_IF_ERROR(LoadStateDict(*model, std::move(weights)).status(), weights_path.string());
  model->to(device.device);

  const std::string scale = f.Get("--scale", "none");
  if (scale != "none" && scale != "minmax") return absl::InvalidArgumentError("--scale: minmax, got '" + scale + "'");
  ASSIGN_OR_RETURN(std::unique_ptr<PlaneReader> in,
                   OpenPlaneReader(f.Get("--input"),
                                   scale == "minmax" ? IntensityScaling::kMinMax : IntensityScaling::kRequireUInt8));
  const auto shape = in->shape();
  const std::string mode = f.Get("--mode", "stack");
  if (mode != "2d" && mode != "stack" && mode != "orthoplane") {
    return absl::InvalidArgumentError("--mode: 2d, stack or orthoplane, got '" + mode + "'");
  }
  SlidingWindowOptions so;
  so.window = config.image_size;
  so.overlap = shape[0] > 1 ? 0.7 : 0.5;  // METHOD.md: 0.7 for 3D test, 0.5 for 2D
  RETURN_IF_ERROR(f.GetDouble("--overlap", &so.overlap));
  if (so.overlap < 0 || so.overlap >= 1) return absl::InvalidArgumentError("--overlap must be in [0, 1)");
  so.device = device.device;
  int memory_mb = static_cast<int>(std::min<int64_t>(
      int64_t{1} << 30, static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE) / 2 >> 20));
  RETURN_IF_ERROR(f.GetInt("--memory-mb", &memory_mb));
  if (memory_mb < 1) return absl::InvalidArgumentError("--memory-mb must be >= 1");
  const VolumeMode vmode = mode == "orthoplane" ? VolumeMode::kOrthoplane : VolumeMode::kStack;
  const int64_t slab = SlabPlanesForBudget(shape, classes, vmode, so, int64_t{memory_mb} << 20);
  if (vmode == VolumeMode::kOrthoplane && slab < shape[0] && slab < so.window) {
    // Every slab re-runs the xz/yz windows that reach into it (up to a window's height).
    RETINA_LOG(Warning) << "--memory-mb " << memory_mb << " allows slabs of " << slab << " planes, thinner than the "
                        << so.window << "-pixel window: the xz/yz passes repeat up to "
                        << (slab + so.window - 1) / slab << "x; give more memory if you can";
  }
  const bool probabilities = f.Has("--probabilities");
  ASSIGN_OR_RETURN(std::unique_ptr<PlaneWriter> writer,
                   OpenPlaneWriter(out, shape, in->spacing(), in->has_spacing(), probabilities ? classes : 0));
  std::unique_ptr<ProgressBar> bar;
  const auto t0 = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(VolumeStreamStats stats,
                   PredictVolumeStreaming(ModelForward(model), *in, mean, std, vmode, so, slab, probabilities, *writer,
                                          [&](int64_t done, int64_t total) {
                                            if (!bar) bar = std::make_unique<ProgressBar>("infer", total, "planes");
                                            bar->Update(done);
                                          }));
  if (bar) bar->Finish();
  RETURN_IF_ERROR(writer->Finish());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  const double voxels = static_cast<double>(shape[0]) * shape[1] * shape[2];
  std::printf("%s: %lldx%lldx%lld voxels, %s, %s, %.1f s (%.0f voxels/s), %lld slab(s) of %lld planes (%s input), "
              "%lld windows, peak memory %.0f MiB -> %s\n",
              config.name.c_str(), static_cast<long long>(shape[0]), static_cast<long long>(shape[1]),
              static_cast<long long>(shape[2]), mode.c_str(), device.describe.c_str(), seconds,
              voxels / std::max(seconds, 1e-9), static_cast<long long>(stats.slabs),
              static_cast<long long>(stats.slab_planes), in->streaming() ? "streamed" : "held", 
              static_cast<long long>(stats.windows), usage.ru_maxrss / 1024.0, out.c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) {
  return retina::RunCommand("retina-infer", retina::trainer::kUsage, {argv + 1, argv + argc}, retina::trainer::Infer);
}
