#include "trainer/engine/trainer.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <chrono>
#include <thread>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/checkpoint_store.h"
#include "common/fault_injection.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/job_identity.h"
#include "common/metrics_csv.h"
#include "common/records.h"
#include "common/store_layout.h"
#include "common/status_macros.h"
#include "trainer/engine/bf16_probe.h"
#include "trainer/engine/evaluate.h"
#include "trainer/engine/event_log.h"
#include "trainer/engine/stop_signals.h"
#include "trainer/engine/losses.h"
#include "trainer/engine/optimizer_state.h"
#include "trainer/engine/schedule.h"
#include "trainer/prediction/inference.h"
#include "trainer/scoring/metrics.h"
#include "trainer/model/batch_norm.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/model/weights/transfer.h"
#include "trainer/model/weights/weight_source.h"
#include "trainer/runtime/threads.h"

namespace retina::trainer {
namespace fs = std::filesystem;

namespace {

uint64_t Mix(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t x = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull) * 0xbf58476d1ce4e5b9ull ^ c * 0x94d049bb133111ebull;
  x ^= x >> 31;
  x *= 0xd6e8feb86659fd93ull;
  return x ^ (x >> 32);
}

double NowUnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace


Trainer::Trainer(const JobConfig& config, const RunOptions& options)
    : config_(config), options_(options), pretrain_(config.kind == JobKind::kPretrain), layout_(options.store) {}

Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const JobConfig& config, const RunOptions& o) {
  std::unique_ptr<Trainer> t(new Trainer(config, o));
  ASSIGN_OR_RETURN(t->launch_, DiscoverLaunch(o.launch));
  SetLogRank(t->launch_.world_size > 1 ? t->launch_.rank : -1);
  t->threads_ = ConfigureTorchThreads(t->launch_.local_world_size, config.runtime.threads);
  ASSIGN_OR_RETURN(t->device_, PlanDevice(config.runtime.device, config.runtime.precision, t->launch_.local_rank));
  if (t->device_.bf16 && !t->device_.device.is_cuda()) RETURN_IF_ERROR(ProbeCpuBf16Training());
  t->global_batch_ = t->pretrain_ ? config.pretrain.global_batch : config.finetune.global_batch;
  const int world = t->launch_.world_size;
  const int full = o.elastic_world_size > 0 ? o.elastic_world_size : world;
  t->bn_group_ranks_ = o.elastic_min_world_size > 0 ? o.elastic_min_world_size : full;
  if (full % world != 0 || world % t->bn_group_ranks_ != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--elastic ", full, ":", t->bn_group_ranks_, ": ", world,
                                                   " ranks is not a multiple of the minimum ", t->bn_group_ranks_,
                                                   " that divides the full world size ", full));
  }
  if (t->global_batch_ % full != 0) {
    return absl::InvalidArgumentError(absl::StrCat(t->pretrain_ ? "pretrain" : "finetune", ".global_batch: ",
                                                   t->global_batch_, " does not divide by the ",
                                                   o.elastic_world_size > 0 ? "full " : "", "world size ", full));
  }
  t->batch_ = t->global_batch_ / full;
  t->accumulation_ = full / world;
  // The gang forms first, so that a rank failing on its own inputs (bad data
  // on one node) ends the others' waits at once with its cause.
  RETURN_IF_ERROR(t->SetUpCommunicator());
  absl::Status s = t->SetUpData();
  if (s.ok()) s = t->SetUpModel();
  if (s.ok()) s = t->SetUpStore();
  if (!s.ok()) {
    t->comm_->PostFailure(s);
    return s;
  }
  return t;
}

// Data, checked before anything trains.
absl::Status Trainer::SetUpData() {
  ASSIGN_OR_RETURN(const auto dataset_ref, SplitDatasetVersion(config_.data.dataset, "data.dataset"));
  ASSIGN_OR_RETURN(fs::path data_dir, ResolveDataset(dataset_ref.first, options_.store, "data.dataset"));
  ASSIGN_OR_RETURN(data_, ShardedDataset::Open(data_dir, /*verify=*/false, dataset_ref.second), "data.dataset");
  dataset_dir_ = data_dir.string();
  if (!pretrain_ && !data_->labelled()) {
    return absl::FailedPreconditionError(
        absl::StrCat("data.dataset: ", data_dir.string(), " has no masks (fine-tuning needs labelled data)"));
  }
  if (!pretrain_ && !config_.data.val_dataset.empty()) {
    ASSIGN_OR_RETURN(fs::path val_dir, ResolveDataset(config_.data.val_dataset, options_.store, "data.val_dataset"));
    ASSIGN_OR_RETURN(val_, ShardedDataset::Open(val_dir, false), "data.val_dataset");
  }
  // Unset data.mean/std: the training dataset's own (its manifest). The
  // paper's CEM500K constants are stated in configs/pretrain-cem500k.yaml.
  mean_ = config_.data.mean.value_or(data_->manifest().mean);
  std_ = config_.data.std.value_or(data_->manifest().std);
  RETINA_LOG(Info) << "normalisation: mean " << mean_ << ", std " << std_
                   << (config_.data.mean ? " (data.mean/std)" : " (the dataset manifest's)");
  if (data_->size() < global_batch_) {
    return absl::FailedPreconditionError(
        absl::StrCat("data.dataset: ", data_->size(), " samples, fewer than one global batch of ", global_batch_));
  }
  return absl::OkStatus();
}

// The gang: rendezvous and the communicator.
absl::Status Trainer::SetUpCommunicator() {
  CommunicatorOptions co;
  co.backend = config_.runtime.dist_backend;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(config_.runtime.collective_timeout_s * 1000));
  co.cuda = device_.device.is_cuda();
  ASSIGN_OR_RETURN(comm_, CreateCommunicator(launch_, co));
  // Every rank says who it is first (the HPC guide's first check for hangs).
  RETINA_LOG(Info) << "rank " << launch_.rank << " of " << launch_.world_size << " (local " << launch_.local_rank
                   << " of " << launch_.local_world_size << ", from " << launch_.source << "), backend "
                   << comm_->backend() << ", rendezvous " << launch_.master_addr << ":" << launch_.master_port << " ("
                   << launch_.rendezvous_from << (launch_.agent_store ? ", torchrun agent store" : "") << "), "
                   << device_.describe << ", " << threads_.threads << " thread(s)";
  return absl::OkStatus();
}

// Model (and transfer), reducer, optimiser.
absl::Status Trainer::SetUpModel() {
  ASSIGN_OR_RETURN(model_config_,
                   NamedModelConfig(config_.model.name, config_.model.image_size, config_.model.classes,
                                    pretrain_ ? ModelHead::kReconstruction : ModelHead::kSegmentation));
  model_config_.dropout_rate = config_.model.dropout;
  torch::manual_seed(config_.seed);
  model_ = VisionTransformer(model_config_);
  model_->to(device_.dtype);  // before the transfer, so fp64 keeps the checkpoint's float64 values
  const FinetuneConfig& f = config_.finetune;
  if (!pretrain_ && f.init != "random") {
    ASSIGN_OR_RETURN(WeightSource source, ResolveWeights(f.init, options_.store, "finetune.init"));
    init_source_ = StoreRelative(!source.package.empty()          ? source.package
                                 : source.checkpoint_dir.empty() ? source.file
                                                                 : source.checkpoint_dir,
                                 options_.store);
    if (!source.checkpoint_dir.empty() && source.package.empty()) {
      ASSIGN_OR_RETURN(FileDigest manifest, Sha256File(source.checkpoint_dir / "MANIFEST"), "finetune.init");
      init_manifest_ = manifest.sha256;
    }
    ASSIGN_OR_RETURN(StateDict weights, ReadWeights(source, model_config_), "finetune.init");
    LoadReport report;
    if (f.init_whole) {  // a fine-tune continued: every tensor, strictly
      ASSIGN_OR_RETURN(report, LoadStateDict(*model_, std::move(weights)), "finetune.init " + f.init);
      if (f.freeze_encoder) FreezeEncoder(*model_);
    } else {
      ASSIGN_OR_RETURN(report, TransferPretrained(*model_, std::move(weights), f.freeze_encoder),
                       "finetune.init " + f.init);
    }
    RETINA_LOG(Info) << "transferred " << report.loaded.size() << " tensors from " << f.init
                     << (f.freeze_encoder ? "; transformer.encoder frozen" : "");
  }
  if (comm_->size() > 1) {
    // Groups of bn_group_ranks_ consecutive ranks (all of them unless elastic).
    Communicator* comm = comm_.get();
    auto sync = std::make_shared<BatchNormSync>();
    sync->all_reduce = [comm](torch::Tensor& t) {
      const absl::Status s = comm->AllReduceSum(t, "batch-norm statistics");
      TORCH_CHECK(s.ok(), std::string(s.message()));
    };
    sync->groups = comm_->size() / bn_group_ranks_;
    sync->group = launch_.rank / bn_group_ranks_;
    SetBatchNormSync(*model_, sync);
  }
  model_->to(device_.device, device_.dtype);
  model_->SetChannelsLast(true);
  RETURN_IF_ERROR(BroadcastModuleState(*model_, *comm_));
  reducer_ = std::make_unique<GradientReducer>(*model_, comm_.get());
  optimizer_ = std::make_unique<torch::optim::SGD>(
      model_->parameters(), torch::optim::SGDOptions(config_.optimizer.lr)
                                .momentum(config_.optimizer.momentum)
                                .weight_decay(config_.optimizer.weight_decay));
  pretrain_augment_ =
      std::make_unique<PretrainAugmenter>(config_.pretrain.augment, mean_, std_, model_config_.image_size, device_.dtype);
  finetune_augment_ = std::make_unique<FinetuneAugmenter>(f, mean_, std_, model_config_.image_size, device_.dtype);
  return absl::OkStatus();
}

// The job directory, resume, the store's records and the sampler.
absl::Status Trainer::SetUpStore() {
  const std::string& job = options_.job_id;
  const fs::path ckpt_dir = layout_.CheckpointsDir(job);
  if (launch_.rank == 0) {
    RETURN_IF_ERROR(CreateDirectories(layout_.JobDir(job)));
    RETURN_IF_ERROR(WriteFileAtomic(layout_.SpecPath(job), JobConfigToYaml(config_)));
    // A rank killed while writing a checkpoint (a preemption's grace ran
    // out, a crash) left an uncommitted one: this rank is now the writer.
    if (const absl::Status s = CheckpointStore(ckpt_dir).CleanTemporaries(); !s.ok()) {
      RETINA_LOG(Warning) << "cannot remove uncommitted checkpoints: " << s.message();
    }
  }
  SamplerState sampler_state;
  fs::path from;
  if (options_.resume == "auto") {
    absl::StatusOr<CheckpointInfo> latest = CheckpointStore(ckpt_dir).Latest();
    if (latest.ok()) from = latest->dir;
    else if (!absl::IsNotFound(latest.status())) return latest.status();
  } else if (options_.resume != "never") {
    from = options_.resume;
  }
  if (!from.empty()) {
    ASSIGN_OR_RETURN(CheckpointInfo info, CheckpointStore::Verify(from));
    ASSIGN_OR_RETURN(StateDict weights, ReadStateDictFile(info.dir / "model.pt"));
    RETURN_IF_ERROR(LoadStateDict(*model_, std::move(weights)).status(), "resuming from " + info.dir.string());
    RETURN_IF_ERROR(LoadSgdState(*optimizer_, model_->parameters(), info.dir / "optimizer.pt"));
    const fs::path state_path = info.dir / StoreLayout::kCheckpointState;
    ASSIGN_OR_RETURN(std::string text, ReadFile(state_path));
    ASSIGN_OR_RETURN(CheckpointState s, DecodeCheckpointState(text, state_path.string()));
    if (s.kind != JobKindName(config_.kind)) {
      return absl::FailedPreconditionError(
          absl::StrCat(info.dir.string(), " is a ", s.kind, " checkpoint; this job is ", JobKindName(config_.kind)));
    }
    // The data it trained on: a dataset that gained a version since (data.dataset
    // without @k) would feed the resumed sampler other samples.
    if (data_ != nullptr && s.dataset_version > 0 &&
        (s.dataset_version != data_->manifest().latest_version() ||
         s.dataset_digest != data_->manifest().VersionDigest(static_cast<int64_t>(data_->manifest().shards.size())))) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data.dataset: ", info.dir.string(), " trained on version ", s.dataset_version, " of ", s.dataset,
          " but version ", data_->manifest().latest_version(), " is open now; resume with data.dataset: ", s.dataset,
          "@", s.dataset_version));
    }
    step_ = s.step;
    sampler_state = {s.epoch, s.sampler_offset};
    if (s.world_size != launch_.world_size || s.accumulation != accumulation_) {
      resized_ = ResizedEvent{step_, s.world_size, launch_.world_size, s.accumulation, accumulation_};
    }
    RETINA_LOG(Info) << "resumed from " << from.string() << " at step " << step_ << " (epoch " << s.epoch
                     << ", offset " << s.sampler_offset << ")";
  }
  steps_per_epoch_ = data_->size() / global_batch_;
  total_ = pretrain_ ? config_.pretrain.epochs * steps_per_epoch_ : config_.finetune.iters;
  horizon_ = config_.schedule.horizon_iters > 0 ? config_.schedule.horizon_iters : total_;
  ASSIGN_OR_RETURN(DistributedSampler sampler,
                   DistributedSampler::Create(data_->size(), config_.seed, launch_.world_size, launch_.rank));
  RETURN_IF_ERROR(sampler.Restore(sampler_state));
  sampler_ = std::move(sampler);
  if (launch_.rank != 0) return absl::OkStatus();
  // The store's records continue from the checkpoint: steps past it (done
  // by a killed attempt) are dropped, so each step appears once.
  RETURN_IF_ERROR(TruncateMetricsCsv(layout_.MetricsCsvPath(job), step_));
  RETURN_IF_ERROR(TruncateEventLog(layout_.EventsPath(job), step_));
  ASSIGN_OR_RETURN(events_, EventLog::Open(layout_.EventsPath(job), options_.events));
  if (step_ > 0) events_->Write(ResumedEvent{step_});
  if (resized_) {
    RETINA_LOG(Info) << DescribeResize(*resized_) << " (global batch " << global_batch_ << " kept)";
    events_->Write(*resized_);
  }
  if (config_.checkpoint.save_initial && from.empty()) {
    RETURN_IF_ERROR(Save(std::nullopt));  // step 0: the weights every later step starts from
  }
  const bool new_csv = !fs::exists(layout_.MetricsCsvPath(job));
  metrics_csv_.reset(std::fopen(layout_.MetricsCsvPath(job).c_str(), "a"));
  if (!metrics_csv_) return ErrnoStatus(errno, "open", layout_.MetricsCsvPath(job));
  if (new_csv && (std::fprintf(metrics_csv_.get(), "%s\n", kMetricsCsvHeader) < 0 || std::fflush(metrics_csv_.get()) != 0)) {
    return ErrnoStatus(errno, "write", layout_.MetricsCsvPath(job));
  }
  return absl::OkStatus();
}

// A loader over the rest of the current epoch.
absl::Status Trainer::StartEpochLoader() {
  // Whole global batches only (drop last), so an epoch has the same steps
  // at every world size; each rank's step samples in micro-batch order.
  std::vector<std::vector<int64_t>> batches;
  DistributedSampler copy = *sampler_;
  const int64_t steps = (data_->size() - copy.state().offset) / global_batch_;
  while (static_cast<int64_t>(batches.size()) < steps && copy.per_rank() >= batch_ * accumulation_) {
    batches.push_back(MicroBatchOrder(copy.Next(batch_ * accumulation_), accumulation_));
  }
  LoaderOptions lo;
  lo.threads = std::max(1, config_.data.loader_threads);
  lo.prefetch = config_.data.prefetch_batches;
  lo.with_masks = !pretrain_;
  lo.pin_memory = device_.device.is_cuda();
  ASSIGN_OR_RETURN(loader_, Loader::Create(data_.get(), std::move(batches), lo));
  return absl::OkStatus();
}

absl::StatusOr<Trainer::StepResult> Trainer::Step(const RawBatch& batch) {
  StepResult r;
  r.lr = config_.schedule.policy == SchedulePolicy::kPoly
             ? PolyLearningRate(config_.optimizer.lr, step_, horizon_, config_.schedule.power)
             : config_.optimizer.lr;
  for (auto& group : optimizer_->param_groups()) static_cast<torch::optim::SGDOptions&>(group.options()).lr(r.lr);

  optimizer_->zero_grad();
  const torch::Tensor images = batch.images.to(device_.device, /*non_blocking=*/true);
  const torch::Tensor masks = pretrain_ ? torch::Tensor() : batch.masks.to(device_.device, /*non_blocking=*/true);
  double loss_sum = 0;  // this rank's micro-batch losses
  for (int64_t m = 0; m < accumulation_; ++m) {
    // Micro-batch m is the full run's rank v's batch (sampler.h): its seeds
    // too, so augmentation and dropout draw what rank v would have.
    const int v = VirtualRank(launch_.rank, launch_.world_size, static_cast<int>(m));
    const uint64_t seed = Mix(config_.seed, v, step_);
    torch::manual_seed(seed);
    torch::Generator gen = at::detail::createCPUGenerator(seed ^ 0x5bd1e995u);
    if (m == accumulation_ - 1) reducer_->PrepareForBackward(/*accumulated=*/accumulation_ > 1);
    const torch::Tensor x = images.narrow(0, m * batch_, batch_);
    torch::Tensor loss;
    try {
      // Augmentation in the batch's dtype; only the model runs under autocast.
      if (pretrain_) {
        const PretrainBatch pb = (*pretrain_augment_)(x, gen);
        torch::Tensor out;
        {
          Autocast autocast(device_);
          out = model_(pb.input);
        }
        // The loss in fp32 under autocast (in float64 at fp64).
        loss = torch::mse_loss(out.to(device_.dtype), pb.target);
      } else {
        const FinetuneBatch fb = (*finetune_augment_)(x, masks.narrow(0, m * batch_, batch_), gen);
        torch::Tensor logits;
        {
          Autocast autocast(device_);
          logits = model_(fb.image);
        }
        const LossKind loss_kind = config_.finetune.loss;
        const bool binary =
            loss_kind == LossKind::kBceDice || (loss_kind == LossKind::kAuto && model_config_.num_classes == 1);
        // Losses in fp32 under autocast (in float64 at fp64).
        const torch::Tensor l = logits.to(device_.dtype);
        loss = binary ? BceDiceLoss(l, fb.mask) : CeDiceLoss(l, fb.mask, config_.finetune.class_weights);
      }
      loss = loss.to(device_.dtype);
      // The mean over the global batch: 1/a here, 1/world in the reducer.
      (accumulation_ > 1 ? loss / static_cast<double>(accumulation_) : loss).backward();
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("rank ", launch_.rank, ": step ", step_, ": ", e.what_without_backtrace()));
    }
    loss_sum += loss.item<double>();
  }
  RETURN_IF_ERROR(reducer_->FinishBackward());
  optimizer_->step();
  ++step_;
  // Mean loss and any rank's stop request, in one collective.
  torch::Tensor shared =
      torch::tensor({loss_sum / accumulation_, StopSignals::Requested() != 0 ? 1.0 : 0.0}, torch::kDouble).to(device_.device);
  RETURN_IF_ERROR(comm_->AllReduceSum(shared, "loss and stop flag"));
  shared = shared.to(torch::kCPU);
  r.mean_loss = shared[0].item<double>() / comm_->size();
  r.stop = shared[1].item<double>() > 0;
  return r;
}

// The evaluation module's protocol: sliding windows over each validation
// image, the paper's per-image IoU (1e-5 smoothing), averaged per class.
absl::StatusOr<double> Trainer::Validate() {
  torch::NoGradGuard no_grad;
  model_->eval();
  SlidingWindowOptions so;
  so.window = model_config_.image_size;
  so.overlap = config_.finetune.val_overlap;
  so.device = device_.device;
  Volume preds, truth;
  preds.shape = truth.shape = {val_->size(), val_->height(), val_->width()};
  preds.data.resize(val_->size() * val_->height() * val_->width());
  truth.data.resize(preds.data.size());
  const int64_t plane = val_->height() * val_->width();
  for (int64_t i = 0; i < val_->size(); ++i) {
    RETURN_IF_ERROR(val_->CheckSample(i), "data.val_dataset");
    const torch::Tensor img =
        torch::from_blob(const_cast<uint8_t*>(val_->image(i)), {val_->height(), val_->width()}, torch::kByte);
    const torch::Tensor logits =
        SlidingWindowLogits(ModelForward(model_, device_.bf16), (img.to(device_.dtype) / 255 - mean_) / std_, so);
    const torch::Tensor lab = logits.size(0) == 1 ? (logits[0] > 0).to(torch::kByte) : logits.argmax(0).to(torch::kByte);
    std::memcpy(preds.data.data() + i * plane, lab.contiguous().data_ptr<uint8_t>(), plane);
    std::memcpy(truth.data.data() + i * plane, val_->mask(i), plane);
  }
  MetricOptions mo;
  for (int c = 1; c < std::max(2, model_config_.num_classes); ++c) mo.classes.push_back(c);
  mo.per_plane_iou = true;
  mo.distances = false;
  ASSIGN_OR_RETURN(std::vector<ClassMetrics> per_class, ComputeMetrics(preds, truth, mo), "validation");
  model_->train();
  EvalEvent eval;
  eval.step = step_;
  for (const ClassMetrics& c : per_class) {
    eval.iou_per_class[c.cls] = c.iou;
    eval.iou += c.iou / per_class.size();
  }
  events_->Write(eval);
  return eval.iou;
}

absl::Status Trainer::Save(std::optional<double> score) {
  const fs::path dir = layout_.CheckpointsDir(options_.job_id);
  ASSIGN_OR_RETURN(CheckpointWriter w, CheckpointWriter::Begin(dir, step_));
  const std::vector<char> weights = SerializeStateDict(GetStateDict(*model_));
  RETURN_IF_ERROR(w.WriteFile("model.pt", absl::string_view(weights.data(), weights.size())));
  const std::vector<char> optimizer = SerializeSgdState(*optimizer_, model_->parameters());
  RETURN_IF_ERROR(w.WriteFile("optimizer.pt", absl::string_view(optimizer.data(), optimizer.size())));
  CheckpointState s;
  s.step = step_;
  s.epoch = sampler_->state().epoch;
  s.sampler_offset = sampler_->state().offset;
  s.seed = config_.seed;
  s.world_size = launch_.world_size;
  s.accumulation = static_cast<int>(accumulation_);
  s.kind = JobKindName(config_.kind);
  s.config_sha256 = Sha256Hex(options_.config_text);
  s.model = config_.model.name;  // what inference needs to rebuild and normalise
  s.image_size = config_.model.image_size;
  s.classes = pretrain_ ? 1 : config_.model.classes;
  s.mean = mean_;
  s.std = std_;
  s.init = init_source_;
  s.init_manifest = init_manifest_;
  s.code_version = absl::StrCat("retina-train ", RETINA_VERSION, " (libtorch ", TORCH_VERSION, ")");
  if (data_ != nullptr) {
    s.dataset = dataset_dir_;
    s.dataset_version = data_->manifest().latest_version();
    s.dataset_digest = data_->manifest().VersionDigest(static_cast<int64_t>(data_->manifest().shards.size()));
  }
  RETURN_IF_ERROR(w.WriteFile(StoreLayout::kCheckpointState, EncodeCheckpointState(s)));
  if (score) w.SetScore(*score);
  if (static const std::optional<int64_t> stall = FaultValue(Fault::kCheckpointStallBeforeCommitMs); stall) {
    RETINA_LOG(Warning) << "RETINA_FAULTS checkpoint.stall_before_commit_ms: stalling " << *stall
                        << " ms before committing step " << step_;
    std::this_thread::sleep_for(std::chrono::milliseconds(*stall));
  }
  RETURN_IF_ERROR(CheckAttemptCurrent(layout_, options_.job_id, options_.attempt));
  ASSIGN_OR_RETURN(CheckpointInfo info, w.Commit());
  ASSIGN_OR_RETURN(auto removed,
                   CheckpointStore(dir).ApplyRetention(
                       config_.checkpoint.keep_last, config_.checkpoint.keep_best,
                       pretrain_ ? std::set<int64_t>() : std::set<int64_t>(config_.finetune.eval_at.begin(),
                                                                            config_.finetune.eval_at.end())));
  events_->Write(CheckpointEvent{step_, info.dir.string(), removed});
  return absl::OkStatus();
}

void Trainer::Record(const StepResult& r, double seconds, std::optional<double> val_iou) {
  const double ips = seconds > 0 ? global_batch_ / seconds : 0;
  const int64_t epoch = sampler_->state().epoch;
  events_->Write(
      StepEvent{step_, epoch, r.mean_loss, r.lr, ips, loader_->last_wait_seconds(), reducer_->exposed_seconds()});
  MetricsRow row;
  row.step = step_;
  row.epoch = epoch;
  row.loss = r.mean_loss;
  row.lr = r.lr;
  row.images_per_s = ips;
  row.data_wait_s = loader_->last_wait_seconds();
  row.allreduce_exposed_s = reducer_->exposed_seconds();
  row.val_iou = val_iou;
  row.time = NowUnixSeconds();
  const std::string line = FormatMetricsRow(row);
  if (std::fputs(line.c_str(), metrics_csv_.get()) < 0 || std::fflush(metrics_csv_.get()) != 0) {
    RETINA_LOG(Warning) << layout_.MetricsCsvPath(options_.job_id).string() << ": write failed: " << std::strerror(errno);
  }
  if (val_iou) bar_->Note(absl::StrFormat("step %d: validation IoU %.4f", step_, *val_iou));
  bar_->Update(step_, absl::StrFormat("loss %.4g, lr %.3g, %.1f img/s", r.mean_loss, r.lr, ips));
}

absl::StatusOr<RunOutcome> Trainer::Run() {
  absl::StatusOr<RunOutcome> outcome = RunSteps();
  if (!outcome.ok()) comm_->PostFailure(outcome.status());  // the other ranks stop now, with this cause
  return outcome;
}

absl::StatusOr<RunOutcome> Trainer::RunSteps() {
  StopSignals signals;
  // Rate and ETA from the steps this process runs (not those it resumed past).
  bar_ = std::make_unique<ProgressBar>(absl::StrCat(JobKindName(config_.kind), " ", options_.job_id), total_, "steps", step_);
  if (events_) {
    StartEvent start;
    start.step = step_;
    start.total_steps = total_;
    start.world_size = launch_.world_size;
    start.device = device_.describe;
    start.backend = comm_->backend();
    start.threads = threads_.threads;
    start.global_batch = global_batch_;
    start.accumulation = static_cast<int>(accumulation_);
    events_->Write(start);
  }
  RETURN_IF_ERROR(StartEpochLoader());
  model_->train();
  const std::optional<int64_t> crash_after_step = FaultValue(Fault::kTrainCrashAfterStep);
  auto last = std::chrono::steady_clock::now();
  while (step_ < total_) {
    std::optional<RawBatch> batch = loader_->Next();
    if (!batch) {  // epoch done (drop last)
      sampler_->NextEpoch();
      RETURN_IF_ERROR(StartEpochLoader());
      continue;
    }
    RETURN_IF_ERROR(batch->status);  // a damaged sample: stop before it reaches the model
    (void)sampler_->Next(batch_ * accumulation_);  // advance in lock step with the loader's batch list
    ASSIGN_OR_RETURN(StepResult r, Step(*batch));
    if (crash_after_step && step_ == *crash_after_step) {
      RETINA_LOG(Warning) << "RETINA_FAULTS train.crash_after_step: dying after step " << step_;
      std::_Exit(137);
    }
    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - last).count();
    last = now;
    const FinetuneConfig& f = config_.finetune;
    std::optional<double> val_iou;
    if (launch_.rank == 0 && !pretrain_ && val_ && f.eval_every_iters > 0 &&
        (step_ % f.eval_every_iters == 0 || step_ == total_)) {
      ASSIGN_OR_RETURN(val_iou, Validate());
    }
    // A newer attempt fenced this one off (a host cut off, then healed):
    // stop before writing a row or a checkpoint (job_identity.h, ATTEMPT).
    if (launch_.rank == 0) RETURN_IF_ERROR(CheckAttemptCurrent(layout_, options_.job_id, options_.attempt));
    if (launch_.rank == 0) Record(r, seconds, val_iou);
    const bool epoch_end = pretrain_ && step_ % steps_per_epoch_ == 0;
    const bool eval_step =
        !pretrain_ && std::find(f.eval_at.begin(), f.eval_at.end(), static_cast<double>(step_)) != f.eval_at.end();
    const bool due = r.stop || step_ == total_ || eval_step ||
                     (pretrain_ ? epoch_end && (step_ / steps_per_epoch_) % config_.pretrain.checkpoint_every_epochs == 0
                                : step_ % f.save_every_iters == 0);
    if (due && launch_.rank == 0) {
      RETURN_IF_ERROR(Save(val_iou));
      bar_->Note(absl::StrFormat("step %d: checkpoint written", step_));
    }
    if (r.stop) {
      RETURN_IF_ERROR(comm_->Barrier("checkpoint before stopping"));
      if (events_) events_->Write(PreemptedEvent{step_});
      bar_->Finish();
      return RunOutcome::kPreempted;
    }
  }
  bar_->Finish();
  // A study's scoring of the kept eval_at checkpoints on the test split:
  // rank 0, after training (the other ranks are done).
  if (launch_.rank == 0 && !pretrain_ && !config_.finetune.eval_at.empty()) {
    loader_.reset();
    RETURN_IF_ERROR(ScoreEvalSteps(config_, options_.store, options_.job_id, device_.device));
  }
  if (events_) events_->Write(DoneEvent{step_});
  return RunOutcome::kCompleted;
}

}  // namespace retina::trainer
