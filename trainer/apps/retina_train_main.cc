// retina-train: the trainer's command line. Parses flags into options and
// calls the library; no logic of its own.
//
//   retina-train config schema
//   retina-train config check FILE...
//   retina-train model info --model CONFIG [--head segmentation|reconstruction] [--classes N] [--image-size S]
//   retina-train model init --model CONFIG [--head ...] [--classes N] [--image-size S] --seed S --out FILE.pt
//   retina-train version
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "common/cli.h"
#include "common/job_config.h"
#include "common/status_macros.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/records.h"
#include "trainer/engine/run.h"
#include "trainer/model/state_dict.h"
#include "trainer/model/transfer.h"
#include "trainer/model/transunet.h"
#include "trainer/torch_compat.h"

namespace retina::trainer {
namespace {

constexpr char kUsage[] =
    "usage: retina-train run --config JOB.yaml [--store DIR] [--job ID] [--job-uid UID] [--events PATH|fd:N] [--set KEY=VALUE]...\n"
    "                        [--resume auto|never|CHECKPOINT_DIR] [--rank R --world-size W --local-rank L]\n"
    "                        [--confine [--allowed-root DIR]...]   (as the worker runs ranks: paths only under\n"
    "                        the store and the allowed roots, relative paths from the store)\n"
    "       retina-train config schema\n"
    "       retina-train config check FILE... [--set KEY=VALUE]...\n"
    "--set overrides a job-file key (model.name=tiny, finetune.iters=20); --store defaults to $RETINA_STORE, else .\n"
    "exit: 0 done, 75 preempted (checkpoint written), 2 bad arguments or config, 1 any other failure\n"
    "       retina-train model info --model CONFIG [--head segmentation|reconstruction]\n"
    "                               [--classes N] [--image-size S]\n"
    "       retina-train model init --model CONFIG [--head ...] [--classes N] [--image-size S]\n"
    "                               --seed S --out FILE.pt\n"
    "       retina-train version\n";

struct ModelOptions {
  TransUNetConfig config;
  int64_t seed = 0;
  std::string out;
};

absl::StatusOr<ModelOptions> ParseModelOptions(const std::vector<std::string>& args, bool init) {
  std::vector<std::string> known = {"--model", "--head", "--classes", "--image-size"};
  if (init) known.insert(known.end(), {"--seed", "--out"});
  ASSIGN_OR_RETURN(CliFlags flags, ParseCliFlags(args, known));
  RETURN_IF_ERROR(flags.Require(init ? std::vector<std::string>{"--model", "--seed", "--out"}
                                     : std::vector<std::string>{"--model"}));
  if (!flags.positional.empty()) return absl::InvalidArgumentError("unexpected argument " + flags.positional[0]);
  ASSIGN_OR_RETURN(ModelHead head, ParseModelHead(flags.Get("--head", "segmentation")));
  int classes = 1, image_size = flags.Get("--model") == "tiny" ? 64 : 224;
  RETURN_IF_ERROR(flags.GetInt("--classes", &classes));
  RETURN_IF_ERROR(flags.GetInt("--image-size", &image_size));
  ModelOptions o;
  ASSIGN_OR_RETURN(o.config, NamedModelConfig(flags.Get("--model"), image_size, classes, head));
  RETURN_IF_ERROR(flags.GetInt64("--seed", &o.seed));
  o.out = flags.Get("--out");
  return o;
}

absl::Status ModelInfo(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(ModelOptions o, ParseModelOptions(args, /*init=*/false));
  VisionTransformer model(o.config);
  const ParameterCounts all = CountParameters(*model);
  // Trainable/frozen as after fine-tuning transfer (encoder frozen).
  FreezeEncoder(*model);
  const ParameterCounts after = CountParameters(*model);
  const StateDict dict = GetStateDict(*model);
  std::printf("model %s, image %d, head %s, classes %d\n", o.config.name.c_str(), o.config.image_size,
              o.config.head == ModelHead::kReconstruction ? "reconstruction" : "segmentation",
              o.config.num_classes);
  std::printf("parameters: total %lld, trainable after freeze %lld, frozen %lld\n",
              static_cast<long long>(all.total), static_cast<long long>(after.trainable),
              static_cast<long long>(after.frozen));
  std::printf("state dict entries: %zu\n", dict.size());
  for (const auto& [name, tensor] : dict) std::printf("%s\t%s\n", name.c_str(), ShapeString(tensor).c_str());
  return absl::OkStatus();
}

absl::Status ModelInit(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(ModelOptions o, ParseModelOptions(args, /*init=*/true));
  torch::manual_seed(static_cast<uint64_t>(o.seed));
  VisionTransformer model(o.config);
  RETURN_IF_ERROR(SaveStateDictFile(GetStateDict(*model), o.out));
  std::printf("wrote %s (%lld parameters)\n", o.out.c_str(),
              static_cast<long long>(CountParameters(*model).total));
  return absl::OkStatus();
}

// Exit status: 0 done, 75 preempted (checkpoint written; rerun with --resume
// auto), 2 bad arguments or config, 1 any other failure.
int Run(std::vector<std::string> args) {
  absl::StatusOr<std::vector<std::string>> overrides = TakeRepeatedFlag(&args, "--set");
  if (!overrides.ok()) {
    std::cerr << "retina-train: " << overrides.status().message() << "\n" << kUsage;
    return 2;
  }
  absl::StatusOr<std::vector<std::string>> roots = TakeRepeatedFlag(&args, "--allowed-root");
  if (!roots.ok()) {
    std::cerr << "retina-train: " << roots.status().message() << "\n" << kUsage;
    return 2;
  }
  absl::StatusOr<CliFlags> flags = ParseCliFlags(
      args, {"--config", "--store", "--job", "--job-uid", "--events", "--resume", "--rank", "--world-size", "--local-rank"},
      {"--confine"});
  absl::Status status = flags.ok() ? flags->Require({"--config"}) : flags.status();
  RunOptions o;
  int rank = 0, world = 0, local = 0;
  if (status.ok()) {
    for (auto [key, out] : {std::pair<const char*, int*>{"--rank", &rank}, {"--world-size", &world}, {"--local-rank", &local}}) {
      if (status.ok()) status = flags->GetInt(key, out);
    }
  }
  if (!status.ok()) {
    std::cerr << "retina-train: " << status.message() << "\n" << kUsage;
    return 2;
  }
  const std::string config_path = flags->Get("--config");
  absl::StatusOr<std::string> text = ReadFile(config_path);
  if (text.ok()) text = ApplyConfigOverrides(*text, *overrides);
  if (!text.ok()) {
    std::cerr << "retina-train: " << config_path << ": " << text.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<JobConfig> config = ParseJobConfig(*text, config_path);
  if (!config.ok()) {
    std::cerr << config.status().message() << "\n";
    return 2;
  }
  o.config_text = *text;
  o.store = flags->Store();
  o.job_id = flags->Get("--job", std::filesystem::path(config_path).stem().string());
  o.events = flags->Get("--events");
  o.job_uid = flags->Get("--job-uid");
  o.confine = flags->Has("--confine");
  o.allowed_roots.assign(roots->begin(), roots->end());
  o.resume = flags->Get("--resume", "auto");
  if (flags->Has("--rank")) o.launch.rank = rank;
  if (flags->Has("--world-size")) o.launch.world_size = world;
  if (flags->Has("--local-rank")) o.launch.local_rank = local;
  absl::StatusOr<RunOutcome> outcome = RunJob(*config, o);
  if (!outcome.ok()) {
    RETINA_LOG(Error) << outcome.status().message();
    return outcome.status().code() == absl::StatusCode::kInvalidArgument ? kExitUsage : kExitFailed;
  }
  return *outcome == RunOutcome::kPreempted ? kExitPreempted : kExitOk;
}

// Exit status: 0 every file valid, 2 any invalid or unreadable (as `run`).
int ConfigCheck(std::vector<std::string> files) {
  absl::StatusOr<std::vector<std::string>> overrides = TakeRepeatedFlag(&files, "--set");
  if (!overrides.ok() || files.empty()) {
    std::cerr << "retina-train: " << (overrides.ok() ? "config check: name a file" : overrides.status().message()) << "\n";
    return 2;
  }
  int failures = 0;
  for (const std::string& file : files) {
    absl::StatusOr<std::string> text = ReadFile(file);
    if (text.ok()) text = ApplyConfigOverrides(*text, *overrides);
    absl::StatusOr<JobConfig> config = text.ok() ? ParseJobConfig(*text, file) : absl::StatusOr<JobConfig>(text.status());
    if (!config.ok()) {
      std::cerr << config.status().message() << "\n";
      ++failures;
      continue;
    }
    std::cout << "# " << file << ": OK (kind " << config->kind << ")\n" << JobConfigToYaml(*config);
  }
  return failures == 0 ? 0 : 2;
}

int Report(const absl::Status& status) { return ReportStatus("retina-train", status); }

int Main(const std::vector<std::string>& args) {
  auto is = [&](std::initializer_list<const char*> words) {
    if (args.size() < words.size()) return false;
    size_t i = 0;
    for (const char* w : words) if (args[i++] != w) return false;
    return true;
  };
  const auto rest = [&](size_t n) { return std::vector<std::string>(args.begin() + n, args.end()); };
  if (AsksForHelp(args)) {
    std::cout << kUsage;
    return 0;
  }
  if (is({"run"})) return Run(rest(1));
  if (args.size() == 2 && is({"config", "schema"})) {
    std::cout << JobConfigSchemaMarkdown();
    return 0;
  }
  if (args.size() >= 3 && is({"config", "check"})) return ConfigCheck(rest(2));
  try {
    if (is({"model", "info"})) return Report(ModelInfo(rest(2)));
    if (is({"model", "init"})) return Report(ModelInit(rest(2)));
  } catch (const c10::Error& e) {
    std::cerr << "retina-train: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  if (args.size() == 1 && args[0] == "version") {
    std::cout << "retina-train " << RETINA_VERSION << " (libtorch " << TorchVersionString() << ")\n";
    return 0;
  }
  std::cerr << kUsage;
  return 2;
}

}  // namespace
}  // namespace retina::trainer

int main(int argc, char** argv) {
  return retina::trainer::Main(std::vector<std::string>(argv + 1, argv + argc));
}
