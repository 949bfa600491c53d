#include "trainer/engine/loop.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/dataset_manifest.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "common/job_identity.h"
#include "common/store_layout.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"
#include "trainer/data/shards.h"
#include "trainer/data/tools/import.h"
#include "trainer/engine/stop_signals.h"
#include "trainer/prediction/inference.h"
#include "trainer/prediction/predict.h"
#include "trainer/prediction/suggest.h"
#include "trainer/runtime/device.h"

namespace retina::trainer {
namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

namespace {

struct Pool {
  Volume image, labels;
  std::string unit;
};

absl::StatusOr<Pool> LoadPool(const JobConfig& c, const fs::path& store) {
  auto path = [&](const std::string& p) { return fs::path(p).is_absolute() ? p : (store / p).string(); };
  Pool pool;
  ASSIGN_OR_RETURN(RawArray image, ReadArray(path(c.loop.pool)), "loop.pool");
  pool.unit = image.unit;
  ASSIGN_OR_RETURN(pool.image, ToImage(image, IntensityScaling::kRequireUInt8), "loop.pool");
  ASSIGN_OR_RETURN(RawArray labels, ReadArray(path(c.loop.pool_labels)), "loop.pool_labels");
  ASSIGN_OR_RETURN(pool.labels, ToMask(labels, MaskConvention::kClassIndex), "loop.pool_labels");
  if (pool.image.shape != pool.labels.shape) {
    const auto& a = pool.image.shape;
    const auto& b = pool.labels.shape;
    return absl::InvalidArgumentError(absl::StrCat("loop.pool_labels: ", b[0], "x", b[1], "x", b[2],
                                                   " but loop.pool is ", a[0], "x", a[1], "x", a[2], " (z x y x x)"));
  }
  const int classes = std::max(2, c.model.classes);
  const uint8_t top = *std::max_element(pool.labels.data.begin(), pool.labels.data.end());
  if (top >= classes) {
    return absl::InvalidArgumentError(absl::StrCat("loop.pool_labels: class ", static_cast<int>(top),
                                                   " but model.classes is ", c.model.classes));
  }
  return pool;
}

// The block of `v` as a one-plane volume.
Volume Crop(const Volume& v, const LabelBlock& b) {
  Volume out;
  out.shape = {1, b.height, b.width};
  out.spacing = v.spacing;
  out.data.resize(static_cast<size_t>(b.height * b.width));
  for (int64_t r = 0; r < b.height; ++r) {
    std::memcpy(out.data.data() + r * b.width, v.plane(b.z) + (b.y + r) * v.shape[2] + b.x, static_cast<size_t>(b.width));
  }
  return out;
}

// The simulated annotator: the image and the ground truth of each block,
// written as a person would hand them back (images/, masks/, same names).
absl::Status Annotate(const Pool& pool, const std::vector<Suggestion>& blocks, const fs::path& dir) {
  RETURN_IF_ERROR(CreateDirectories(dir / "images"));
  RETURN_IF_ERROR(CreateDirectories(dir / "masks"));
  for (const Suggestion& s : blocks) {
    const std::string name = absl::StrFormat("z%05d-y%05d-x%05d.tif", s.block.z, s.block.y, s.block.x);
    RETURN_IF_ERROR(WriteTiff((dir / "images" / name).string(), Crop(pool.image, s.block), false));
    RETURN_IF_ERROR(WriteTiff((dir / "masks" / name).string(), Crop(pool.labels, s.block), false));
  }
  return absl::OkStatus();
}

Json BlockJson(const LabelBlock& b) { return Json::array({b.z, b.y, b.x, b.height, b.width}); }
LabelBlock BlockFromJson(const nlohmann::json& j) {
  return {j.at(0).get<int64_t>(), j.at(1).get<int64_t>(), j.at(2).get<int64_t>(), j.at(3).get<int64_t>(),
          j.at(4).get<int64_t>()};
}

// The mean IoU of an EvalReport (over items and classes).
double MeanIou(const EvalReport& r) { return r.mean_iou; }

// Shard files in the loop's own dataset that its manifest does not list: the
// leftovers of an add that was killed before its manifest was written.
absl::Status RemoveUnlistedShards(const fs::path& dataset) {
  absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(dataset);
  std::set<std::string> listed;
  if (m.ok()) {
    for (const ShardInfo& s : m->shards) listed.insert(s.file);
  }
  std::error_code ec;
  for (fs::directory_iterator it(dataset, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("shard-", 0) == 0 && !listed.count(name)) {
      RETINA_LOG(Warning) << "loop: removing " << it->path().string() << " (not in the manifest: an interrupted add)";
      fs::remove(it->path(), ec);
      if (ec) return absl::InternalError(absl::StrCat(it->path().string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RunOutcome> RunLoop(const JobConfig& config, const RunOptions& o) {
  StopSignals signals;
  const StoreLayout layout(o.store);
  const fs::path dir = layout.JobDir(o.job_id);
  // A newer attempt of this job owns it: this one writes nothing more.
  auto current = [&]() -> absl::Status {
    return o.attempt > 0 ? CheckAttemptCurrent(layout, o.job_id, o.attempt) : absl::OkStatus();
  };
  const fs::path labelled = dir / "labelled";
  const LoopConfig& l = config.loop;
  RETURN_IF_ERROR(CreateDirectories(dir / "evals"));
  ASSIGN_OR_RETURN(const Pool pool, LoadPool(config, o.store));
  const auto [Z, Y, X] = pool.image.shape;
  const int64_t block = std::min<int64_t>({l.block > 0 ? l.block : config.model.image_size, Y, X});
  if (block < config.model.image_size) {
    return absl::InvalidArgumentError(absl::StrCat("loop.pool: planes of ", Y, "x", X,
                                                   " are smaller than a training tile of ", config.model.image_size,
                                                   " (model.image_size)"));
  }
  // Paths the rounds' fine-tunes (their own store under rounds/) must see
  // as this store's.
  ASSIGN_OR_RETURN(const fs::path test_dir, ResolveDataset(config.data.test_dataset, o.store, "data.test_dataset"));
  auto absolute = [&](const std::string& p) { return fs::path(p).is_absolute() ? p : (fs::path(o.store) / p).string(); };

  // loop.json: what the finished rounds did.
  Json state = {{"v", 1}, {"strategy", EnumName(l.strategy)}, {"block", block}, {"rounds", Json::array()},
                {"labelled", Json::array()}};
  std::vector<LabelBlock> done_blocks;
  if (absl::StatusOr<std::string> text = ReadFile(dir / "loop.json"); text.ok()) {
    const nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
    if (!j.is_object() || j.value("strategy", "") != EnumName(l.strategy) || j.value("block", int64_t{0}) != block) {
      return absl::FailedPreconditionError(absl::StrCat((dir / "loop.json").string(),
                                                        ": written by a loop with other settings; remove it"));
    }
    state = j;
    for (const auto& b : j.at("labelled")) done_blocks.push_back(BlockFromJson(b));
  }
  const int rounds_done = static_cast<int>(state["rounds"].size());
  ASSIGN_OR_RETURN(const DevicePlan device, PlanDevice(config.runtime.device, Precision::kFp32, 0));

  // Adds `blocks` (chosen for round `round`) as version round + 1 of the
  // labelled dataset and returns the blocks that version holds: an earlier
  // attempt's, read back from its suggestions.csv, when it added them already.
  auto add = [&](int round, const std::vector<Suggestion>& blocks) -> absl::StatusOr<std::vector<LabelBlock>> {
    const fs::path round_dir = dir / "rounds" / absl::StrCat("r", round);
    absl::StatusOr<DatasetManifest> m = DatasetManifest::Load(labelled);
    if (m.ok() && m->latest_version() >= round + 1) {
      return ReadSuggestionBlocks(round_dir / "suggestions" / "suggestions.csv");
    }
    RETURN_IF_ERROR(current());
    RETURN_IF_ERROR(RemoveUnlistedShards(labelled));
    std::error_code ec;
    fs::remove_all(round_dir, ec);  // a half-written set from an interrupted attempt
    RETURN_IF_ERROR(Annotate(pool, blocks, round_dir / "blocks"));
    RETURN_IF_ERROR(WriteSuggestions(round_dir / "suggestions", blocks, pool.image, pool.unit));
    AddBlocksOptions a;
    a.dataset = labelled;
    a.input = round_dir / "blocks";
    a.size = config.model.image_size;  // training tiles: a block of more is cut like retina-shard import
    a.classes = std::max(2, config.model.classes);
    RETURN_IF_ERROR(AddLabelledBlocks(a).status());
    std::vector<LabelBlock> out;
    for (const Suggestion& s : blocks) out.push_back(s.block);
    return out;
  };

  std::string previous_model;
  if (rounds_done > 0) previous_model = state["rounds"].back().at("model").get<std::string>();
  for (int round = rounds_done; round < l.rounds; ++round) {
    if (StopSignals::Requested() != 0) return RunOutcome::kPreempted;
    if (round == 0) {
      // The initial blocks: random, the same for every strategy at this seed.
      SuggestOptions so;
      so.block = block;
      so.count = l.initial_blocks;
      so.strategy = SelectionStrategy::kRandom;
      so.seed = static_cast<uint64_t>(config.seed);
      ASSIGN_OR_RETURN(std::vector<Suggestion> first,
                       SuggestBlocks(std::vector<float>(static_cast<size_t>(Z * Y * X), 0.0f), pool.image.shape, so));
      if (static_cast<int>(first.size()) < l.initial_blocks) {
        return absl::FailedPreconditionError(absl::StrCat("loop.initial_blocks: ", l.initial_blocks,
                                                          " blocks asked, the pool holds ", first.size()));
      }
      ASSIGN_OR_RETURN(done_blocks, add(0, first));
    }
    ASSIGN_OR_RETURN(const DatasetManifest m, DatasetManifest::Load(labelled));
    const int version = round + 1;
    ASSIGN_OR_RETURN(const DatasetManifest at, m.AtVersion(version));
    // The round's fine-tune.
    JobConfig child = config;
    child.kind = JobKind::kFinetune;
    child.seed = config.seed * 1009 + round;  // (1009 > rounds: no two (seed, round) share a stream)
    child.data.dataset = absl::StrCat(labelled.string(), "@", version);
    child.data.test_dataset = test_dir.string();
    if (!child.data.val_dataset.empty()) {
      ASSIGN_OR_RETURN(const fs::path val, ResolveDataset(config.data.val_dataset, o.store, "data.val_dataset"));
      child.data.val_dataset = val.string();
    }
    if (round > 0) {
      child.finetune.init = previous_model;
      child.finetune.init_whole = true;
      // Frozen only as the first round was: a random init trains every tensor.
      child.finetune.freeze_encoder = config.finetune.init != "random" && config.finetune.freeze_encoder;
    } else if (child.finetune.init != "random") {
      child.finetune.init = absolute(child.finetune.init);
    }
    child.finetune.eval_at = {static_cast<double>(child.finetune.iters)};
    RunOptions co;
    co.store = dir / "rounds";
    co.job_id = absl::StrCat("r", round);
    co.config_text = JobConfigToYaml(child);
    co.attempt = o.attempt;  // fences the round's fine-tune like the loop
    RETINA_LOG(Info) << "loop round " << round << ": " << at.count << " tiles from " << done_blocks.size()
                     << " blocks (dataset version " << version << "), fine-tuning " << child.finetune.iters
                     << " iterations from " << child.finetune.init;
    ASSIGN_OR_RETURN(const RunOutcome outcome, RunJob(child, co), absl::StrCat("loop round ", round));
    if (outcome == RunOutcome::kPreempted) return outcome;
    const StoreLayout rounds(co.store);
    const fs::path eval_path = rounds.StepEvalPath(co.job_id, child.finetune.iters);
    ASSIGN_OR_RETURN(const std::string eval_text, ReadFile(eval_path), absl::StrCat("loop round ", round));
    ASSIGN_OR_RETURN(const EvalReport eval, DecodeEvalReport(eval_text, eval_path.string()));
    const int64_t budget = static_cast<int64_t>(done_blocks.size());
    RETURN_IF_ERROR(WriteFileAtomic(layout.StepEvalPath(o.job_id, budget), eval_text));
    previous_model = (rounds.CheckpointsDir(co.job_id) / "LATEST").string();
    // The blocks for the next round.
    if (round + 1 < l.rounds) {
      if (StopSignals::Requested() != 0) return RunOutcome::kPreempted;
      SegmentationModel model;
      {
        ModelSelection sel;
        sel.weights = previous_model;
        ASSIGN_OR_RETURN(model, LoadSegmentationModel(sel, device.device), "loop: the round's model");
      }
      SlidingWindowOptions win;
      win.window = model.config.image_size;
      win.overlap = l.overlap;
      win.device = device.device;
      ASSIGN_OR_RETURN(const VolumePrediction p, PredictVolume(ModelForward(model.model), pool.image, model.mean,
                                                               model.std, PredictionMode::kStack, win, true, nullptr));
      const torch::Tensor u = NormalisedEntropy(p.probabilities).contiguous();
      std::vector<float> map(static_cast<size_t>(u.numel()));
      std::memcpy(map.data(), u.data_ptr<float>(), map.size() * sizeof(float));
      SuggestOptions so;
      so.block = block;
      so.count = l.blocks_per_round;
      so.min_distance = l.min_distance;
      so.strategy = l.strategy;
      so.seed = static_cast<uint64_t>(config.seed) * 1000003u + static_cast<uint64_t>(round) + 1;
      so.labelled = done_blocks;
      ASSIGN_OR_RETURN(const std::vector<Suggestion> next, SuggestBlocks(map, pool.image.shape, so));
      // Fewer blocks would put the next score at another budget than planned.
      if (static_cast<int>(next.size()) < l.blocks_per_round) {
        return absl::FailedPreconditionError(absl::StrCat(
            "loop: round ", round + 1, " asks for ", l.blocks_per_round, " blocks but only ", next.size(),
            " unlabelled ones are left in loop.pool under the ", EnumName(l.strategy),
            " rule; lower loop.min_distance or loop.blocks_per_round, or give a larger pool"));
      }
      if (StopSignals::Requested() != 0) return RunOutcome::kPreempted;
      ASSIGN_OR_RETURN(const std::vector<LabelBlock> added, add(round + 1, next));
      done_blocks.insert(done_blocks.end(), added.begin(), added.end());
    }
    RETURN_IF_ERROR(current());
    // The round, recorded last.
    state["rounds"].push_back({{"round", round},
                               {"blocks", budget},
                               {"tiles", at.count},
                               {"dataset_version", version},
                               {"dataset_digest", at.versions.empty() ? "" : at.versions.back().digest},
                               {"mean_iou", MeanIou(eval)},
                               {"model", previous_model},
                               {"eval", layout.StepEvalPath(o.job_id, budget).string()}});
    state["labelled"] = Json::array();
    for (const LabelBlock& b : done_blocks) state["labelled"].push_back(BlockJson(b));
    RETURN_IF_ERROR(WriteFileAtomic(dir / "loop.json", state.dump(2) + "\n"));
    std::string csv = "round,blocks,tiles,dataset_version,mean_iou\n";
    for (const auto& r : state["rounds"]) {
      absl::StrAppend(&csv, r.at("round").get<int>(), ",", r.at("blocks").get<int64_t>(), ",",
                      r.at("tiles").get<int64_t>(), ",", r.at("dataset_version").get<int>(), ",",
                      absl::StrFormat("%.6f", r.at("mean_iou").get<double>()), "\n");
    }
    RETURN_IF_ERROR(WriteFileAtomic(dir / "loop.csv", csv));
    RETINA_LOG(Info) << "loop round " << round << ": " << budget << " blocks labelled, mean IoU "
                     << absl::StrFormat("%.4f", MeanIou(eval));
  }
  return RunOutcome::kCompleted;
}

}  // namespace retina::trainer
