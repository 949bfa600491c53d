// retina-export: a segmentation checkpoint as a BioImage.IO model package
// (format 0.5; trainer/model/weights/bioimageio.h, docs/models.md
// "BioImage.IO"). `retina models export` runs it with the registry's lineage.
//
//   retina-export --weights W [--store DIR] -o model.zip [--name N] [--description D]
//                 [--author NAME]... [--license SPDX] [--tag T]... [--lineage FILE] [--sample IMAGE]
//
// W: anything finetune.init accepts (a checkpoint, a job, model:NAME[:vN|@TAG]).
// The test input is the centre crop of --sample's first plane (default: a
// synthetic EM image); the test output is our forward of it.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/cli.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/tools/synth.h"
#include "trainer/model/weights/bioimageio.h"
#include "trainer/prediction/predict.h"

namespace retina::trainer {
namespace {

struct ExportFlags {
  ModelSelection model;
  std::string out, name, description, license = "CC-BY-4.0", lineage, sample;
  std::vector<std::string> authors, tags;
};

// A [S, S] uint8 test image: the centre of --sample's first plane, or synthetic EM.
absl::StatusOr<torch::Tensor> TestImage(const std::string& sample, int s) {
  Volume v;
  if (sample.empty()) {
    SynthOptions o;
    o.shape = {1, std::max(s, 128), std::max(s, 128)};
    o.seed = 7;
    v = Synthesize(o).image;
  } else {
    ASSIGN_OR_RETURN(std::unique_ptr<PlaneReader> in, OpenPlaneReader(sample, IntensityScaling::kMinMax), "--sample");
    v.shape = {1, in->shape()[1], in->shape()[2]};
    v.data.resize(v.numel());
    RETURN_IF_ERROR(in->Read(0, 1, v.data.data()), "--sample");
  }
  if (v.shape[1] < s || v.shape[2] < s) {
    return absl::InvalidArgumentError(absl::StrCat("--sample: ", v.shape[1], " x ", v.shape[2],
                                                   " is smaller than the model's input, ", s, " x ", s));
  }
  const torch::Tensor plane = torch::from_blob(v.data.data(), {v.shape[1], v.shape[2]}, torch::kUInt8).clone();
  const int64_t y0 = (v.shape[1] - s) / 2, x0 = (v.shape[2] - s) / 2;
  return plane.slice(0, y0, y0 + s).slice(1, x0, x0 + s).contiguous();
}

std::string Documentation(const ExportFlags& f, const PackageModel& m) {
  return absl::StrCat(
      "# ", f.name, "\n\n", f.description, "\n\n",
      "A RETINA TransUNet (", m.config_name, ", input ", m.image_size, " x ", m.image_size, ", ", m.classes,
      m.classes == 1 ? " class" : " classes",
      ") for electron-microscopy segmentation (Xing, Xie & Bader, PLOS Comput Biol 2025, doi:", kRetinaDoi,
      "). Exported by retina-export.\n\n",
      "## Input and output\n\n",
      "- Input `raw`: one grey channel of uint8 EM, ", m.image_size, " x ", m.image_size,
      " pixels (tile larger images). Preprocessing: `(v / 255 - ", m.mean, ") / ", m.std, "`.\n",
      "- Output `probabilities`: ",
      m.classes == 1 ? "the foreground probability (sigmoid)." : "class probabilities (softmax; class 0 is background).",
      "\n\n",
      "## Architecture and weights\n\n",
      "`transunet.py` is the project's PyTorch TransUNet (ResNet-50 v2 stem, ViT encoder, CNN decoder with skips); "
      "`weights.pt` its state dict, loadable with `torch.load(..., weights_only=True)`.\n\n",
      "## Lineage\n\n",
      f.lineage.empty() ? "Not recorded (exported from a checkpoint, not a registered model).\n"
                        : "`lineage.json`: the chain of runs behind these weights, from the RETINA model registry: "
                          "each checkpoint's MANIFEST hash, datasets with their versions and digests, the job file as "
                          "run, the trainer's version and the scores.\n");
}

absl::Status Export(ExportFlags f) {
  if (f.authors.empty()) return absl::InvalidArgumentError("--author: a package needs at least one author");
  ASSIGN_OR_RETURN(SegmentationModel m, LoadSegmentationModel(f.model, torch::kCPU));
  PackageModel pm;
  pm.config_name = m.state && !m.state->model.empty() ? m.state->model
                   : m.config.hidden_size == 768    ? "r50-vit-b16"
                   : m.config.hidden_size == 192    ? "r50-vit-b16-192"
                                                    : "tiny";
  pm.image_size = m.config.image_size;
  pm.classes = m.config.num_classes;
  pm.mean = m.mean;
  pm.std = m.std;
  pm.weights = m.weights_file;
  pm.pytorch_version = TORCH_VERSION;
  PackageText text;
  if (f.name.empty()) f.name = absl::StrCat("RETINA ", pm.config_name, " segmentation");
  if (f.description.empty()) {
    f.description = absl::StrCat("RETINA TransUNet for EM segmentation (", pm.classes,
                                 pm.classes == 1 ? " class" : " classes", ")");
  }
  text.name = f.name;
  text.description = f.description;
  text.authors = f.authors;
  text.license = f.license;
  text.tags = f.tags;
  if (!f.lineage.empty()) {
    ASSIGN_OR_RETURN(text.lineage_json, ReadFile(f.lineage), "--lineage");
  }
  text.documentation = Documentation(f, pm);
  text.timestamp = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  ASSIGN_OR_RETURN(torch::Tensor image, TestImage(f.sample, pm.image_size));
  const torch::Tensor output = PackageForward(m.model, image.reshape({1, 1, pm.image_size, pm.image_size}), pm.mean, pm.std);
  RETURN_IF_ERROR(WriteBioImageIoPackage(f.out, text, pm, image, output), "-o " + f.out);
  std::cout << "wrote " << f.out << " (BioImage.IO " << kBioImageIoFormatVersion << ", " << pm.config_name << ", "
            << pm.classes << (pm.classes == 1 ? " class" : " classes") << ")\n";
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  Cli cli("retina-export", "Writes a segmentation checkpoint as a BioImage.IO model package (format 0.5).");
  ExportFlags f;
  CLI::App& app = cli.app();
  app.add_option("--weights", f.model.weights, "a checkpoint, a job, model:NAME[:vN|@TAG], a .pt")->required();
  app.add_option("--store", f.model.store, "the store (relative weights and model: references)");
  app.add_option("-o,--out", f.out, "the package to write (.zip)")->required();
  app.add_option("--name", f.name, "the package's name (default: RETINA <config> segmentation)");
  app.add_option("--description", f.description, "one line");
  app.add_option("--author", f.authors, "an author's name (repeatable; at least one)");
  app.add_option("--license", f.license, "SPDX identifier of the weights' licence");
  app.add_option("--tag", f.tags, "an extra tag (repeatable)");
  app.add_option("--lineage", f.lineage, "attach this lineage JSON (retina models export passes the registry's)");
  app.add_option("--sample", f.sample, "the test input's image (its centre crop; default synthetic EM)");
  cli.Root([&] { return Export(f); });
  return cli.Run(argc, argv);
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) { return retina::trainer::Main(argc, argv); }
