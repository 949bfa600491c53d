#include "trainer/engine/run.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/job_identity.h"
#include "common/path_policy.h"
#include "common/checkpoint_store.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/metrics_csv.h"
#include "common/progress.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "trainer/data/augment.h"
#include "trainer/data/loader.h"
#include "trainer/data/sampler.h"
#include "trainer/data/shards.h"
#include "trainer/dist/communicator.h"
#include "trainer/dist/reducer.h"
#include "trainer/engine/evaluate.h"
#include "trainer/engine/losses.h"
#include "trainer/engine/optimizer_state.h"
#include "trainer/eval/inference.h"
#include "trainer/eval/metrics.h"
#include "trainer/model/batch_norm.h"
#include "trainer/model/state_dict.h"
#include "trainer/model/transfer.h"
#include "trainer/model/transunet.h"
#include "trainer/model/weight_source.h"
#include "trainer/runtime/device.h"
#include "trainer/runtime/threads.h"

namespace retina::trainer {
namespace fs = std::filesystem;
namespace {

std::atomic<int> g_stop_signal{0};
extern "C" void OnStopSignal(int sig) { g_stop_signal.store(sig); }

// Installs SIGTERM/SIGUSR1 handlers for the run; restores the old ones.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal.store(0);
    struct sigaction sa {};
    sa.sa_handler = OnStopSignal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term_);
    sigaction(SIGUSR1, &sa, &old_usr1_);
  }
  ~StopSignals() {
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGUSR1, &old_usr1_, nullptr);
  }

 private:
  struct sigaction old_term_ {}, old_usr1_ {};
};

uint64_t Mix(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t x = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull) * 0xbf58476d1ce4e5b9ull ^ c * 0x94d049bb133111ebull;
  x ^= x >> 31;
  x *= 0xd6e8feb86659fd93ull;
  return x ^ (x >> 32);
}

// JSON-lines events (rank 0): to the store's events.jsonl and, optionally, to
// a file or an inherited descriptor.
class EventLog {
 public:
  static absl::StatusOr<std::unique_ptr<EventLog>> Open(const fs::path& store_events, const std::string& extra) {
    auto log = std::unique_ptr<EventLog>(new EventLog());
    log->store_fd_ = ::open(store_events.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log->store_fd_ < 0) return ErrnoStatus(errno, "open", store_events);
    if (absl::StartsWith(extra, "fd:")) {
      if (!absl::SimpleAtoi(extra.substr(3), &log->extra_fd_)) {
        return absl::InvalidArgumentError("--events: 'fd:N' needs a descriptor number, got '" + extra + "'");
      }
      log->own_extra_ = false;
    } else if (!extra.empty()) {
      log->extra_fd_ = ::open(extra.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (log->extra_fd_ < 0) return ErrnoStatus(errno, "open --events", extra);
    }
    return log;
  }
  ~EventLog() {
    if (store_fd_ >= 0) ::close(store_fd_);
    if (extra_fd_ >= 0 && own_extra_) ::close(extra_fd_);
  }
  void Write(const Event& event) {
    const std::string line =
        EncodeEvent(event, std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()) +
        "\n";
    for (int fd : {store_fd_, extra_fd_}) {
      if (fd >= 0) {
        ssize_t ignored = ::write(fd, line.data(), line.size());
        (void)ignored;
      }
    }
  }

 private:
  EventLog() = default;
  int store_fd_ = -1, extra_fd_ = -1;
  bool own_extra_ = true;
};

absl::StatusOr<fs::path> ResolveDataset(const std::string& name, const fs::path& store, const std::string& key) {
  if (name.find('/') != std::string::npos) return fs::path(name);
  RETURN_IF_ERROR(StoreLayout::ValidateName(name, key));
  return StoreLayout(store).DatasetDir(name);
}

struct StepState {
  int64_t step = 0;
  SamplerState sampler;
};

absl::Status SaveCheckpoint(const fs::path& dir, const StepState& st, torch::nn::Module& model,
                            torch::optim::SGD& opt, const JobConfig& config, const RunOptions& o, int world,
                            std::optional<double> score, double mean, double std, EventLog* events) {
  ASSIGN_OR_RETURN(CheckpointWriter w, CheckpointWriter::Begin(dir, st.step));
  const std::vector<char> weights = SerializeStateDict(GetStateDict(model));
  RETURN_IF_ERROR(w.WriteFile("model.pt", absl::string_view(weights.data(), weights.size())));
  const std::vector<char> optimizer = SerializeSgdState(opt, model.parameters());
  RETURN_IF_ERROR(w.WriteFile("optimizer.pt", absl::string_view(optimizer.data(), optimizer.size())));
  CheckpointState s;
  s.step = st.step;
  s.epoch = st.sampler.epoch;
  s.sampler_offset = st.sampler.offset;
  s.seed = config.seed;
  s.world_size = world;
  s.kind = config.kind;
  s.config_sha256 = Sha256Hex(o.config_text);
  s.model = config.model.name;  // what inference needs to rebuild and normalise
  s.image_size = config.model.image_size;
  s.classes = config.kind == "pretrain" ? 1 : config.model.classes;
  s.mean = mean;
  s.std = std;
  RETURN_IF_ERROR(w.WriteFile(StoreLayout::kCheckpointState, EncodeCheckpointState(s)));
  if (score) w.SetScore(*score);
  ASSIGN_OR_RETURN(CheckpointInfo info, w.Commit());
  ASSIGN_OR_RETURN(auto removed, CheckpointStore(dir).ApplyRetention(config.checkpoint.keep_last, config.checkpoint.keep_best));
  events->Write(CheckpointEvent{st.step, info.dir.string(), removed});
  return absl::OkStatus();
}

absl::StatusOr<StepState> LoadCheckpoint(const fs::path& dir, torch::nn::Module& model, torch::optim::SGD& opt,
                                         const JobConfig& config) {
  ASSIGN_OR_RETURN(CheckpointInfo info, CheckpointStore::Verify(dir));
  ASSIGN_OR_RETURN(StateDict weights, ReadStateDictFile(info.dir / "model.pt"));
  RETURN_IF_ERROR(LoadStateDict(model, std::move(weights)).status(), "resuming from " + info.dir.string());
  RETURN_IF_ERROR(LoadSgdState(opt, model.parameters(), info.dir / "optimizer.pt"));
  const fs::path state_path = info.dir / StoreLayout::kCheckpointState;
  ASSIGN_OR_RETURN(std::string text, ReadFile(state_path));
  ASSIGN_OR_RETURN(CheckpointState s, DecodeCheckpointState(text, state_path.string()));
  if (s.kind != config.kind) {
    return absl::FailedPreconditionError(
        absl::StrCat(info.dir.string(), " is a ", s.kind, " checkpoint; this job is ", config.kind));
  }
  StepState st;
  st.step = s.step;
  st.sampler.epoch = s.epoch;
  st.sampler.offset = s.sampler_offset;
  return st;
}

}  // namespace

absl::StatusOr<RunOutcome> RunJob(const JobConfig& given, const RunOptions& o) {
  // A service rank reads only under the store and the allowed roots, with
  // relative paths taken from the store (common/path_policy.h).
  JobConfig config = given;
  if (o.confine) {
    const PathPolicy policy(o.store, o.allowed_roots);
    RETURN_IF_ERROR(policy.CheckConfig(config));
    if (!config.data.dataset.empty()) config.data.dataset = policy.DatasetPath(config.data.dataset).string();
    if (!config.data.val_dataset.empty()) config.data.val_dataset = policy.DatasetPath(config.data.val_dataset).string();
    if (config.finetune.init != "random") config.finetune.init = policy.WeightsPath(config.finetune.init).string();
    if (!config.evaluate.checkpoint.empty()) {
      config.evaluate.checkpoint = policy.WeightsPath(config.evaluate.checkpoint).string();
    }
  }
  const bool pretrain = config.kind == "pretrain";
  RETURN_IF_ERROR(StoreLayout::ValidateName(o.job_id, "--job"));
  // Never adopt a job directory this job did not create (its checkpoints,
  // spec and metrics would be another job's).
  RETURN_IF_ERROR(CheckJobOwner(StoreLayout(o.store), o.job_id, o.job_uid, /*claim=*/true));
  if (config.kind == "evaluate") return RunEvaluation(config, o);
  ASSIGN_OR_RETURN(LaunchInfo launch, DiscoverLaunch(o.launch));
  SetLogRank(launch.world_size > 1 ? launch.rank : -1);
  const ThreadPlan threads = ConfigureTorchThreads(launch.local_world_size, config.runtime.threads);
  ASSIGN_OR_RETURN(DevicePlan device, PlanDevice(config.runtime.device, config.runtime.precision, launch.local_rank));
  const int global_batch = pretrain ? config.pretrain.global_batch : config.finetune.global_batch;
  if (global_batch % launch.world_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(pretrain ? "pretrain" : "finetune", ".global_batch: ", global_batch,
                                                   " does not divide by the world size ", launch.world_size));
  }
  const int64_t b = global_batch / launch.world_size;

  // Data, checked before anything trains.
  ASSIGN_OR_RETURN(fs::path data_dir, ResolveDataset(config.data.dataset, o.store, "data.dataset"));
  ASSIGN_OR_RETURN(std::unique_ptr<ShardedDataset> data, ShardedDataset::Open(data_dir, /*verify=*/false),
                   "data.dataset");
  if (!pretrain && !data->labelled()) {
    return absl::FailedPreconditionError(absl::StrCat("data.dataset: ", data_dir.string(), " has no masks (fine-tuning needs labelled data)"));
  }
  std::unique_ptr<ShardedDataset> val;
  if (!pretrain && !config.data.val_dataset.empty()) {
    ASSIGN_OR_RETURN(fs::path val_dir, ResolveDataset(config.data.val_dataset, o.store, "data.val_dataset"));
    ASSIGN_OR_RETURN(val, ShardedDataset::Open(val_dir, false), "data.val_dataset");
  }
  // Unset data.mean/std: the training dataset's own (its manifest). The
  // paper's CEM500K constants are stated in configs/pretrain-cem500k.yaml.
  const double mean = config.data.mean.value_or(data->manifest().mean);
  const double std = config.data.std.value_or(data->manifest().std);
  RETINA_LOG(Info) << "normalisation: mean " << mean << ", std " << std
                   << (config.data.mean ? " (data.mean/std)" : " (the dataset manifest's)");
  if (data->size() < global_batch) {
    return absl::FailedPreconditionError(absl::StrCat("data.dataset: ", data->size(), " samples, fewer than one global batch of ", global_batch));
  }

  // Communication and model.
  CommunicatorOptions co;
  co.backend = config.runtime.dist_backend;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(config.runtime.collective_timeout_s * 1000));
  co.cuda = device.device.is_cuda();
  ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, CreateCommunicator(launch, co));
  // Every rank says who it is first (the HPC guide's first check for hangs).
  RETINA_LOG(Info) << "rank " << launch.rank << " of " << launch.world_size << " (local " << launch.local_rank << " of "
                   << launch.local_world_size << ", from " << launch.source << "), backend " << comm->backend()
                   << ", rendezvous " << launch.master_addr << ":" << launch.master_port << " (" << launch.rendezvous_from
                   << (launch.agent_store ? ", torchrun agent store" : "") << "), " << device.describe
                   << ", " << threads.threads << " thread(s)";
  ASSIGN_OR_RETURN(TransUNetConfig mc,
                   NamedModelConfig(config.model.name, config.model.image_size, config.model.classes,
                                    pretrain ? ModelHead::kReconstruction : ModelHead::kSegmentation));
  mc.dropout_rate = config.model.dropout;
  torch::manual_seed(config.seed);
  VisionTransformer model(mc);
  model->to(device.dtype);  // before the transfer, so fp64 keeps the checkpoint's float64 values
  if (!pretrain && config.finetune.init != "random") {
    ASSIGN_OR_RETURN(WeightSource source, ResolveWeights(config.finetune.init, o.store, "finetune.init"));
    ASSIGN_OR_RETURN(StateDict weights, ReadWeights(source, mc), "finetune.init");
    ASSIGN_OR_RETURN(LoadReport report, TransferPretrained(*model, std::move(weights), config.finetune.freeze_encoder),
                     "finetune.init " + config.finetune.init);
    RETINA_LOG(Info) << "transferred " << report.loaded.size() << " tensors from " << config.finetune.init
                     << (config.finetune.freeze_encoder ? "; transformer.encoder frozen" : "");
  }
  Communicator* cm = comm.get();
  auto bn_all_reduce = std::make_shared<SumAllReduce>([cm](torch::Tensor& t) {
    const absl::Status s = cm->AllReduceSum(t, "batch-norm statistics");
    TORCH_CHECK(s.ok(), std::string(s.message()));
  });
  if (cm->size() > 1) SetBatchNormAllReduce(*model, bn_all_reduce);
  model->to(device.device, device.dtype);
  model->SetChannelsLast(true);
  RETURN_IF_ERROR(BroadcastModuleState(*model, *cm));
  GradientReducer reducer(*model, cm);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(config.optimizer.lr)
                                                 .momentum(config.optimizer.momentum)
                                                 .weight_decay(config.optimizer.weight_decay));

  // The store.
  const StoreLayout layout(o.store);
  const fs::path ckpt_dir = layout.CheckpointsDir(o.job_id);
  if (launch.rank == 0) {
    RETURN_IF_ERROR(CreateDirectories(layout.JobDir(o.job_id)));
    RETURN_IF_ERROR(WriteFileAtomic(layout.SpecPath(o.job_id), JobConfigToYaml(config)));
  }

  // Resume.
  StepState st;
  fs::path from;
  if (o.resume != "never") {
    if (o.resume == "auto") {
      absl::StatusOr<CheckpointInfo> latest = CheckpointStore(ckpt_dir).Latest();
      if (latest.ok()) from = latest->dir;
      else if (!absl::IsNotFound(latest.status())) return latest.status();
    } else {
      from = o.resume;
    }
    if (!from.empty()) {
      ASSIGN_OR_RETURN(st, LoadCheckpoint(from, *model, opt, config));
      RETINA_LOG(Info) << "resumed from " << from.string() << " at step " << st.step << " (epoch " << st.sampler.epoch
                       << ", offset " << st.sampler.offset << ")";
    }
  }
  // The store's records continue from the checkpoint: steps past it (done
  // by a killed attempt) are dropped, so each step appears once.
  std::unique_ptr<EventLog> events;
  if (launch.rank == 0) {
    RETURN_IF_ERROR(TruncateMetricsCsv(layout.MetricsCsvPath(o.job_id), st.step));
    RETURN_IF_ERROR(TruncateEventLog(layout.EventsPath(o.job_id), st.step));
    ASSIGN_OR_RETURN(events, EventLog::Open(layout.EventsPath(o.job_id), o.events));
    if (st.step > 0) events->Write(ResumedEvent{st.step});
  }
  if (config.checkpoint.save_initial && from.empty() && events) {
    // Step 0: the weights every later step starts from (after transfer).
    RETURN_IF_ERROR(SaveCheckpoint(ckpt_dir, st, *model, opt, config, o, launch.world_size, std::nullopt, mean, std,
                                   events.get()));
  }
  const int64_t steps_per_epoch = data->size() / global_batch;
  const int64_t total = pretrain ? config.pretrain.epochs * steps_per_epoch : config.finetune.iters;
  const int64_t horizon = config.schedule.horizon_iters > 0 ? config.schedule.horizon_iters : total;
  ASSIGN_OR_RETURN(DistributedSampler sampler, DistributedSampler::Create(data->size(), config.seed, launch.world_size, launch.rank));
  RETURN_IF_ERROR(sampler.Restore(st.sampler));

  PretrainAugmenter pre_aug(config.pretrain.augment, mean, std, mc.image_size, device.dtype);
  FinetuneAugmenter fine_aug(config.finetune, mean, std, mc.image_size, device.dtype);
  StopSignals signals;
  // Rate and ETA from the steps this process runs (not those it resumed past).
  ProgressBar bar(absl::StrCat(config.kind, " ", o.job_id), total, "steps", st.step);
  if (events) {
    StartEvent start;
    start.step = st.step;
    start.total_steps = total;
    start.world_size = launch.world_size;
    start.device = device.describe;
    start.backend = cm->backend();
    start.threads = threads.threads;
    start.global_batch = global_batch;
    events->Write(start);
  }
  const bool new_metrics = launch.rank == 0 && !fs::exists(layout.MetricsCsvPath(o.job_id));
  std::FILE* metrics = launch.rank == 0 ? std::fopen(layout.MetricsCsvPath(o.job_id).c_str(), "a") : nullptr;
  if (metrics != nullptr && new_metrics) {
    std::fprintf(metrics, "%s\n", kMetricsCsvHeader);
  }
  absl::Cleanup close_metrics = [&] {
    if (metrics) std::fclose(metrics);
  };

  // Epoch-local loader over the rest of the current epoch.
  std::unique_ptr<Loader> loader;
  auto start_epoch_loader = [&]() -> absl::Status {
    std::vector<std::vector<int64_t>> batches;
    DistributedSampler copy = sampler;
    while (copy.per_rank() >= b) batches.push_back(copy.Next(b));
    LoaderOptions lo;
    lo.threads = std::max(1, config.data.loader_threads);
    lo.prefetch = config.data.prefetch_batches;
    lo.with_masks = !pretrain;
    lo.pin_memory = device.device.is_cuda();
    ASSIGN_OR_RETURN(loader, Loader::Create(data.get(), std::move(batches), lo));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(start_epoch_loader());

  model->train();
  auto last = std::chrono::steady_clock::now();
  while (st.step < total) {
    std::optional<RawBatch> batch = loader->Next();
    if (!batch) {  // epoch done (drop last)
      sampler.NextEpoch();
      st.sampler = sampler.state();
      RETURN_IF_ERROR(start_epoch_loader());
      continue;
    }
    RETURN_IF_ERROR(batch->status);  // a damaged sample: stop before it reaches the model
    (void)sampler.Next(b);  // advance in lock step with the loader's batch list
    const uint64_t step_seed = Mix(config.seed, launch.rank, st.step);
    torch::manual_seed(step_seed);
    torch::Generator gen = at::detail::createCPUGenerator(step_seed ^ 0x5bd1e995u);
    const double lr = config.schedule.policy == "poly"
                          ? PolyLearningRate(config.optimizer.lr, st.step, horizon, config.schedule.power)
                          : config.optimizer.lr;
    for (auto& group : opt.param_groups()) static_cast<torch::optim::SGDOptions&>(group.options()).lr(lr);

    opt.zero_grad();
    reducer.PrepareForBackward();
    torch::Tensor loss;
    const torch::Tensor images = batch->images.to(device.device, /*non_blocking=*/true);
    const torch::Tensor masks = pretrain ? torch::Tensor() : batch->masks.to(device.device, /*non_blocking=*/true);
    try {
      CudaAutocast autocast(device.bf16);
      if (pretrain) {
        const PretrainBatch pb = pre_aug(images, gen);
        loss = torch::mse_loss(model(pb.input), pb.target);
      } else {
        const FinetuneBatch fb = fine_aug(images, masks, gen);
        const torch::Tensor logits = model(fb.image);
        const bool binary = config.finetune.loss == "bce_dice" || (config.finetune.loss == "auto" && mc.num_classes == 1);
        // Losses in fp32 under autocast (in float64 at fp64).
        const torch::Tensor l = logits.to(device.dtype);
        loss = binary ? BceDiceLoss(l, fb.mask) : CeDiceLoss(l, fb.mask, config.finetune.class_weights);
      }
      loss = loss.to(device.dtype);
      loss.backward();
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("rank ", launch.rank, ": step ", st.step, ": ", e.what_without_backtrace()));
    }
    RETURN_IF_ERROR(reducer.FinishBackward());
    opt.step();
    ++st.step;
    st.sampler = sampler.state();

    // Mean loss and any rank's stop request, in one collective.
    torch::Tensor shared =
        torch::tensor({loss.item<double>(), g_stop_signal.load() != 0 ? 1.0 : 0.0}, torch::kDouble).to(device.device);
    RETURN_IF_ERROR(cm->AllReduceSum(shared, "loss and stop flag"));
    shared = shared.to(torch::kCPU);
    const double mean_loss = shared[0].item<double>() / cm->size();
    const bool stop = shared[1].item<double>() > 0;

    const auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    last = now;
    std::optional<double> val_iou;
    if (!pretrain && val && config.finetune.eval_every_iters > 0 &&
        (st.step % config.finetune.eval_every_iters == 0 || st.step == total) && launch.rank == 0) {
      // The evaluation module's protocol: sliding windows over each validation
      // image, the paper's per-image IoU (1e-5 smoothing), averaged per class.
      torch::NoGradGuard no_grad;
      model->eval();
      SlidingWindowOptions so;
      so.window = mc.image_size;
      so.overlap = config.finetune.val_overlap;
      so.device = device.device;
      Volume preds, truth;
      preds.shape = truth.shape = {val->size(), val->height(), val->width()};
      preds.data.resize(val->size() * val->height() * val->width());
      truth.data.resize(preds.data.size());
      const int64_t plane = val->height() * val->width();
      for (int64_t i = 0; i < val->size(); ++i) {
        RETURN_IF_ERROR(val->CheckSample(i), "data.val_dataset");
        const torch::Tensor img =
            torch::from_blob(const_cast<uint8_t*>(val->image(i)), {val->height(), val->width()}, torch::kByte);
        const torch::Tensor logits = SlidingWindowLogits(ModelForward(model), (img.to(device.dtype) / 255 - mean) / std, so);
        const torch::Tensor lab = logits.size(0) == 1 ? (logits[0] > 0).to(torch::kByte) : logits.argmax(0).to(torch::kByte);
        std::memcpy(preds.data.data() + i * plane, lab.contiguous().data_ptr<uint8_t>(), plane);
        std::memcpy(truth.data.data() + i * plane, val->mask(i), plane);
      }
      MetricOptions mo;
      for (int c = 1; c < std::max(2, mc.num_classes); ++c) mo.classes.push_back(c);
      mo.per_plane_iou = true;
      mo.distances = false;
      ASSIGN_OR_RETURN(std::vector<ClassMetrics> metrics, ComputeMetrics(preds, truth, mo), "validation");
      model->train();
      EvalEvent eval;
      eval.step = st.step;
      for (const ClassMetrics& c : metrics) {
        eval.iou_per_class[c.cls] = c.iou;
        eval.iou += c.iou / metrics.size();
      }
      val_iou = eval.iou;
      events->Write(eval);
    }
    if (launch.rank == 0) {
      const double ips = dt > 0 ? global_batch / dt : 0;
      events->Write(StepEvent{st.step, st.sampler.epoch, mean_loss, lr, ips, loader->last_wait_seconds(),
                              reducer.exposed_seconds()});
      MetricsRow row;
      row.step = st.step;
      row.epoch = st.sampler.epoch;
      row.loss = mean_loss;
      row.lr = lr;
      row.images_per_s = ips;
      row.data_wait_s = loader->last_wait_seconds();
      row.allreduce_exposed_s = reducer.exposed_seconds();
      row.val_iou = val_iou;
      row.time = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
      const std::string line = FormatMetricsRow(row);
      if (std::fputs(line.c_str(), metrics) < 0 || std::fflush(metrics) != 0) {
        RETINA_LOG(Warning) << layout.MetricsCsvPath(o.job_id).string() << ": write failed: " << std::strerror(errno);
      }
      if (val_iou) bar.Note(absl::StrFormat("step %d: validation IoU %.4f", st.step, *val_iou));
      bar.Update(st.step, absl::StrFormat("loss %.4g, lr %.3g, %.1f img/s", mean_loss, lr, ips));
    }
    const bool epoch_end = pretrain && st.step % steps_per_epoch == 0;
    const bool due = stop || st.step == total ||
                     (pretrain ? epoch_end && (st.step / steps_per_epoch) % config.pretrain.checkpoint_every_epochs == 0
                               : st.step % config.finetune.save_every_iters == 0);
    if (due && launch.rank == 0) {
      RETURN_IF_ERROR(SaveCheckpoint(ckpt_dir, st, *model, opt, config, o, launch.world_size, val_iou, mean, std,
                                     events.get()));
      bar.Note(absl::StrFormat("step %d: checkpoint written", st.step));
    }
    if (stop) {
      RETURN_IF_ERROR(cm->Barrier("checkpoint before stopping"));
      if (events) events->Write(PreemptedEvent{st.step});
      bar.Finish();
      return RunOutcome::kPreempted;
    }
  }
  bar.Finish();
  if (events) events->Write(DoneEvent{st.step});
  return RunOutcome::kCompleted;
}

}  // namespace retina::trainer
