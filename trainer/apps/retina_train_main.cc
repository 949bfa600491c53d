// retina-train: the trainer's command line. Parses flags into options and
// calls the library; no logic of its own.
//
//   retina-train run --config JOB.yaml [--store DIR] [--set KEY=VALUE]... (--help for all flags)
//   retina-train config schema | config check FILE... [--set KEY=VALUE]...
//   retina-train model info|init --model CONFIG ...
//   retina-train version | --version
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/fault_injection.h"
#include "common/cli.h"
#include "common/exec_image.h"
#include "common/job_config.h"
#include "common/study/study.h"
#include "common/status_macros.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/records.h"
#include "trainer/engine/run.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/model/weights/transfer.h"
#include "trainer/model/transunet.h"
#include "trainer/torch_compat.h"

namespace retina::trainer {
namespace {

struct ModelOptions {
  std::string model;
  std::string head = "segmentation";
  int classes = 1;
  std::optional<int> image_size;  // 64 for tiny, else 224
  int64_t seed = 0;
  std::string out;
};

void AddModelFlags(CLI::App* cmd, ModelOptions* o, bool init) {
  cmd->add_option("--model", o->model, "model config: tiny | r50-vit-b16")->required();
  cmd->add_option("--head", o->head, "output head")->check(CLI::IsMember({"segmentation", "reconstruction"}));
  cmd->add_option("--classes", o->classes, "segmentation classes (1 = binary)")->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--image-size", o->image_size, "input size in pixels (default 64 for tiny, else 224)")
      ->check(CLI::Range(16, 1 << 16));
  if (init) {
    cmd->add_option("--seed", o->seed, "torch::manual_seed before initialising")->required();
    cmd->add_option("--out", o->out, "the state dict to write (model.pt, loadable by torch.load)")->required();
  }
}

absl::StatusOr<TransUNetConfig> ModelConfigOf(const ModelOptions& o) {
  ASSIGN_OR_RETURN(ModelHead head, ParseModelHead(o.head));
  return NamedModelConfig(o.model, o.image_size.value_or(o.model == "tiny" ? 64 : 224), o.classes, head);
}

absl::Status ModelInfo(const ModelOptions& o) {
  ASSIGN_OR_RETURN(TransUNetConfig config, ModelConfigOf(o));
  VisionTransformer model(config);
  const ParameterCounts all = CountParameters(*model);
  // Trainable/frozen as after fine-tuning transfer (encoder frozen).
  FreezeEncoder(*model);
  const ParameterCounts after = CountParameters(*model);
  const StateDict dict = GetStateDict(*model);
  std::printf("model %s, image %d, head %s, classes %d\n", config.name.c_str(), config.image_size,
              config.head == ModelHead::kReconstruction ? "reconstruction" : "segmentation", config.num_classes);
  std::printf("parameters: total %lld, trainable after freeze %lld, frozen %lld\n",
              static_cast<long long>(all.total), static_cast<long long>(after.trainable),
              static_cast<long long>(after.frozen));
  std::printf("state dict entries: %zu\n", dict.size());
  for (const auto& [name, tensor] : dict) std::printf("%s\t%s\n", name.c_str(), ShapeString(tensor).c_str());
  return absl::OkStatus();
}

absl::Status ModelInit(const ModelOptions& o) {
  ASSIGN_OR_RETURN(TransUNetConfig config, ModelConfigOf(o));
  torch::manual_seed(static_cast<uint64_t>(o.seed));
  VisionTransformer model(config);
  RETURN_IF_ERROR(SaveStateDictFile(GetStateDict(*model), o.out));
  std::printf("wrote %s (%lld parameters)\n", o.out.c_str(), static_cast<long long>(CountParameters(*model).total));
  return absl::OkStatus();
}

struct RunFlags {
  std::string config;
  std::string store = ".";
  std::string job;  // default: the config file's stem
  std::vector<std::string> overrides, allowed_roots, output_roots;
  std::optional<int> rank, world_size, local_rank;
  std::string elastic;  // "W:M"
  RunOptions run;
};

// The job file with --set applied; INVALID_ARGUMENT naming the file.
absl::StatusOr<std::pair<std::string, JobConfig>> LoadJobFile(const std::string& path,
                                                              const std::vector<std::string>& overrides) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path), path);
  absl::StatusOr<std::string> applied = ApplyConfigOverrides(text, overrides);
  if (!applied.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", applied.status().message()));
  ASSIGN_OR_RETURN(JobConfig config, ParseJobConfig(*applied, path));
  return std::make_pair(*applied, config);
}

// This process's command line, for handing a serve job to retina-serve.
std::vector<std::string> g_argv;

// A kind: serve job is a model server, not a rank: `retina-serve run` with
// the same flags replaces this process (so every launcher, the worker and the
// Slurm script, starts serve jobs as it starts ranks). retina-serve is looked
// for beside this program, in the build tree (../services/), then on PATH.
int ExecServe() {
  const std::string why =
      ExecBesideSelf("retina-serve", std::vector<std::string>(g_argv.begin() + 1, g_argv.end()), {"services"});
  RETINA_LOG(Error) << "kind: serve: cannot run retina-serve (" << why
                    << "); install retina-serve beside retina-train or on PATH";
  return kExitFailed;
}

// Exit status: 0 done, 75 preempted (checkpoint written; rerun with --resume
// auto), 2 bad arguments or config, 1 any other failure.
absl::StatusOr<int> Run(RunFlags f) {
  if (absl::Status faults = CheckFaults(); !faults.ok()) {  // tests' fault injection, named and logged
    std::cerr << faults.message() << "\n";
    return kExitUsage;
  }
  absl::StatusOr<std::pair<std::string, JobConfig>> job = LoadJobFile(f.config, f.overrides);
  if (!job.ok()) {
    std::cerr << job.status().message() << "\n";
    return kExitUsage;
  }
  if (job->second.kind == JobKind::kServe) return ExecServe();
  RunOptions& o = f.run;
  o.config_text = job->first;
  o.store = f.store;
  o.job_id = f.job.empty() ? std::filesystem::path(f.config).stem().string() : f.job;
  o.allowed_roots.assign(f.allowed_roots.begin(), f.allowed_roots.end());
  o.output_roots.assign(f.output_roots.begin(), f.output_roots.end());
  o.launch = LaunchOverrides{f.rank, f.world_size, f.local_rank};
  if (!f.elastic.empty()) {
    const std::vector<std::string> parts = absl::StrSplit(f.elastic, ':');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &o.elastic_world_size) ||
        !absl::SimpleAtoi(parts[1], &o.elastic_min_world_size) || o.elastic_min_world_size < 1 ||
        o.elastic_world_size < o.elastic_min_world_size) {
      std::cerr << "--elastic: '" << f.elastic << "' is not W:M with 1 <= M <= W\n";
      return kExitUsage;
    }
  }
  absl::StatusOr<RunOutcome> outcome = RunJob(job->second, o);
  if (!outcome.ok()) {
    RETINA_LOG(Error) << outcome.status().message();
    return outcome.status().code() == absl::StatusCode::kInvalidArgument ? kExitUsage : kExitFailed;
  }
  return *outcome == RunOutcome::kPreempted ? kExitPreempted : kExitOk;
}

void AddRunFlags(CLI::App* run, RunFlags* f) {
  run->add_option("--config", f->config, "the job file (YAML; docs/config.md)")->required();
  AddStoreOption(run, &f->store);
  run->add_option("--job", f->job, "job id: names jobs/<id>/ in the store (default: the config file's stem)");
  run->add_option("--job-uid", f->run.job_uid, "when set, jobs/<id>/JOB_UID must match (a service job)");
  run->add_option("--attempt", f->run.attempt,
                  "the service's attempt number (else $RETINA_ATTEMPT): a newer attempt in jobs/<id>/ATTEMPT stops this "
                  "one before it writes (0: not fenced)")
      ->envname("RETINA_ATTEMPT")
      ->check(kNonNegativeInt);
  run->add_option("--events", f->run.events, "event stream: a file path or fd:N (default: the store only)");
  run->add_option("--resume", f->run.resume, "auto (LATEST when there is one) | never | a checkpoint directory");
  AddSetOption(run, &f->overrides);
  run->add_option("--rank", f->rank, "this rank (else RANK, OMPI_COMM_WORLD_RANK, SLURM_PROCID)")->check(kNonNegativeInt);
  run->add_option("--world-size", f->world_size, "ranks in the job (else WORLD_SIZE, ...)")->check(CLI::Range(1, 1 << 20));
  run->add_option("--elastic", f->elastic,
                  "W:M, an elastic job's full world size W (which splits the global batch: ranks fewer than W "
                  "accumulate W / ranks micro-batches) and its minimum M (BatchNorm groups of M ranks' batches)")
      ->envname("RETINA_ELASTIC");
  run->add_option("--local-rank", f->local_rank, "rank on this node (else LOCAL_RANK, ...)")->check(kNonNegativeInt);
  run->add_flag("--confine", f->run.confine,
                "as the worker runs ranks: paths only under the store and the allowed roots, relative from the store");
  run->add_option("--allowed-root", f->allowed_roots, "with --confine: a directory datasets/weights may come from (repeatable)")
      ->allow_extra_args(false);
  run->add_option("--output-root", f->output_roots,
                  "with --confine: a directory infer outputs may go under besides the job's own (repeatable)")
      ->allow_extra_args(false);
}

// Exit status: 0 every file valid, 2 any invalid or unreadable (as `run`).
int ConfigCheck(const std::vector<std::string>& files, const std::vector<std::string>& overrides) {
  int failures = 0;
  for (const std::string& file : files) {
    absl::StatusOr<std::pair<std::string, JobConfig>> job = LoadJobFile(file, overrides);
    if (!job.ok()) {
      std::cerr << job.status().message() << "\n";
      ++failures;
      continue;
    }
    std::string grid;
    if (job->second.kind == JobKind::kStudy) {  // every child must be a valid fine-tune too
      absl::StatusOr<StudyPlan> plan = PlanStudy(job->first, file);
      if (!plan.ok()) {
        std::cerr << plan.status().message() << "\n";
        ++failures;
        continue;
      }
      grid = absl::StrCat(", ", plan->children.size(), " fine-tune children");
    }
    std::cout << "# " << file << ": OK (kind " << JobKindName(job->second.kind) << grid << ")\n"
              << JobConfigToYaml(job->second);
  }
  return failures == 0 ? kExitOk : kExitUsage;
}

int Main(int argc, char** argv) {
  Cli cli("retina-train",
          "One rank of a RETINA job (pre-training, fine-tuning, evaluation), and the job file and model tools.\n"
          "exit: 0 done, 75 preempted (checkpoint written; run again with --resume auto), 2 bad arguments or\n"
          "config, 1 any other failure",
          "libtorch " + TorchVersionString(), /*version_subcommand=*/true);
  RunFlags run_flags;
  AddRunFlags(cli.Command("run", "Run one rank of the job in --config", [&] { return Run(run_flags); }), &run_flags);

  CLI::App* config = cli.Group("config", "The job file: its schema, validation");
  cli.Command("schema", "Print the config reference (docs/config.md)", [] {
    std::cout << JobConfigSchemaMarkdown();
    return absl::OkStatus();
  }, config);
  std::vector<std::string> files, overrides;
  CLI::App* check = cli.Command("check", "Validate job files; print each resolved config",
                                [&]() -> absl::StatusOr<int> { return ConfigCheck(files, overrides); }, config);
  check->add_option("files", files, "job files")->required();
  AddSetOption(check, &overrides);

  CLI::App* model = cli.Group("model", "Model configs: parameter counts, fresh weights");
  ModelOptions info_options, init_options;
  AddModelFlags(cli.Command("info", "Parameter counts and state-dict names and shapes",
                            [&] { return ModelInfo(info_options); }, model),
                &info_options, /*init=*/false);
  AddModelFlags(cli.Command("init", "Write freshly initialised weights", [&] { return ModelInit(init_options); }, model),
                &init_options, /*init=*/true);
  return cli.Run(argc, argv);
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) {
  retina::trainer::g_argv.assign(argv, argv + argc);
  return retina::trainer::Main(argc, argv);
}
