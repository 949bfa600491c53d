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

struct ServeFlags {
  WorkerOptions worker;
  std::string ca, token_file, id, host, gpus = "auto", labels, trainer, metrics_listen = "0.0.0.0:9465", ready_file;
  std::string store = ".";
  double grace_s = absl::ToDoubleSeconds(WorkerOptions().grace);
};

void AddServeFlags(CLI::App& app, ServeFlags* f) {
  f->worker.cpu_slots = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--coordinator", f->worker.coordinator, "the coordinator's gRPC address")->required();
  app.add_option("--ca", f->ca, "TLS: the coordinator's CA (PEM); default plaintext");
  app.add_option("--token-file", f->token_file, "the worker token's file");
  app.add_option("--id", f->id, "this worker's id (default: --host)");
  app.add_option("--host", f->host, "the address other nodes reach this one at, MASTER_ADDR (default: the hostname)");
  app.add_option("--cpu-slots", f->worker.cpu_slots, "slots without GPUs (default: the cores)")->check(kPositiveInt);
  app.add_option("--gpus", f->gpus, "auto (the driver's, within CUDA_VISIBLE_DEVICES) | none | ids like 0,1");
  app.add_option("--labels", f->labels, "k=v,k=v labels for placement");
  AddStoreOption(&app, &f->store);
  app.add_option("--trainer", f->trainer, "retina-train to run (default: beside this program, the build tree, PATH)");
  app.add_option("--grace-s", f->grace_s, "SIGTERM to SIGKILL of a stopped rank")->check(kNonNegativeNumber);
  app.add_option("--serve-client-tokens", f->worker.serve_client_tokens,
                 "serve jobs: the users' token file their model servers check (the coordinator's --client-tokens)");
  app.add_option("--serve-tls-cert", f->worker.serve_tls_cert, "serve jobs: the TLS certificate of this host (PEM)");
  app.add_option("--serve-tls-key", f->worker.serve_tls_key, "serve jobs: its key");
  app.add_option("--metrics-listen", f->metrics_listen, "Prometheus /metrics address");
  app.add_option("--ready-file", f->ready_file, "write {metrics_port} here once registered");
}

// Flags into WorkerOptions; INVALID_ARGUMENT naming the flag.
absl::StatusOr<WorkerOptions> WorkerOptionsOf(const ServeFlags& f) {
  WorkerOptions o = f.worker;
  o.ca = f.ca;
  if (!f.token_file.empty()) {
    ASSIGN_OR_RETURN(o.token, services::ReadTokenFile(f.token_file));
  }
  char hostname[256] = {0};
  ::gethostname(hostname, sizeof hostname - 1);
  o.host = f.host.empty() ? hostname : f.host;
  o.worker_id = f.id.empty() ? o.host : f.id;
  if (f.gpus == "auto") {
    o.gpu_ids = DetectGpus();
  } else if (f.gpus != "none") {
    for (absl::string_view s : absl::StrSplit(f.gpus, ',', absl::SkipEmpty())) {
      int id;
      if (!absl::SimpleAtoi(s, &id) || id < 0) return absl::InvalidArgumentError("--gpus: auto, none or ids like 0,1");
      o.gpu_ids.push_back(id);
    }
  }
  ASSIGN_OR_RETURN(auto labels, ParseKeyValues(f.labels, "--labels"));
  o.labels.insert(labels.begin(), labels.end());
  o.store = f.store;
  o.trainer = f.trainer.empty() ? DefaultTrainer() : std::filesystem::path(f.trainer);
  if (o.trainer.empty()) {
    return absl::FailedPreconditionError(
        "retina-train not found next to retina-worker, in the build tree (../trainer/) or on PATH; pass --trainer PATH");
  }
  o.grace = absl::Seconds(f.grace_s);
  return o;
}

absl::Status Serve(const ServeFlags& f) {
  ASSIGN_OR_RETURN(WorkerOptions o, WorkerOptionsOf(f));
  WorkerMetrics metrics(RETINA_VERSION);
  int metrics_port = 0;
  ASSIGN_OR_RETURN(auto exposer, services::StartExposer(f.metrics_listen, metrics.registry(), &metrics_port));
  o.metrics_address = absl::StrCat(o.host, ":", metrics_port);
  ASSIGN_OR_RETURN(std::unique_ptr<Worker> worker, Worker::Create(o, &metrics));
  RETINA_LOG(Info) << "retina-worker " << RETINA_VERSION << " " << o.worker_id << ": "
                   << (o.gpu_ids.empty() ? absl::StrCat(o.cpu_slots, " CPU slots")
                                         : absl::StrCat(o.gpu_ids.size(), " GPU slots"))
                   << ", trainer " << o.trainer.string() << ", store " << o.store.string() << ", /metrics on port "
                   << metrics_port;
  RETURN_IF_ERROR(services::WriteReadyFile(f.ready_file, absl::StrCat("{\"metrics_port\": ", metrics_port, "}")));

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
  retina::Cli cli("retina-worker",
                  "The node agent: registers this node's slots (CUDA devices when present, else --cpu-slots) with\n"
                  "the coordinator, runs the trainer ranks it is assigned, serves its own /metrics. SIGTERM/SIGINT:\n"
                  "stop the ranks (they checkpoint), report, exit.");
  retina::worker::ServeFlags flags;
  retina::worker::AddServeFlags(cli.app(), &flags);
  cli.Root([&] { return retina::worker::Serve(flags); });
  return cli.Run(argc, argv);
}
