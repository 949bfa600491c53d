// retina-infer: segment an image or volume with trained weights. Flags into
// PredictFileOptions, then trainer/prediction/predict.h (which documents weights,
// normalisation, slabs and outputs).
//
//   retina-infer --weights WEIGHTS -i FILE|DIR|GLOB -o FILE.tif|FILE.h5|FILE.ome.zarr|DIR [--mode 2d|stack|orthoplane]
//                [--store STORE] [--overlap F] [--mean M --std S] [--probabilities] [--uncertainty]
//                [--device auto|cpu|cuda]
//                [--precision fp32|bf16]
//                [--model CONFIG] [--classes N] [--image-size S] [--scale minmax] [--memory-mb M]
#include <cstdio>

#include "common/cli.h"
#include "common/file_util.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "trainer/data/formats/zarr.h"
#include "trainer/engine/infer.h"
#include "trainer/prediction/predict.h"

namespace retina::trainer {
namespace {

struct InferFlags {
  PredictFileOptions predict;
  std::string store = ".", mode = "stack", device = "auto", precision = "fp32", scale;
};

// A folder or a glob of inputs: one output per input in the --out directory
// (the nnU-Net -i DIR -o DIR habit), one progress line over the files.
absl::Status InferMany(const PredictFileOptions& base) {
  ASSIGN_OR_RETURN(std::vector<InferInput> inputs, ExpandInferInputs({base.input}, "."), "--input");
  RETURN_IF_ERROR(CreateDirectories(base.out), "--out");
  ProgressBar bar("infer", static_cast<int64_t>(inputs.size()), "inputs");
  int64_t done = 0;
  for (const InferInput& in : inputs) {
    PredictFileOptions o = base;
    o.input = in.spec;
    o.out = (std::filesystem::path(base.out) / (in.name + (o.probabilities ? ".h5" : ".tif"))).string();
    o.progress = false;
    ASSIGN_OR_RETURN(PredictFileReport report, PredictFile(o), in.spec);
    bar.Note(report.Summary(o));
    bar.Update(++done);
  }
  bar.Finish();
  return absl::OkStatus();
}

absl::Status Infer(InferFlags f) {
  PredictFileOptions& o = f.predict;
  o.model.store = f.store;
  o.mode = *EnumFromName<PredictionMode>(f.mode);  // CLI11 checked the words
  o.device = *EnumFromName<DeviceKind>(f.device);
  o.precision = *EnumFromName<Precision>(f.precision);
  if (f.scale == "minmax") o.scaling = IntensityScaling::kMinMax;
  std::error_code ec;
  if (o.input.find_first_of("*?[") != std::string::npos ||
      (std::filesystem::is_directory(o.input, ec) && !IsZarrPath(o.input))) {
    return InferMany(o);
  }
  ASSIGN_OR_RETURN(PredictFileReport report, PredictFile(o));
  std::printf("%s\n", report.Summary(o).c_str());
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  Cli cli("retina-infer", "Segments an image or volume with trained weights (sliding windows, streamed in z-slabs).");
  InferFlags f;
  CLI::App& app = cli.app();
  app.add_option("--weights", f.predict.model.weights,
                 "model.pt, a checkpoint dir, jobs/<id>/checkpoints[/LATEST] (in --store), a PyTorch .pt")
      ->required();
  app.add_option("-i,--input", f.predict.input,
                 "image or volume (TIFF, PNG, HDF5 file.h5:/path, OME-Zarr, NIfTI, NRRD), or a folder or glob of them")
      ->required();
  app.add_option("-o,--out", f.predict.out,
                 "labels as .tif/.tiff, .h5 (with --probabilities, per-class too) or .ome.zarr; a directory for a "
                 "folder or glob (one .tif, or .h5, per input)")
      ->required();
  app.add_option("--mode", f.mode, "2d | stack (xy planes) | orthoplane (xy/xz/yz averaged)")
      ->check(CLI::IsMember(EnumNames<PredictionMode>()));
  AddStoreOption(&app, &f.store, "where relative --weights are looked up");
  app.add_option("--overlap", f.predict.overlap, "sliding-window overlap in [0, 1) (default 0.7 for volumes, 0.5 for 2D)");
  app.add_option("--mean", f.predict.model.mean, "normalisation mean of v/255 (default: the checkpoint's)");
  app.add_option("--std", f.predict.model.std, "normalisation std (with --mean)");
  app.add_flag("--probabilities", f.predict.probabilities, "also write float32 probabilities [C, Z, Y, X] (.h5 --out)");
  app.add_flag("--uncertainty", f.predict.uncertainty,
               "also write <name>.uncertainty.ome.zarr: per-voxel entropy / log(classes), float16 (.ome.zarr --out)");
  app.add_option("--device", f.device, "auto = cuda when available")->check(CLI::IsMember(EnumNames<DeviceKind>()));
  app.add_option("--precision", f.precision, "fp32, or bf16 autocast (CUDA, or a CPU with AVX512-BF16/AMX)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--model", f.predict.model.model, "named model config (default: the checkpoint's)");
  app.add_option("--classes", f.predict.model.classes, "classes (default: the checkpoint's)")->check(kPositiveInt);
  app.add_option("--image-size", f.predict.model.image_size, "window side (default: the checkpoint's)")
      ->check(kPositiveInt);
  app.add_option("--scale", f.scale, "minmax: rescale non-8-bit inputs")->check(CLI::IsMember({"minmax"}));
  app.add_option("--memory-mb", f.predict.memory_mb, "slab buffers' budget (default: half this machine's RAM)")
      ->check(kPositiveInt);
  cli.Root([&] { return Infer(f); });
  return cli.Run(argc, argv);
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) { return retina::trainer::Main(argc, argv); }
