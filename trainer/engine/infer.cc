#include "trainer/engine/infer.h"

#include <glob.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/fault_injection.h"
#include "common/file_util.h"
#include "common/job_identity.h"
#include "common/logging.h"
#include "common/path_policy.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/writers.h"
#include "trainer/data/formats/zarr.h"
#include "trainer/dist/communicator.h"
#include "trainer/engine/event_log.h"
#include "trainer/engine/stop_signals.h"
#include "trainer/prediction/predict.h"
#include "trainer/prediction/zarr_prediction.h"
#include "trainer/runtime/device.h"
#include "trainer/runtime/threads.h"

namespace retina::trainer {
namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// The output stem of an input: its file name without the image extensions;
// an HDF5 dataset adds its last path component ("vol.h5:/raw" -> "vol").
std::string Stem(const std::string& spec) {
  std::string path = spec;
  if (const size_t colon = path.find(".h5:"); colon != std::string::npos) path = path.substr(0, colon + 3);
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  std::string name = fs::path(path).filename().string();
  for (const char* ext : {".ome.zarr", ".zarr", ".nii.gz", ".tiff", ".tif", ".png", ".h5", ".hdf5", ".nii", ".nrrd", ".nhdr"}) {
    if (absl::EndsWith(absl::AsciiStrToLower(name), ext) && name.size() > std::string(ext).size()) {
      name.resize(name.size() - std::string(ext).size());
      break;
    }
  }
  return name;
}

bool IsInputName(const fs::path& p) {
  return IsReadableImageName(p.filename().string()) || IsZarrPath(p.string());
}

}  // namespace

absl::StatusOr<std::vector<InferInput>> ExpandInferInputs(const std::vector<std::string>& inputs, const fs::path& base) {
  std::vector<std::string> specs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string field = absl::StrCat("infer.inputs[", i, "]");
    std::string spec = inputs[i];
    std::string dataset;  // HDF5 "file.h5:/path"
    if (const size_t at = absl::AsciiStrToLower(spec).find(".h5:"); at != std::string::npos) {
      dataset = spec.substr(at + 3);
      spec = spec.substr(0, at + 3);
    }
    const fs::path path = fs::path(spec).is_absolute() ? fs::path(spec) : base / spec;
    std::error_code ec;
    if (spec.find_first_of("*?[") != std::string::npos) {
      glob_t g{};
      const int rc = ::glob(path.c_str(), 0, nullptr, &g);
      size_t matched = 0;
      for (size_t k = 0; rc == 0 && k < g.gl_pathc; ++k) {
        if (!IsInputName(g.gl_pathv[k]) && dataset.empty()) continue;
        specs.push_back(std::string(g.gl_pathv[k]) + dataset);
        ++matched;
      }
      globfree(&g);
      if (matched == 0) return absl::NotFoundError(absl::StrCat(field, ": '", inputs[i], "' matches no image or volume"));
    } else if (fs::is_directory(path, ec) && !IsZarrPath(path.string())) {
      std::vector<std::string> found;
      for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
        if (it->path().filename().string().front() != '.' && IsInputName(it->path())) found.push_back(it->path().string());
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) {
        return absl::NotFoundError(absl::StrCat(field, ": folder ", path.string(), " holds no image or volume"));
      }
      specs.insert(specs.end(), found.begin(), found.end());
    } else if (!fs::exists(path, ec)) {
      return absl::NotFoundError(absl::StrCat(field, ": ", path.string(), ": no such file or directory"));
    } else {
      specs.push_back(path.string() + dataset);
    }
  }
  std::vector<InferInput> out;
  std::map<std::string, int> used;
  for (const std::string& s : specs) {
    std::string name = Stem(s);
    if (const int n = used[name]++; n > 0) name = absl::StrCat(name, "-", n + 1);
    out.push_back({s, name});
  }
  return out;
}

namespace {

struct PlannedInput {
  InferInput input;
  std::array<int64_t, 3> shape{0, 0, 0};
  std::array<double, 3> spacing{1, 1, 1};
  std::string unit;
  std::unique_ptr<ZarrPrediction> zarr;  // ome-zarr
  fs::path file;                         // tiff/hdf5: the output
  std::string fingerprint;
};

int64_t Volume(const std::array<int64_t, 3>& s) { return s[0] * s[1] * s[2]; }

class InferJob {
 public:
  InferJob(const JobConfig& config, const RunOptions& options) : config_(config), o_(options), layout_(options.store) {}
  absl::Status SetUp();
  Communicator* comm() { return comm_.get(); }
  absl::StatusOr<RunOutcome> Run();

 private:
  absl::Status LoadModel();
  absl::Status PlanInputs();
  absl::StatusOr<bool> Rounds(const std::vector<std::pair<size_t, int64_t>>& work,
                              const std::function<absl::Status(size_t, int64_t)>& step, bool predicting);
  absl::StatusOr<RunOutcome> RunZarr();
  absl::StatusOr<RunOutcome> RunFiles();
  absl::Status WriteSummary(double seconds) const;
  void Progress(bool final);
  void MaybeStall();

  const JobConfig& config_;
  RunOptions o_;
  StoreLayout layout_;
  LaunchInfo launch_;
  DevicePlan device_;
  std::unique_ptr<Communicator> comm_;
  SegmentationModel model_;
  RowPredictor predictor_;
  fs::path out_dir_;
  std::vector<PlannedInput> inputs_;
  std::unique_ptr<EventLog> events_;
  int64_t rows_total_ = 0, rows_skipped_ = 0, rows_done_ = 0, voxels_total_ = 0, voxels_done_ = 0;
  int64_t voxels_this_attempt_ = 0, rows_committed_here_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

absl::Status InferJob::SetUp() {
  ASSIGN_OR_RETURN(launch_, DiscoverLaunch(o_.launch));
  SetLogRank(launch_.world_size > 1 ? launch_.rank : -1);
  const ThreadPlan threads = ConfigureTorchThreads(launch_.local_world_size, config_.runtime.threads);
  ASSIGN_OR_RETURN(device_, PlanDevice(config_.runtime.device, InferencePrecision(config_.runtime.precision), launch_.local_rank));
  CommunicatorOptions co;
  co.backend = config_.runtime.dist_backend;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(config_.runtime.collective_timeout_s * 1000));
  co.cuda = false;  // the round's all-reduce is two CPU numbers
  if (co.backend == "nccl") co.backend = "auto";
  ASSIGN_OR_RETURN(comm_, CreateCommunicator(launch_, co));
  RETINA_LOG(Info) << "infer: rank " << launch_.rank << " of " << launch_.world_size << ", backend " << comm_->backend()
                   << ", " << device_.describe << ", " << threads.threads << " thread(s)";
  RETURN_IF_ERROR(LoadModel());
  out_dir_ = config_.infer.output.empty() ? layout_.PredictionsDir(o_.job_id) : fs::path(config_.infer.output);
  if (!config_.infer.output.empty() && out_dir_.is_relative()) out_dir_ = o_.store / out_dir_;
  return PlanInputs();
}

absl::Status InferJob::LoadModel() {
  const InferConfig& c = config_.infer;
  ModelSelection s;
  s.weights = c.weights;
  s.store = o_.store;
  if (config_.data.mean && config_.data.std) {
    s.mean = config_.data.mean;
    s.std = config_.data.std;
  }
  ASSIGN_OR_RETURN(model_, LoadSegmentationModel(s, device_.device), "infer.weights");
  if (c.classes > 0 && c.classes != model_.config.num_classes) {
    return absl::InvalidArgumentError(absl::StrCat("infer.classes: ", c.classes, " asked for, but ",
                                                   model_.weights_file.string(), " segments ",
                                                   model_.config.num_classes, " class(es)"));
  }
  predictor_.forward = ModelForward(model_.model, device_.bf16);
  predictor_.mean = model_.mean;
  predictor_.std = model_.std;
  predictor_.mode = c.mode;
  predictor_.window.window = model_.config.image_size;
  predictor_.window.batch = c.batch;
  predictor_.window.device = device_.device;
  int64_t mb = c.memory_mb;
  if (mb == 0) {
    const int64_t half = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE) / 2;
    mb = std::min<int64_t>(1024, (half >> 20) / std::max(1, launch_.local_world_size));
  }
  predictor_.memory_bytes = mb << 20;
  return absl::OkStatus();
}

absl::Status InferJob::PlanInputs() {
  const InferConfig& c = config_.infer;
  ASSIGN_OR_RETURN(std::vector<InferInput> expanded, ExpandInferInputs(c.inputs, o_.store));
  if (o_.confine) {  // what the globs and folders matched, after symlinks, and where we write
    const PathPolicy policy(o_.store, o_.allowed_roots, o_.output_roots);
    for (const InferInput& in : expanded) {
      const size_t h5 = absl::AsciiStrToLower(in.spec).find(".h5:");
      RETURN_IF_ERROR(policy.Check("infer.inputs", h5 == std::string::npos ? in.spec : in.spec.substr(0, h5 + 3)));
    }
    RETURN_IF_ERROR(policy.CheckOutput("infer.output", out_dir_, o_.job_id));
  }
  ASSIGN_OR_RETURN(FileDigest weights, Sha256File(model_.weights_file), "infer.weights");
  ZarrPredictionOptions zo;
  zo.chunks = {static_cast<int64_t>(c.chunks[0]), static_cast<int64_t>(c.chunks[1]), static_cast<int64_t>(c.chunks[2])};
  ASSIGN_OR_RETURN(zo.compressor, ParseZarrCompressor(c.compressor, "infer.compressor"));
  zo.levels = c.levels;
  zo.probabilities = c.probabilities;
  zo.uncertainty = c.uncertainty == UncertaintyOutput::kEntropy;
  const IntensityScaling scaling = c.intensity == "minmax" ? IntensityScaling::kMinMax : IntensityScaling::kRequireUInt8;
  for (const InferInput& in : expanded) {
    PlannedInput p;
    p.input = in;
    {  // Open it now: a missing, unreadable or non-uint8 input fails before any output.
      ASSIGN_OR_RETURN(std::unique_ptr<PlaneReader> reader, OpenPlaneReader(in.spec, scaling), "infer.inputs");
      p.shape = reader->shape();
      p.spacing = reader->spacing();
      p.unit = reader->has_spacing() ? reader->unit() : "";
      if (Volume(p.shape) == 0) return absl::InvalidArgumentError(absl::StrCat("infer.inputs: ", in.spec, ": empty"));
    }
    const double overlap = c.overlap.value_or(p.shape[0] > 1 ? 0.7 : 0.5);
    Json settings = {{"input", in.spec},       {"shape", p.shape},         {"weights", weights.sha256},
                           {"mode", EnumName(c.mode)}, {"overlap", overlap},     {"mean", model_.mean},
                           {"std", model_.std},      {"chunks", c.chunks},       {"levels", c.levels},
                           {"format", EnumName(c.format)}, {"probabilities", EnumName(c.probabilities)},
                           {"compressor", c.compressor}, {"window", model_.config.image_size}};
    if (zo.uncertainty) settings["uncertainty"] = EnumName(c.uncertainty);
    p.fingerprint = Sha256Hex(settings.dump());
    if (c.format == InferFormat::kOmeZarr) {
      ASSIGN_OR_RETURN(p.zarr, ZarrPrediction::Plan(out_dir_ / (in.name + ".ome.zarr"), p.shape, p.spacing, p.unit,
                                                    model_.config.num_classes, zo, o_.job_id, p.fingerprint));
      rows_total_ += p.zarr->rows();
    } else {
      p.file = out_dir_ / (in.name + (c.format == InferFormat::kTiff ? ".tif" : ".h5"));
      std::error_code ec;
      const absl::StatusOr<std::string> marker = ReadFile(out_dir_ / ".retina" / (in.name + ".done"));
      if (fs::exists(p.file, ec) && !(marker.ok() && *marker == p.fingerprint + " " + o_.job_id + "\n")) {
        return absl::FailedPreconditionError(absl::StrCat(
            p.file.string(), " exists and is not this job's output; remove it or choose another infer.output"));
      }
      rows_total_ += 1;
    }
    voxels_total_ += Volume(p.shape);
    inputs_.push_back(std::move(p));
  }
  return absl::OkStatus();
}

void InferJob::MaybeStall() {
  // Fault injection (common/fault_injection.h): stall, until killed, after N commits.
  const std::optional<int64_t> n = FaultValue(Fault::kInferStallAfterRows);
  if (n && rows_committed_here_ >= *n) {
    RETINA_LOG(Warning) << "fault infer.stall_after_rows=" << *n << ": stalling";
    while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

void InferJob::Progress(bool final) {
  if (!events_) return;
  PredictEvent e;
  e.chunks_done = rows_done_;
  e.chunks_total = rows_total_;
  e.chunks_skipped = rows_skipped_;
  e.voxels_done = voxels_done_;
  e.voxels_total = voxels_total_;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  e.voxels_per_s = voxels_this_attempt_ / std::max(s, 1e-9);
  events_->Write(e);
  if (final) events_->Write(DoneEvent{});
}

// Runs `work` (input, row) in rounds: round k, rank r does item k * world + r,
// then one all-reduce of (stop requests, voxels). Returns false when stopped.
absl::StatusOr<bool> InferJob::Rounds(const std::vector<std::pair<size_t, int64_t>>& work,
                                      const std::function<absl::Status(size_t, int64_t)>& step, bool predicting) {
  const int64_t world = comm_->size(), rank = comm_->rank();
  const int64_t rounds = (static_cast<int64_t>(work.size()) + world - 1) / world;
  for (int64_t k = 0; k < rounds; ++k) {
    const int64_t i = k * world + rank;
    double voxels = 0;
    if (i < static_cast<int64_t>(work.size())) {
      const auto [input, row] = work[i];
      // Every rank writes its own rows: each stops once a newer attempt has
      // fenced this one off (job_identity.h, ATTEMPT).
      RETURN_IF_ERROR(CheckAttemptCurrent(StoreLayout(o_.store), o_.job_id, o_.attempt));
      RETURN_IF_ERROR(step(input, row));
      if (predicting) {
        voxels = static_cast<double>(inputs_[input].zarr ? inputs_[input].zarr->RowVoxels(row)
                                                         : Volume(inputs_[input].shape));
        ++rows_committed_here_;
      }
    }
    torch::Tensor t = torch::tensor({StopSignals::Requested() != 0 ? 1.0 : 0.0, voxels}, torch::kDouble);
    RETURN_IF_ERROR(comm_->AllReduceSum(t, "infer round"));
    if (predicting) {
      const int64_t done_now = std::min<int64_t>(world, static_cast<int64_t>(work.size()) - k * world);
      rows_done_ += done_now;
      voxels_done_ += static_cast<int64_t>(t[1].item<double>());
      voxels_this_attempt_ += static_cast<int64_t>(t[1].item<double>());
      Progress(false);
      MaybeStall();
    }
    if (t[0].item<double>() > 0) return false;
  }
  return true;
}

absl::StatusOr<RunOutcome> InferJob::RunZarr() {
  if (comm_->rank() == 0) {
    for (const PlannedInput& p : inputs_) RETURN_IF_ERROR(p.zarr->Prepare());
  }
  RETURN_IF_ERROR(comm_->Barrier("infer: outputs prepared"));
  // Every rank lists the same pending rows (the markers do not change until
  // the rounds start).
  std::vector<std::pair<size_t, int64_t>> pending;
  for (size_t i = 0; i < inputs_.size(); ++i) {
    for (int64_t r = 0; r < inputs_[i].zarr->rows(); ++r) {
      if (inputs_[i].zarr->RowDone(r)) {
        ++rows_skipped_;
        voxels_done_ += inputs_[i].zarr->RowVoxels(r);
      } else {
        pending.emplace_back(i, r);
      }
    }
  }
  rows_done_ = rows_skipped_;
  RETINA_LOG(Info) << "infer: " << inputs_.size() << " input(s), " << rows_total_ << " chunk row(s); "
                   << rows_skipped_ << " already written by an earlier attempt, skipped; " << pending.size()
                   << " to predict over " << comm_->size() << " rank(s)";
  Progress(false);
  std::map<size_t, std::unique_ptr<PlaneReader>> readers;  // opened on first use
  const IntensityScaling scaling =
      config_.infer.intensity == "minmax" ? IntensityScaling::kMinMax : IntensityScaling::kRequireUInt8;
  VolumeStreamStats stats;
  const absl::StatusOr<bool> finished = Rounds(pending, [&](size_t i, int64_t row) -> absl::Status {
    PlannedInput& p = inputs_[i];
    if (readers.size() > 1 && !readers.count(i)) readers.clear();  // hold one input at a time
    if (!readers.count(i)) {
      ASSIGN_OR_RETURN(readers[i], OpenPlaneReader(p.input.spec, scaling));
    }
    RowPredictor rp = predictor_;
    rp.window.overlap = config_.infer.overlap.value_or(p.shape[0] > 1 ? 0.7 : 0.5);
    return p.zarr->PredictRow(row, *readers[i], rp, &stats);
  }, true);
  if (!finished.ok()) return finished.status();
  if (!*finished) return RunOutcome::kPreempted;
  readers.clear();
  RETINA_LOG(Info) << "infer: rank " << comm_->rank() << " predicted " << rows_committed_here_ << " row(s), "
                   << stats.windows << " windows";
  int max_levels = 0;
  for (const PlannedInput& p : inputs_) max_levels = std::max(max_levels, p.zarr->levels());
  for (int level = 1; level < max_levels; ++level) {
    RETURN_IF_ERROR(comm_->Barrier(absl::StrCat("infer: level ", level - 1, " written")));
    std::vector<std::pair<size_t, int64_t>> rows;
    for (size_t i = 0; i < inputs_.size(); ++i) {
      if (inputs_[i].zarr->finished() || level >= inputs_[i].zarr->levels()) continue;
      for (int64_t r = 0; r < inputs_[i].zarr->LevelRows(level); ++r) rows.emplace_back(i, r);
    }
    const absl::StatusOr<bool> done = Rounds(rows, [&](size_t i, int64_t row) {
      return inputs_[i].zarr->DownsampleRow(level, row);
    }, false);
    if (!done.ok()) return done.status();
    if (!*done) return RunOutcome::kPreempted;
  }
  RETURN_IF_ERROR(comm_->Barrier("infer: pyramid written"));
  if (comm_->rank() == 0) {
    for (const PlannedInput& p : inputs_) {
      if (!p.zarr->finished()) RETURN_IF_ERROR(p.zarr->Finish());
    }
  }
  return RunOutcome::kCompleted;
}

absl::StatusOr<RunOutcome> InferJob::RunFiles() {
  if (comm_->rank() == 0) RETURN_IF_ERROR(CreateDirectories(out_dir_ / ".retina"));
  RETURN_IF_ERROR(comm_->Barrier("infer: output directory"));
  std::vector<std::pair<size_t, int64_t>> pending;
  for (size_t i = 0; i < inputs_.size(); ++i) {
    std::error_code ec;
    if (fs::exists(inputs_[i].file, ec)) {
      ++rows_skipped_;
      voxels_done_ += Volume(inputs_[i].shape);
    } else {
      pending.emplace_back(i, 0);
    }
  }
  rows_done_ = rows_skipped_;
  RETINA_LOG(Info) << "infer: " << inputs_.size() << " input(s); " << rows_skipped_
                   << " already written by an earlier attempt, skipped; " << pending.size() << " to predict";
  Progress(false);
  const IntensityScaling scaling =
      config_.infer.intensity == "minmax" ? IntensityScaling::kMinMax : IntensityScaling::kRequireUInt8;
  const bool probs = config_.infer.probabilities != ProbabilityOutput::kNone;
  const absl::StatusOr<bool> finished = Rounds(pending, [&](size_t i, int64_t) -> absl::Status {
    PlannedInput& p = inputs_[i];
    ASSIGN_OR_RETURN(std::unique_ptr<PlaneReader> in, OpenPlaneReader(p.input.spec, scaling));
    ASSIGN_OR_RETURN(std::unique_ptr<PlaneWriter> out,
                     OpenPlaneWriter(p.file.string(), p.shape, p.spacing, in->has_spacing(),
                                     probs ? model_.config.num_classes : 0, p.unit));
    RowPredictor rp = predictor_;
    rp.window.overlap = config_.infer.overlap.value_or(p.shape[0] > 1 ? 0.7 : 0.5);
    const int64_t slab = SlabPlanesForBudget(p.shape, model_.config.num_classes, rp.mode, rp.window, rp.memory_bytes);
    RETURN_IF_ERROR(PredictVolumeStreaming(rp.forward, *in, rp.mean, rp.std, rp.mode, rp.window, slab, probs, *out,
                                           nullptr)
                        .status());
    RETURN_IF_ERROR(out->Finish());
    return WriteFileAtomic(out_dir_ / ".retina" / (p.input.name + ".done"), p.fingerprint + " " + o_.job_id + "\n");
  }, true);
  if (!finished.ok()) return finished.status();
  return *finished ? RunOutcome::kCompleted : RunOutcome::kPreempted;
}

absl::Status InferJob::WriteSummary(double seconds) const {
  Json items = Json::array();
  for (const PlannedInput& p : inputs_) {
    Json item = {{"input", p.input.spec}, {"shape", p.shape}, {"spacing", p.spacing}, {"unit", p.unit}};
    if (p.zarr) {
      item["labels"] = p.zarr->dir().string();
      item["levels"] = p.zarr->levels();
      if (config_.infer.probabilities != ProbabilityOutput::kNone) {
        item["probabilities"] = p.zarr->probabilities_dir().string();
      }
      if (config_.infer.uncertainty != UncertaintyOutput::kNone) item["uncertainty"] = p.zarr->uncertainty_dir().string();
    } else {
      item["labels"] = p.file.string();
    }
    items.push_back(item);
  }
  const Json j = {{"v", kRecordVersion},
                  {"weights", model_.weights_file.string()},
                  {"model", model_.config.name},
                  {"mode", EnumName(config_.infer.mode)},
                  {"world_size", comm_->size()},
                  {"chunk_rows", rows_total_},
                  {"chunk_rows_skipped", rows_skipped_},
                  {"voxels", voxels_total_},
                  {"seconds", seconds},
                  {"voxels_per_s", voxels_this_attempt_ / std::max(seconds, 1e-9)},
                  {"outputs", items}};
  return WriteFileAtomic(layout_.PredictionsReportPath(o_.job_id), j.dump(2) + "\n");
}

absl::StatusOr<RunOutcome> InferJob::Run() {
  StopSignals signals;
  // Every rank has checked the inputs and what is at the outputs before any
  // rank writes (a rank still checking would see rank 0's fresh directories).
  RETURN_IF_ERROR(comm_->Barrier("infer: inputs and outputs checked"));
  if (comm_->rank() == 0) {
    RETURN_IF_ERROR(CreateDirectories(layout_.JobDir(o_.job_id)));
    RETURN_IF_ERROR(WriteFileAtomic(layout_.SpecPath(o_.job_id), JobConfigToYaml(config_)));
    ASSIGN_OR_RETURN(events_, EventLog::Open(layout_.EventsPath(o_.job_id), o_.events));
    StartEvent start;
    start.total_steps = rows_total_;
    start.world_size = comm_->size();
    start.device = device_.describe;
    start.backend = comm_->backend();
    events_->Write(start);
  }
  start_ = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(RunOutcome outcome,
                   config_.infer.format == InferFormat::kOmeZarr ? RunZarr() : RunFiles());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (outcome == RunOutcome::kPreempted) {
    RETINA_LOG(Warning) << "infer: stopped by a signal after " << rows_done_ << " of " << rows_total_
                        << " chunk row(s); run again to resume";
    if (events_) events_->Write(PreemptedEvent{rows_done_});
    return outcome;
  }
  if (comm_->rank() == 0) {
    RETURN_IF_ERROR(WriteSummary(seconds));
    Progress(true);
    std::printf("infer: %zu input(s), %lld voxels in %.1f s (%.0f voxels/s over %d rank(s)) -> %s\n", inputs_.size(),
                static_cast<long long>(voxels_total_), seconds, voxels_this_attempt_ / std::max(seconds, 1e-9),
                comm_->size(), out_dir_.c_str());
  }
  return outcome;
}

}  // namespace

absl::StatusOr<RunOutcome> RunInfer(const JobConfig& config, const RunOptions& options) {
  InferJob job(config, options);
  const absl::Status setup = job.SetUp();
  absl::StatusOr<RunOutcome> outcome = setup.ok() ? job.Run() : absl::StatusOr<RunOutcome>(setup);
  // The other ranks stop now, with this cause (communicator.h PostFailure).
  if (!outcome.ok() && job.comm() != nullptr) job.comm()->PostFailure(outcome.status());
  return outcome;
}

}  // namespace retina::trainer
