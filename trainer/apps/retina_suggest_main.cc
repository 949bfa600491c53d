// retina-suggest (also `retina suggest`): where a person should label next,
// from an infer job's uncertainty map (trainer/prediction/suggest.h has the
// ranking and the diversity rule; docs/evaluation.md "The annotation loop").
//
//   retina-suggest --job ID [--output NAME] --out DIR [--blocks 16] [--block 224]
//                  [--min-distance D] [--strategy uncertainty|random|uncertainty-nodiversity]
//                  [--labelled earlier/suggestions.csv ...] [--seed N] [--store STORE]
//   retina-suggest --uncertainty X.uncertainty.ome.zarr --image VOLUME --out DIR ...
#include <cstdio>

#include <nlohmann/json.hpp>

#include "absl/strings/str_join.h"
#include "common/cli.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "trainer/data/formats/readers.h"
#include "trainer/prediction/suggest.h"

namespace retina::trainer {
namespace {

struct SuggestFlags {
  std::string job, output, uncertainty, image, out, strategy = "uncertainty", store = ".";
  std::vector<std::string> labelled;
  SuggestOptions options;
};

// --job: the uncertainty map and input of one of the job's outputs
// (predictions.json), by input name when it has several.
absl::Status FromJob(SuggestFlags* f) {
  const std::filesystem::path report = StoreLayout(f->store).PredictionsReportPath(f->job);
  ASSIGN_OR_RETURN(const std::string text, ReadFile(report), "--job (an infer job's predictions.json)");
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("outputs")) return absl::DataLossError(report.string() + ": not a predictions report");
  std::vector<std::string> names;
  const bool pick = !f->output.empty() || j["outputs"].size() == 1;  // several inputs: --output names one
  for (const auto& item : j["outputs"]) {
    const std::string input = item.value("input", "");
    const std::string name = std::filesystem::path(input).filename().string();
    names.push_back(name);
    if (!pick || (!f->output.empty() && f->output != name && f->output != input)) continue;
    if (!item.contains("uncertainty")) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--job ", f->job, ": ", input, " has no uncertainty map; predict with infer.uncertainty: entropy"));
    }
    f->uncertainty = item["uncertainty"].get<std::string>();
    f->image = input;  // as the job resolved it, like the uncertainty map's path
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("--output: name one of the job's inputs: ", absl::StrJoin(names, ", ")));
}

absl::Status Suggest(SuggestFlags f) {
  if (!f.job.empty()) {
    if (!f.uncertainty.empty() || !f.image.empty()) return absl::InvalidArgumentError("give --job or --uncertainty/--image");
    RETURN_IF_ERROR(FromJob(&f));
  } else if (f.uncertainty.empty() || f.image.empty()) {
    return absl::InvalidArgumentError("give --job ID, or --uncertainty DIR and --image VOLUME");
  }
  SuggestOptions& o = f.options;
  o.strategy = *EnumFromName<SelectionStrategy>(f.strategy);  // CLI11 checked the word
  for (const std::string& csv : f.labelled) {
    ASSIGN_OR_RETURN(std::vector<LabelBlock> blocks, ReadSuggestionBlocks(csv), "--labelled");
    o.labelled.insert(o.labelled.end(), blocks.begin(), blocks.end());
  }
  ASSIGN_OR_RETURN(auto map, ReadUncertaintyMap(f.uncertainty), "--uncertainty");
  ASSIGN_OR_RETURN(RawArray raw, ReadArray(f.image), "--image");
  const std::string unit = raw.unit;
  ASSIGN_OR_RETURN(Volume image, ToImage(raw, IntensityScaling::kMinMax), "--image");
  if (image.shape != map.second) {
    return absl::InvalidArgumentError(absl::StrCat("--image: ", image.shape[0], "x", image.shape[1], "x", image.shape[2],
                                                   " but the uncertainty map is ", map.second[0], "x", map.second[1],
                                                   "x", map.second[2]));
  }
  ASSIGN_OR_RETURN(const std::vector<Suggestion> s, SuggestBlocks(map.first, map.second, o));
  RETURN_IF_ERROR(WriteSuggestions(f.out, s, image, unit), "--out");
  std::printf("%zu block(s) of %lldx%lld suggested (%s%s) -> %s/suggestions.csv, crops/, suggestions.napari.csv, "
              "suggestions.neuroglancer.json\n",
              s.size(), static_cast<long long>(std::min(o.block, image.shape[1])),
              static_cast<long long>(std::min(o.block, image.shape[2])), f.strategy.c_str(),
              o.strategy == SelectionStrategy::kUncertainty
                  ? absl::StrCat(", centres >= ", o.min_distance > 0 ? o.min_distance : o.block / 2.0, " voxels apart").c_str()
                  : "",
              f.out.c_str());
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  Cli cli("retina-suggest", "Ranks blocks to label by the model's uncertainty, with a diversity rule.");
  SuggestFlags f;
  CLI::App& app = cli.app();
  app.add_option("--job", f.job, "an infer job run with infer.uncertainty: entropy");
  app.add_option("--output", f.output, "with --job: which input (its file name), when the job has several");
  app.add_option("--uncertainty", f.uncertainty, "or: an uncertainty map (<name>.uncertainty.ome.zarr)");
  app.add_option("--image", f.image, "and the volume it was predicted from (crops are cut from it)");
  app.add_option("--out", f.out, "a directory for suggestions.csv, crops/ and the viewer layers")->required();
  app.add_option("--blocks", f.options.count, "how many blocks")->check(kPositiveInt);
  app.add_option("--block", f.options.block, "block side on an xy plane (the model's window)")->check(kPositiveInt);
  app.add_option("--min-distance", f.options.min_distance,
                 "diversity rule: block centres at least this far apart (z, y, x voxels; default: half the block side)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--strategy", f.strategy, "uncertainty | random | uncertainty-nodiversity")
      ->check(CLI::IsMember(EnumNames<SelectionStrategy>()));
  app.add_option("--labelled", f.labelled, "suggestions.csv of blocks already labelled (never suggested again)");
  app.add_option("--seed", f.options.seed, "the random strategy's seed");
  AddStoreOption(&app, &f.store, "where --job is");
  cli.Root([&] { return Suggest(f); });
  return cli.Run(argc, argv);
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) { return retina::trainer::Main(argc, argv); }
