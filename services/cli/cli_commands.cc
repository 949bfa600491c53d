#include "services/cli/cli_commands.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/cli.h"
#include "common/exec_image.h"
#include "common/file_util.h"
#include "common/job_config.h"
#include "common/progress.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "retina/v1/job_service.grpc.pb.h"
#include "common/study/study.h"
#include "services/cli/cli_client.h"
#include "services/cli/segment_command.h"
#include "services/cli/model_commands.h"
#include "services/cli/study_commands.h"
#include "services/cli/svg_plot.h"
#include "services/rpc_util.h"
#include "yaml-cpp/yaml.h"

namespace retina::cli {
namespace v1 = retina::v1;
namespace {

std::string Age(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  return FormatDuration((absl::ToUnixMillis(absl::Now()) - unix_ms) / 1000.0);
}

std::string Short(v1::JobKind k) {
  std::string s = v1::JobKind_Name(k);
  return absl::AsciiStrToLower(s);
}

std::string StepText(const v1::Job& j) {
  const v1::Progress& p = j.progress();
  if (p.total_steps() > 0) return absl::StrCat(p.step(), "/", p.total_steps());
  return p.step() > 0 ? absl::StrCat(p.step()) : "-";
}

bool Placed(const v1::Job& j) { return j.state() == v1::SCHEDULED || j.state() == v1::RUNNING; }
// The ranks of the current (or last) attempt (Job.attempt_world_size).
int RanksNow(const v1::Job& j) { return j.attempt_world_size() > 0 ? j.attempt_world_size() : j.spec().world_size(); }

struct SubmitFlags {
  std::string file, name, labels, request_id;
  std::vector<std::string> overrides;
  int world_size = 1, priority = 0, max_restarts = 2, slots_per_rank = 1, min_world_size = 0;
  bool gpu = false, watch = false;
};

// Submits `base_yaml` (with f.overrides applied); prints the new job's id on
// stdout and returns it. `what` names the job file in errors.
absl::StatusOr<std::string> SubmitYaml(const Client& c, const SubmitFlags& f, const std::string& base_yaml,
                                       const std::string& what, const std::string& default_name) {
  ASSIGN_OR_RETURN(std::string yaml, ApplyConfigOverrides(base_yaml, f.overrides), what);
  v1::SubmitJobRequest req;
  v1::JobSpec* spec = req.mutable_spec();
  spec->set_config_yaml(yaml);
  spec->set_world_size(f.world_size);
  spec->set_min_world_size(f.min_world_size);
  spec->set_priority(f.priority);
  spec->set_max_restarts(f.max_restarts);
  spec->set_slots_per_rank(f.slots_per_rank);
  spec->set_slot_type(f.gpu ? v1::SLOT_GPU : v1::SLOT_CPU);
  spec->set_name(f.name.empty() ? default_name : f.name);
  ASSIGN_OR_RETURN(auto labels, ParseKeyValues(f.labels, "--label"));
  for (const auto& [k, v] : labels) (*spec->mutable_labels())[k] = v;
  req.set_request_id(f.request_id);
  v1::Job job;
  RETURN_IF_ERROR(Call(c.stub->SubmitJob(c.Context().get(), req, &job)), what);
  std::cout << job.id() << std::endl;
  std::cerr << "submitted " << job.id() << " (" << Short(job.spec().kind()) << ", " << f.world_size << " ranks): "
            << v1::JobState_Name(job.state()) << "\n";
  return job.id();
}

absl::StatusOr<std::string> Submit(const Client& c, const SubmitFlags& f) {
  ASSIGN_OR_RETURN(std::string file_yaml, ReadFile(f.file));
  return SubmitYaml(c, f, file_yaml, f.file, std::filesystem::path(f.file).stem().string());
}

// `retina predict`: an infer job from flags (job-file keys by --set).
struct PredictFlags {
  SubmitFlags submit;
  std::string weights, output, mode = "stack", format = "ome-zarr", probabilities = "none";
  std::vector<std::string> inputs;
  std::vector<int> chunks;
  std::optional<double> overlap;
  bool no_watch = false;
};

// The infer job's YAML (strings as JSON, which YAML reads).
std::string PredictYaml(const PredictFlags& f) {
  nlohmann::json infer = {{"weights", f.weights}, {"inputs", f.inputs}, {"mode", f.mode}, {"format", f.format},
                          {"probabilities", f.probabilities}};
  if (!f.output.empty()) infer["output"] = f.output;
  if (f.overlap) infer["overlap"] = *f.overlap;
  if (!f.chunks.empty()) infer["chunks"] = f.chunks;
  return "kind: infer\ninfer: " + infer.dump() + "\n";
}

struct JobsFlags {
  std::string filter, study;
  int limit = 50;
  bool json = false;
};

absl::Status Jobs(const Client& c, const JobsFlags& f) {
  v1::ListJobsRequest req;
  req.set_filter(f.study.empty() ? f.filter : absl::StrCat(f.filter, " label.study=", f.study));
  req.set_page_size(std::min(f.limit, 1000));
  v1::ListJobsResponse resp;
  RETURN_IF_ERROR(Call(c.stub->ListJobs(c.Context().get(), req, &resp)));
  if (f.json) return PrintJson(resp);
  std::printf("%-12s %-10s %-9s %4s %5s %-11s %-9s %-7s %-10s %-7s %s\n", "ID", "STATE", "KIND", "TRY", "RANKS", "STEP",
              "LOSS", "IOU", "USER", "AGE", "NAME");
  for (const v1::Job& j : resp.jobs()) {
    std::printf("%-12s %-10s %-9s %4d %5d %-11s %-9s %-7s %-10s %-7s %s\n", j.id().c_str(),
                v1::JobState_Name(j.state()).c_str(), Short(j.spec().kind()).c_str(), j.attempt(),
                Placed(j) ? RanksNow(j) : j.spec().world_size(), StepText(j).c_str(),
                j.progress().step() > 0 ? absl::StrFormat("%.4f", j.progress().loss()).c_str() : "-",
                j.progress().has_iou() ? absl::StrFormat("%.3f", j.progress().last_iou()).c_str() : "-",
                j.user().c_str(), Age(j.create_unix_ms()).c_str(), j.spec().name().c_str());
  }
  if (!resp.next_page_token().empty()) std::printf("(more: raise --limit)\n");
  return absl::OkStatus();
}

void PrintJob(const v1::Job& j) {
  std::printf("id:          %s\nname:        %s\nkind:        %s\nstate:       %s%s\nattempt:     %d (max restarts %d)\n",
              j.id().c_str(), j.spec().name().c_str(), Short(j.spec().kind()).c_str(),
              v1::JobState_Name(j.state()).c_str(), j.cancel_requested() ? " (cancel requested)" : "", j.attempt(),
              j.spec().max_restarts());
  std::printf("user:        %s\nranks:       %d x %d slot(s), priority %d\n", j.user().c_str(), j.spec().world_size(),
              j.spec().slots_per_rank(), j.spec().priority());
  if (j.spec().min_world_size() > 0 && j.spec().min_world_size() < j.spec().world_size()) {
    const int now = RanksNow(j);
    std::printf("elastic:     min %d; %s %d rank(s), accumulation %d; resized %d time(s), stopped to grow %d time(s)\n",
                j.spec().min_world_size(), Placed(j) ? "running on" : "last on", now, j.spec().world_size() / now,
                j.resizes(), j.grow_stops());
  }
  std::printf("submitted:   %s ago\n", Age(j.create_unix_ms()).c_str());
  if (!j.master_addr().empty()) std::printf("rendezvous:  %s:%d\n", j.master_addr().c_str(), j.master_port());
  std::vector<std::string> placement;
  for (const auto& p : j.placement()) placement.push_back(absl::StrCat(p.rank(), "@", p.worker_id()));
  if (!placement.empty()) std::printf("placement:   %s\n", absl::StrJoin(placement, " ").c_str());
  const v1::Progress& p = j.progress();
  if (j.spec().kind() == v1::SERVE) {
    if (!p.endpoint().empty()) {
      std::printf("serving:     %s (models %s): retina segment --server %s ...\n", p.endpoint().c_str(),
                  absl::StrJoin(p.models(), ", ").c_str(), p.endpoint().c_str());
    } else {
      std::printf("serving:     not yet (loading its models, or not placed)\n");
    }
  } else {
    std::printf("progress:    step %s, loss %.4f, %.1f images/s\n", StepText(j).c_str(), p.loss(), p.images_per_s());
  }
  if (p.has_iou()) std::printf("last IoU:    %.4f\n", p.last_iou());
  if (p.last_checkpoint_step() > 0) {
    std::printf("checkpoint:  step %lld (%s ago)\n", static_cast<long long>(p.last_checkpoint_step()),
                Age(p.last_checkpoint_unix_ms()).c_str());
  }
  if (j.preemptions() > 0) {
    std::printf("preempted:   %d time(s) by higher-priority jobs (not counted against max restarts)\n", j.preemptions());
  }
  if (!j.message().empty()) std::printf("message:     %s\n", j.message().c_str());
}

// A subcommand that names one job, and --json.
struct JobFlags {
  std::string id;
  bool json = false;
};

absl::Status Status(const Client& c, const JobFlags& f) {
  v1::GetJobRequest req;
  req.set_id(f.id);
  v1::Job job;
  RETURN_IF_ERROR(Call(c.stub->GetJob(c.Context().get(), req, &job)));
  if (f.json) {
    RETURN_IF_ERROR(PrintJson(job));
  } else {
    PrintJob(job);
  }
  return absl::OkStatus();
}

// Streams events; on a dropped stream (coordinator restart) reconnects.
absl::StatusOr<v1::JobState> Watch(const Client& c, const std::string& id) {
  ProgressBar* bar = nullptr;
  std::unique_ptr<ProgressBar> owned;
  v1::JobState last_state = v1::JOB_STATE_UNSPECIFIED;
  int last_attempt = 0;
  for (int reconnects = 0; reconnects < 30; ++reconnects) {
    v1::WatchJobRequest req;
    req.set_id(id);
    auto ctx = c.Context(absl::InfiniteDuration());
    auto reader = c.stub->WatchJob(ctx.get(), req);
    v1::JobEvent ev;
    while (reader->Read(&ev)) {
      const v1::Job& j = ev.job();
      // A study's children that have ended, shown before its end is (the final commit carries the last count).
      if (j.spec().kind() == v1::STUDY && bar && j.progress().step() > 0) bar->Update(j.progress().step(), "ended");
      if (j.state() != last_state || j.attempt() != last_attempt) {
        if (bar) bar->Finish();
        std::fprintf(stderr, "%s  %s attempt %d: %s%s%s\n", absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()).c_str(),
                     id.c_str(), j.attempt(), v1::JobState_Name(j.state()).c_str(), j.message().empty() ? "" : " - ",
                     j.message().c_str());
        last_state = j.state();
        last_attempt = j.attempt();
      }
      const nlohmann::json line = ev.type() == v1::JobEvent::PROGRESS
                                      ? nlohmann::json::parse(ev.event_json(), nullptr, false)
                                      : nlohmann::json();
      if (line.is_object() && line.value("event", "") == "predict") {
        // An infer job: voxels over all ranks, the rate and ETA of this watch.
        const int64_t total = line.value("voxels_total", int64_t{0}), done = line.value("voxels_done", int64_t{0});
        if (!owned && total > 0) {
          owned = std::make_unique<ProgressBar>(id, total, "voxels", done);
          bar = owned.get();
        }
        if (bar) {
          bar->Update(done, absl::StrFormat("chunk rows %d/%d (%d resumed)", line.value("chunks_done", 0),
                                            line.value("chunks_total", 0), line.value("chunks_skipped", 0)));
        }
      } else if (j.spec().kind() == v1::STUDY) {
        // A study: its children that have ended (the tick's aggregate is behind them).
        if (!owned && j.progress().total_steps() > 0) {
          owned = std::make_unique<ProgressBar>(id, j.progress().total_steps(), "children", j.progress().step());
          bar = owned.get();
        }
      } else if (ev.type() == v1::JobEvent::PROGRESS && j.progress().total_steps() > 0 && j.progress().step() > 0) {
        if (!owned) {
          // Rate and ETA from the steps seen by this watch, not since the job began.
          owned = std::make_unique<ProgressBar>(id, j.progress().total_steps(), "steps", j.progress().step());
          bar = owned.get();
        }
        const v1::Progress& p = j.progress();
        std::string extra = absl::StrFormat("loss %.4f, %.1f img/s", p.loss(), p.images_per_s());
        if (p.has_iou()) absl::StrAppendFormat(&extra, ", IoU %.3f", p.last_iou());
        bar->Update(p.step(), extra);  // a bar on a terminal, else a plain line every 30 s
      } else if (ev.type() == v1::JobEvent::EVAL) {
        if (bar && bar->enabled()) bar->Finish();
        const nlohmann::json e = nlohmann::json::parse(ev.event_json(), nullptr, false);
        if (e.is_object() && e.contains("iou") && e["iou"].is_number()) {
          std::fprintf(stderr, "  validation at step %lld: IoU %.4f\n", static_cast<long long>(e.value("step", 0LL)),
                       e["iou"].get<double>());
        } else {
          std::fprintf(stderr, "  eval: %s\n", ev.event_json().c_str());
        }
      } else if (ev.type() == v1::JobEvent::PREEMPTED) {
        // The ranks stopped on request (a preemption, a growth, a cancel): the reason follows in the state line.
        if (bar && bar->enabled()) bar->Finish();
        const nlohmann::json e = nlohmann::json::parse(ev.event_json(), nullptr, false);
        std::fprintf(stderr, "  stopped at step %lld with a checkpoint\n",
                     static_cast<long long>(e.is_object() ? e.value("step", 0LL) : 0LL));
      } else if (ev.type() == v1::JobEvent::RESIZED) {
        if (bar && bar->enabled()) bar->Finish();
        const nlohmann::json e = nlohmann::json::parse(ev.event_json(), nullptr, false);
        if (e.is_object()) {
          std::fprintf(stderr, "  resized at step %lld: %d -> %d ranks, accumulation %d -> %d (global batch kept)\n",
                       static_cast<long long>(e.value("step", 0LL)), e.value("from_world", 0), e.value("to_world", 0),
                       e.value("from_accumulation", 0), e.value("to_accumulation", 0));
        }
      } else if (ev.type() == v1::JobEvent::CHECKPOINT && !(bar && bar->enabled())) {
        std::fprintf(stderr, "  checkpoint at step %lld\n", static_cast<long long>(j.progress().last_checkpoint_step()));
      }
    }
    const grpc::Status s = reader->Finish();
    if (last_state == v1::SUCCEEDED || last_state == v1::FAILED || last_state == v1::CANCELLED) {
      if (bar) bar->Finish();
      return last_state;
    }
    if (!s.ok() && s.error_code() != grpc::StatusCode::UNAVAILABLE && s.error_code() != grpc::StatusCode::CANCELLED) {
      return Call(s);
    }
    absl::SleepFor(absl::Seconds(1));  // the coordinator went away: try again
  }
  return absl::UnavailableError("lost the coordinator while watching; run `retina watch " + id + "` again");
}

absl::Status Cancel(const Client& c, const JobFlags& f) {
  v1::CancelJobRequest req;
  req.set_id(f.id);
  v1::Job job;
  RETURN_IF_ERROR(Call(c.stub->CancelJob(c.Context().get(), req, &job)));
  std::cout << job.id() << ": " << v1::JobState_Name(job.state()) << (job.cancel_requested() ? " (cancel requested)" : "")
            << "\n";
  return absl::OkStatus();
}

struct LogsFlags {
  std::string id;
  int rank = 0, attempt = 0;
  bool follow = false;
};

absl::Status Logs(const Client& c, const LogsFlags& f) {
  v1::ReadLogsRequest req;
  req.set_id(f.id);
  req.set_rank(f.rank);
  req.set_attempt(f.attempt);
  req.set_follow(f.follow);
  auto ctx = c.Context(absl::InfiniteDuration());
  auto reader = c.stub->ReadLogs(ctx.get(), req);
  v1::LogChunk chunk;
  while (reader->Read(&chunk)) {
    std::fwrite(chunk.data().data(), 1, chunk.data().size(), stdout);
    std::fflush(stdout);
  }
  return Call(reader->Finish());
}

// eval.json of an evaluation job as a per-item, per-class table.
void PrintEvaluation(const std::string& text) {
  const absl::StatusOr<EvalReport> e = DecodeEvalReport(text, "eval.json");
  if (!e.ok()) {
    std::printf("evaluation (%s): %s\n", std::string(e.status().message()).c_str(), text.c_str());
    return;
  }
  auto num = [](std::optional<double> v) { return v ? absl::StrFormat("%.4f", *v) : std::string("-"); };
  std::printf("evaluation of %s (%s, overlap %s)\n", e->checkpoint.c_str(), e->mode.c_str(), num(e->overlap).c_str());
  std::printf("  %-28s %5s %8s %8s %9s %8s %8s\n", "ITEM", "CLASS", "IOU", "F1", "PRECISION", "RECALL", "MFD");
  for (const EvalItem& item : e->items) {
    const std::string name = std::filesystem::path(item.source).filename().string();
    for (const ClassScore& c : item.classes) {
      std::printf("  %-28s %5d %8s %8s %9s %8s %8s\n", name.c_str(), c.cls, num(c.iou).c_str(), num(c.f1).c_str(),
                  num(c.precision).c_str(), num(c.recall).c_str(), num(c.mfd).c_str());
    }
  }
  std::printf("  mean IoU: %s\n", num(e->mean_iou).c_str());
}

struct MetricsFlags {
  std::string id, plot;
  bool csv = false, json = false;  // CLI11 excludes one with the other
};

absl::Status Metrics(const Client& c, const MetricsFlags& f) {
  v1::GetJobMetricsRequest req;
  req.set_id(f.id);
  v1::JobMetrics m;
  RETURN_IF_ERROR(Call(c.stub->GetJobMetrics(c.Context().get(), req, &m)));
  if (f.json) {
    RETURN_IF_ERROR(PrintJson(m));
  } else if (f.csv) {
    std::printf("step,epoch,loss,lr,images_per_s,data_wait_s,allreduce_s,val_iou\n");
    for (const auto& p : m.points()) {
      std::printf("%lld,%lld,%.6g,%.6g,%.4g,%.4g,%.4g,%s\n", static_cast<long long>(p.step()),
                  static_cast<long long>(p.epoch()), p.loss(), p.lr(), p.images_per_s(), p.data_wait_s(),
                  p.allreduce_s(), p.has_val_iou() ? absl::StrFormat("%.6g", p.val_iou()).c_str() : "");
    }
  } else {
    std::printf("%s: %d steps logged\n", m.id().c_str(), m.points_size());
    if (m.points_size() > 0) {
      const auto& a = m.points(0);
      const auto& b = m.points(m.points_size() - 1);
      std::printf("loss: %.4f (step %lld) -> %.4f (step %lld)\n", a.loss(), static_cast<long long>(a.step()), b.loss(),
                  static_cast<long long>(b.step()));
    }
    for (const auto& p : m.points()) {
      if (p.has_val_iou()) std::printf("validation IoU at step %lld: %.4f\n", static_cast<long long>(p.step()), p.val_iou());
    }
    if (!m.eval_json().empty()) PrintEvaluation(m.eval_json());
  }
  if (!f.plot.empty()) {
    Series loss{"training loss", {}, "#1f77b4"}, iou{"validation IoU", {}, "#d62728"}, ips{"images/s", {}, "#2ca02c"};
    for (const auto& p : m.points()) {
      loss.xy.emplace_back(p.step(), p.loss());
      ips.xy.emplace_back(p.step(), p.images_per_s());
      if (p.has_val_iou()) iou.xy.emplace_back(p.step(), p.val_iou());
    }
    if (m.points_size() == 0) return absl::FailedPreconditionError(absl::StrCat(m.id(), ": no steps logged to plot"));
    RETURN_IF_ERROR(WriteFileAtomic(f.plot, PlotSvg(m.id(), {loss, iou, ips}, "step")));
    std::fprintf(stderr, "plot written to %s\n", f.plot.c_str());
  }
  return absl::OkStatus();
}

absl::Status Workers(const Client& c, bool json) {
  v1::ListWorkersResponse resp;
  RETURN_IF_ERROR(Call(c.stub->ListWorkers(c.Context().get(), v1::ListWorkersRequest(), &resp)));
  if (json) return PrintJson(resp);
  std::printf("%-20s %-16s %-6s %-5s %-5s %-9s %-8s %s\n", "ID", "HOST", "STATE", "TYPE", "FREE", "HEARTBEAT",
              "VERSION", "JOBS");
  for (const auto& w : resp.workers()) {
    std::printf("%-20s %-16s %-6s %-5s %2d/%-2d %-9s %-8s %s\n", w.id().c_str(), w.host().c_str(),
                v1::WorkerInfo::State_Name(w.state()).c_str(), w.slot_type() == v1::SLOT_GPU ? "GPU" : "CPU",
                w.free_slots(), w.slots(), Age(w.last_heartbeat_unix_ms()).c_str(), w.version().c_str(),
                absl::StrJoin(w.jobs(), ",").c_str());
  }
  return absl::OkStatus();
}

absl::StatusOr<int> WatchExit(const Client& c, const std::string& id) {
  ASSIGN_OR_RETURN(v1::JobState state, Watch(c, id));
  return state == v1::SUCCEEDED ? 0 : 1;
}

void AddSubmitFlags(CLI::App* cmd, SubmitFlags* f) {
  cmd->add_option("file", f->file, "the job file (YAML)")->required();
  cmd->add_option("--world-size", f->world_size, "data-parallel ranks")->check(kPositiveInt);
  cmd->add_option("--min-world-size", f->min_world_size,
                  "elastic (pretrain, finetune): run on as few as this many ranks (a divisor of --world-size) rather "
                  "than wait, grow back when slots free up; the global batch is kept (docs/service.md)")
      ->check(kPositiveInt);
  cmd->add_option("--priority", f->priority, "higher runs first");
  cmd->add_option("--max-restarts", f->max_restarts, "attempts after the first on failure")->check(kNonNegativeInt);
  cmd->add_option("--slots-per-rank", f->slots_per_rank, "slots (GPUs or CPU slots) each rank takes")->check(kPositiveInt);
  cmd->add_flag("--gpu", f->gpu, "GPU slots (default CPU)");
  cmd->add_option("--name", f->name, "display name (default: the file's stem)");
  cmd->add_option("--label", f->labels, "k=v,k=v labels (filter with jobs --filter label.k=v)");
  cmd->add_option("--request-id", f->request_id, "idempotency key: the same id returns the same job");
  AddSetOption(cmd, &f->overrides);
  cmd->add_flag("--watch", f->watch, "then watch it (exit 0 only when it SUCCEEDED)");
}

// `retina predict`: an infer job from flags.
void AddPredictCommand(Cli& cli, const ConnectFlags* flags, PredictFlags* predict) {
  CLI::App* predict_cmd = cli.Command(
      "predict", "Segment volumes or images as an infer job over the service's ranks, and watch it",
      Connected(flags, [predict](const Client& c) -> absl::StatusOr<int> {
        ASSIGN_OR_RETURN(std::string id, SubmitYaml(c, predict->submit, PredictYaml(*predict), "retina predict", "predict"));
        if (predict->no_watch) return 0;
        return WatchExit(c, id);
      }));
  predict_cmd->add_option("--weights", predict->weights,
                          "segmentation weights: model.pt, a checkpoint dir, jobs/<id> (relative: from the store)")
      ->required();
  predict_cmd->add_option("-i,--input", predict->inputs, "a volume, image, folder or glob (repeatable)")->required();
  predict_cmd->add_option("-o,--output", predict->output, "output directory in the store (default jobs/<id>/predictions)");
  predict_cmd->add_option("--mode", predict->mode, "2d | stack | orthoplane")->check(CLI::IsMember(EnumNames<PredictionMode>()));
  predict_cmd->add_option("--overlap", predict->overlap, "sliding-window overlap (default 0.7 volumes, 0.5 images)")
      ->check(CLI::Range(0.0, 0.95));
  predict_cmd->add_option("--format", predict->format, "ome-zarr | tiff | hdf5")
      ->check(CLI::IsMember(EnumNames<InferFormat>()));
  predict_cmd->add_option("--probabilities", predict->probabilities, "none | uint8 | float16 | float32")
      ->check(CLI::IsMember(EnumNames<ProbabilityOutput>()));
  predict_cmd->add_option("--chunks", predict->chunks, "OME-Zarr chunk shape z,y,x (z: the unit of work)")
      ->delimiter(',')
      ->expected(3);
  predict_cmd->add_option("--world-size", predict->submit.world_size, "ranks")->check(kPositiveInt);
  predict_cmd->add_flag("--gpu", predict->submit.gpu, "GPU slots (one per rank)");
  predict_cmd->add_option("--priority", predict->submit.priority, "higher runs first");
  predict_cmd->add_option("--max-restarts", predict->submit.max_restarts, "attempts after the first (each resumes)")
      ->check(kNonNegativeInt);
  predict_cmd->add_option("--name", predict->submit.name, "job name");
  AddSetOption(predict_cmd, &predict->submit.overrides);
  predict_cmd->add_flag("--no-watch", predict->no_watch, "print the job id and return");
}

// `retina logs`, `metrics`, `workers`.
struct InspectFlags {
  LogsFlags logs;
  MetricsFlags metrics;
  bool workers_json = false;
};
void AddInspectCommands(Cli& cli, const ConnectFlags* flags, InspectFlags* f) {
  CLI::App* logs_cmd = cli.Command("logs", "A rank's log", Connected(flags, [f](const Client& c) -> absl::StatusOr<int> {
    RETURN_IF_ERROR(Logs(c, f->logs));
    return 0;
  }));
  logs_cmd->add_option("id", f->logs.id, "job id")->required();
  logs_cmd->add_option("--rank", f->logs.rank, "rank")->check(kNonNegativeInt);
  logs_cmd->add_option("--attempt", f->logs.attempt, "attempt (0 = the current one)")->check(kNonNegativeInt);
  logs_cmd->add_flag("--follow", f->logs.follow, "keep reading until the job ends");

  CLI::App* metrics_cmd = cli.Command("metrics", "Loss, learning rate, throughput and IoU by step; an evaluation's scores",
                                      Connected(flags, [f](const Client& c) -> absl::StatusOr<int> {
                                        RETURN_IF_ERROR(Metrics(c, f->metrics));
                                        return 0;
                                      }));
  metrics_cmd->add_option("id", f->metrics.id, "job id")->required();
  CLI::Option* csv = metrics_cmd->add_flag("--csv", f->metrics.csv, "as CSV");
  metrics_cmd->add_flag("--json", f->metrics.json, "as JSON")->excludes(csv);
  metrics_cmd->add_option("--plot", f->metrics.plot, "also plot loss, IoU and images/s to this SVG");

  cli.Command("workers", "The workers, their slots and jobs", Connected(flags, [f](const Client& c) -> absl::StatusOr<int> {
        RETURN_IF_ERROR(Workers(c, f->workers_json));
        return 0;
      }))
      ->add_flag("--json", f->workers_json, "as JSON");
}

}  // namespace

int RunCli(const std::vector<std::string>& args) {
  // `retina suggest ...` is retina-suggest: it reads an infer job's outputs in
  // the store, with the trainer's readers, which this client does not link.
  if (!args.empty() && args[0] == "suggest") {
    const std::string why = ExecBesideSelf("retina-suggest", {args.begin() + 1, args.end()}, {"trainer"});
    std::fprintf(stderr, "retina suggest: cannot run retina-suggest (%s); install it beside retina or on PATH\n",
                 why.c_str());
    return 1;
  }
  Cli cli("retina",
          "Drives the RETINA job service. --json prints the API's message as JSON (protobuf's JSON mapping).\n"
          "Connection: flags, else RETINA_ADDRESS / RETINA_TOKEN or RETINA_TOKEN_FILE / RETINA_CA, else\n"
          "$RETINA_CONFIG or ~/.config/retina/cli.yaml (address, token_file, ca), else 127.0.0.1:50051.");
  ConnectFlags conn;
  CLI::App& app = cli.app();
  app.add_option("--address", conn.address, "the coordinator, HOST:PORT");
  app.add_option("--token-file", conn.token_file, "bearer token file");
  app.add_option("--ca", conn.ca, "TLS: the coordinator's CA (PEM)");
  app.fallthrough();  // connection flags also after the command
  // Each command connects first, then runs with the client.
  auto connected = [&conn](ClientAction command) { return Connected(&conn, std::move(command)); };

  SubmitFlags submit;
  AddSubmitFlags(cli.Command("submit", "Submit a job", connected([&](const Client& c) -> absl::StatusOr<int> {
                               ASSIGN_OR_RETURN(std::string id, Submit(c, submit));
                               if (!submit.watch) return 0;
                               return WatchExit(c, id);
                             })),
                 &submit);
  PredictFlags predict;
  AddPredictCommand(cli, &conn, &predict);
  AddSegmentCommand(cli, &conn);
  // `retina suggest` is retina-suggest (RunCli execs it before parsing); here
  // for `retina --help` only.
  cli.Command("suggest",
              "Where to label next: blocks ranked by an infer job's uncertainty map, with a diversity rule (runs "
              "retina-suggest; `retina suggest --help` lists its flags)",
              [] { return absl::OkStatus(); });

  CLI::App* study_cmd = cli.Group("study", "Studies: fine-tunes over inits x seeds, their statistics and report");
  SubmitFlags study_submit;
  AddSubmitFlags(cli.Command("submit", "Submit a study job file (kind: study)",
                             connected([&](const Client& c) -> absl::StatusOr<int> {
                               ASSIGN_OR_RETURN(std::string file_yaml, ReadFile(study_submit.file));
                               ASSIGN_OR_RETURN(std::string yaml, ApplyConfigOverrides(file_yaml, study_submit.overrides),
                                                study_submit.file);
                               ASSIGN_OR_RETURN(JobConfig config, ParseJobConfig(yaml, study_submit.file));
                               if (config.kind != JobKind::kStudy) {
                                 return absl::InvalidArgumentError(absl::StrCat(
                                     study_submit.file, ": kind: ", JobKindName(config.kind),
                                     " is not a study (use `retina submit`)"));
                               }
                               ASSIGN_OR_RETURN(std::string id, Submit(c, study_submit));
                               if (!study_submit.watch) return 0;
                               return WatchExit(c, id);
                             }),
                             study_cmd),
                 &study_submit);
  StudyCommands study_commands;
  AddStudyCommands(cli, study_cmd, &conn, &study_commands);

  JobsFlags jobs;
  CLI::App* jobs_cmd = cli.Command("jobs", "List jobs, newest first", connected([&](const Client& c) -> absl::StatusOr<int> {
    RETURN_IF_ERROR(Jobs(c, jobs));
    return 0;
  }));
  jobs_cmd->add_option("--filter", jobs.filter, "e.g. 'state=RUNNING kind=PRETRAIN label.k=v user=u'");
  jobs_cmd->add_option("--limit", jobs.limit, "at most this many")->check(kPositiveInt);
  jobs_cmd->add_flag("--json", jobs.json, "as JSON");
  jobs_cmd->add_option("--study", jobs.study, "only the children of this study (label.study=ID)");

  JobFlags status, cancel, watch;
  CLI::App* status_cmd = cli.Command("status", "One job in detail", connected([&](const Client& c) -> absl::StatusOr<int> {
    RETURN_IF_ERROR(Status(c, status));
    return 0;
  }));
  status_cmd->add_option("id", status.id, "job id")->required();
  status_cmd->add_flag("--json", status.json, "as JSON");
  cli.Command("watch", "Live progress until the job ends (exit 0 when it SUCCEEDED)",
              connected([&](const Client& c) { return WatchExit(c, watch.id); }))
      ->add_option("id", watch.id, "job id")
      ->required();
  cli.Command("cancel", "Cancel a job (its ranks checkpoint and stop)", connected([&](const Client& c) -> absl::StatusOr<int> {
        RETURN_IF_ERROR(Cancel(c, cancel));
        return 0;
      }))
      ->add_option("id", cancel.id, "job id")
      ->required();

  InspectFlags inspect;
  AddInspectCommands(cli, &conn, &inspect);
  ModelCommands models;
  AddModelCommands(cli, &conn, &models);
  return cli.Run(args);
}

}  // namespace retina::cli
