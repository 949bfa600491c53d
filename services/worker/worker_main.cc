// retina-worker: the node agent. Registers this node's slots (CUDA devices
// when present, else --cpu-slots) with the coordinator, runs the trainer
// ranks it is assigned, serves its own /metrics. SIGTERM/SIGINT: stop the
// ranks (they checkpoint), report, exit.
//
//   retina-worker --coordinator HOST:PORT [--ca F] [--token-file F] [--id ID] [--host ADDR]
//       [--cpu-slots N] [--gpus auto|none|0,1,..] [--labels k=v,..] [--store DIR]
//       [--trainer PATH] [--grace-s 30] [--metrics-listen HOST:PORT] [--ready-file PATH]
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/cli.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "services/rpc_util.h"
#include "services/server_util.h"
#include "services/worker/worker.h"

namespace retina::worker {
namespace {

constexpr char kUsage[] =
    "usage: retina-worker --coordinator HOST:PORT [--ca F] [--token-file F] [--id ID] [--host ADDR]\n"
    "          [--cpu-slots N] [--gpus auto|none|0,1,..] [--labels k=v,..] [--store DIR] [--trainer PATH]\n"
    "          [--grace-s S] [--metrics-listen HOST:PORT] [--ready-file PATH]\n";

// GPUs the driver exposes (/proc/driver/nvidia/gpus), limited by CUDA_VISIBLE_DEVICES.
std::vector<int> DetectGpus() {
  std::vector<int> ids;
  std::error_code ec;
  int n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/driver/nvidia/gpus", ec);
       !ec && it != std::filesystem::directory_iterator(); ++it) {
    ++n;
  }
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (visible != nullptr) {
    for (absl::string_view s : absl::StrSplit(visible, ',', absl::SkipEmpty())) {
      int id;
      if (absl::SimpleAtoi(s, &id) && id >= 0 && id < n) ids.push_back(id);
    }
    return ids;
  }
  for (int i = 0; i < n; ++i) ids.push_back(i);
  return ids;
}

// retina-train next to this program (an install tree's bin/), else in the
// build tree (build/services/retina-worker -> build/trainer/retina-train),
// else the first on PATH; empty when none is found.
std::filesystem::path DefaultTrainer() {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::vector<std::filesystem::path> candidates = {self.parent_path() / "retina-train",
                                                   self.parent_path().parent_path() / "trainer" / "retina-train"};
  if (const char* path = std::getenv("PATH")) {
    for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
      candidates.push_back(std::filesystem::path(std::string(dir)) / "retina-train");
    }
  }
  for (const std::filesystem::path& p : candidates) {
    if (std::filesystem::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0) return p;
  }
  return {};
}

absl::Status Serve(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(CliFlags f, ParseCliFlags(args, {"--coordinator", "--ca", "--token-file", "--id", "--host",
                                                    "--cpu-slots", "--gpus", "--labels", "--store", "--trainer",
                                                    "--grace-s", "--metrics-listen", "--ready-file"}));
  RETURN_IF_ERROR(f.Require({"--coordinator"}));
  WorkerOptions o;
  o.coordinator = f.Get("--coordinator");
  o.ca = f.Get("--ca");
  if (f.Has("--token-file")) {
    ASSIGN_OR_RETURN(o.token, services::ReadTokenFile(f.Get("--token-file")));
  }
  char hostname[256] = {0};
  ::gethostname(hostname, sizeof hostname - 1);
  o.host = f.Get("--host", hostname);
  o.worker_id = f.Get("--id", o.host);
  o.cpu_slots = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  RETURN_IF_ERROR(f.GetInt("--cpu-slots", &o.cpu_slots));
  const std::string gpus = f.Get("--gpus", "auto");
  if (gpus == "auto") {
    o.gpu_ids = DetectGpus();
  } else if (gpus != "none") {
    for (absl::string_view s : absl::StrSplit(gpus, ',', absl::SkipEmpty())) {
      int id;
      if (!absl::SimpleAtoi(s, &id) || id < 0) return absl::InvalidArgumentError("--gpus: auto, none or ids like 0,1");
      o.gpu_ids.push_back(id);
    }
  }
  for (absl::string_view kv : absl::StrSplit(f.Get("--labels"), ',', absl::SkipEmpty())) {
    std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (p.size() != 2 || p[0].empty()) return absl::InvalidArgumentError("--labels: k=v,k=v");
    o.labels[p[0]] = p[1];
  }
  o.store = f.Store();
  o.trainer = f.Has("--trainer") ? std::filesystem::path(f.Get("--trainer")) : DefaultTrainer();
  if (o.trainer.empty()) {
    return absl::FailedPreconditionError(
        "retina-train not found next to retina-worker, in the build tree (../trainer/) or on PATH; pass --trainer PATH");
  }
  double grace_s = 30;
  RETURN_IF_ERROR(f.GetDouble("--grace-s", &grace_s));
  o.grace = absl::Seconds(grace_s);

  WorkerMetrics metrics(RETINA_VERSION);
  int metrics_port = 0;
  ASSIGN_OR_RETURN(auto exposer,
                   services::StartExposer(f.Get("--metrics-listen", "0.0.0.0:9465"), metrics.registry(), &metrics_port));
  o.metrics_address = absl::StrCat(o.host, ":", metrics_port);
  ASSIGN_OR_RETURN(std::unique_ptr<Worker> worker, Worker::Create(o, &metrics));
  RETINA_LOG(Info) << "retina-worker " << RETINA_VERSION << " " << o.worker_id << ": "
                   << (o.gpu_ids.empty() ? absl::StrCat(o.cpu_slots, " CPU slots")
                                         : absl::StrCat(o.gpu_ids.size(), " GPU slots"))
                   << ", trainer " << o.trainer.string() << ", store " << o.store.string() << ", /metrics on port "
                   << metrics_port;
  RETURN_IF_ERROR(services::WriteReadyFile(f.Get("--ready-file"), absl::StrCat("{\"metrics_port\": ", metrics_port, "}")));

  std::atomic<bool> stop{false};
  // The agent loop forks the ranks, so it runs on the main thread (which
  // lives as long as the process: PR_SET_PDEATHSIG follows the forking thread).
  std::thread signals([&stop] {
    const int sig = services::WaitForStopSignal();
    RETINA_LOG(Info) << "signal " << sig << ": stopping";
    stop = true;
  });
  signals.detach();
  worker->Run(stop);
  return absl::OkStatus();
}

}  // namespace
}  // namespace retina::worker

int main(int argc, char** argv) {
  retina::services::BlockStopSignals();
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << retina::worker::kUsage;
    return args.empty() ? 2 : 0;
  }
  return retina::ReportStatus("retina-worker", retina::worker::Serve(args));
}
