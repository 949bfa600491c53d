// retina-coordinator: the job service (JobService for users, WorkerService
// for retina-worker agents), a SQLite job store, Prometheus /metrics, gRPC
// health checking. SIGTERM/SIGINT shut it down gracefully.
//
//   retina-coordinator [--listen 0.0.0.0:50051] [--metrics-listen 0.0.0.0:9464]
//       [--db retina.db] [--store DIR] [--lease-s 10] [--heartbeat-s 1]
//       [--ports 29500-29999] [--sqlite-sync full|normal]
//       [--tls-cert F --tls-key F [--tls-client-ca F]]
//       [--client-tokens FILE] [--worker-token FILE] [--ready-file PATH]
//       [--adopt-store] [--allowed-root DIR]...
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/cli.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "grpcpp/health_check_service_interface.h"
#include "services/coordinator/coordinator_service.h"
#include "services/study/study_controller.h"
#include "services/server_util.h"

namespace retina::coordinator {
namespace {

// What the command line sets besides CoordinatorOptions (whose member
// initialisers hold the core's defaults, the only copy).
struct ServeFlags {
  CoordinatorOptions core;
  std::string store = ".";
  std::string listen = "0.0.0.0:50051", metrics_listen = "0.0.0.0:9464";
  double lease_s = absl::ToDoubleSeconds(CoordinatorOptions().lease);
  double preempt_min_run_s = absl::ToDoubleSeconds(CoordinatorOptions().preempt_min_run);
  double grow_after_s = absl::ToDoubleSeconds(CoordinatorOptions().grow_after);
  double heartbeat_s = absl::ToDoubleSeconds(CoordinatorOptions().heartbeat);
  std::string ports;
  std::string database = CoordinatorOptions().database.string();
  std::string tls_cert, tls_key, tls_client_ca, client_tokens, worker_token, ready_file;
  std::vector<std::string> allowed_roots, output_roots;
  std::string executor = "workers";
  double slurm_poll_s = absl::ToDoubleSeconds(SlurmOptions().poll);
  std::string slurm_script;
};

void AddServeFlags(CLI::App& app, ServeFlags* f) {
  app.add_option("--listen", f->listen, "gRPC address (JobService, WorkerService, health)");
  app.add_option("--metrics-listen", f->metrics_listen, "Prometheus /metrics address");
  app.add_option("--db", f->database, "the SQLite job database");
  AddStoreOption(&app, &f->store, "the shared store (checkpoints, metrics, logs)");
  app.add_option("--lease-s", f->lease_s, "a worker silent this long is lost (at least twice --heartbeat-s)")
      ->check(kPositiveNumber);
  app.add_option("--heartbeat-s", f->heartbeat_s, "heartbeat period asked of workers")->check(kPositiveNumber);
  app.add_option("--ports", f->ports, "rendezvous ports MIN-MAX (MASTER_PORT), default 29500-29999");
  app.add_option("--sqlite-sync", f->core.sqlite_synchronous, "SQLite synchronous mode")
      ->check(CLI::IsMember({"full", "normal"}));
  app.add_option("--tls-cert", f->tls_cert, "serve TLS with this certificate (PEM; with --tls-key)");
  app.add_option("--tls-key", f->tls_key, "the certificate's key");
  app.add_option("--tls-client-ca", f->tls_client_ca, "require client certificates signed by this CA (mutual TLS)");
  app.add_option("--client-tokens", f->client_tokens, "bearer tokens of users (one 'token user' per line)");
  app.add_option("--worker-token", f->worker_token, "the bearer token workers present");
  app.add_option("--preempt-min-run-s", f->preempt_min_run_s,
                 "a running job is preempted for a higher-priority one only after this long")
      ->check(kNonNegativeNumber);
  app.add_option("--elastic-grow-after-s", f->grow_after_s,
                 "an elastic job running below its world size grows back (checkpoint, restart with more ranks) "
                 "when idle slots allow, once its attempt has run this long")
      ->check(kNonNegativeNumber);
  app.add_option("--max-running-slots-per-user", f->core.max_running_slots_per_user,
                 "fair use: slots one user's jobs may hold at once (0 = no limit; docs/service.md \"Scheduling\")")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-queued-jobs-per-user", f->core.max_queued_jobs_per_user,
                 "fair use: queued jobs one user may have (0 = no limit); SubmitJob beyond is RESOURCE_EXHAUSTED")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--ready-file", f->ready_file, "write {grpc_port, metrics_port} here once serving");
  app.add_option("--executor", f->executor,
                 "where attempts run: workers (retina-worker agents) or slurm (sbatch; docs/hpc.md)")
      ->check(CLI::IsMember({"workers", "slurm"}));
  app.add_option("--slurm-script", f->slurm_script,
                 "--executor slurm: deploy/slurm/retina-slurm.sh on a path every node sees");
  app.add_option("--slurm-trainer-dir", f->core.slurm.trainer_dir, "the folder of retina-train on the nodes (RETINA_BIN)");
  app.add_option("--slurm-bin", f->core.slurm.bin_dir, "where sbatch, scontrol, scancel are (default: PATH)");
  app.add_option("--slurm-launcher", f->core.slurm.launcher, "how the script starts ranks: srun | mpirun")
      ->check(CLI::IsMember({"srun", "mpirun"}));
  app.add_option("--slurm-partition", f->core.slurm.partition, "default partition (a job's label slurm.partition wins)");
  app.add_option("--slurm-account", f->core.slurm.account, "default account (label slurm.account)");
  app.add_option("--slurm-qos", f->core.slurm.qos, "default QoS (label slurm.qos)");
  app.add_option("--slurm-time", f->core.slurm.time_limit, "default time limit, sbatch --time syntax (label slurm.time)");
  app.add_option("--slurm-arg", f->core.slurm.extra_args, "one more sbatch argument, e.g. --constraint=a100 (repeatable)")
      ->allow_extra_args(false);
  app.add_option("--slurm-poll-s", f->slurm_poll_s, "seconds between scontrol polls")->check(kPositiveNumber);
  app.add_flag("--adopt-store", f->core.adopt_store,
               "a new job database takes over a store another database used (refused otherwise: the store's "
               "STORE_ID and the database disagree)");
  app.add_option("--allowed-root", f->allowed_roots,
                 "besides --store, a directory service jobs may read datasets and weights from (repeatable)")
      ->allow_extra_args(false)
      ->check(CLI::ExistingDirectory);
  app.add_option("--output-root", f->output_roots,
                 "besides a job's own directory, a directory infer jobs may write their outputs under (repeatable; "
                 "never another job's directory or a dataset)")
      ->allow_extra_args(false)
      ->check(CLI::ExistingDirectory);
}

// Flags into CoordinatorOptions; INVALID_ARGUMENT naming the flag.
absl::StatusOr<CoordinatorOptions> CoreOptions(const ServeFlags& f) {
  CoordinatorOptions o = f.core;
  o.database = f.database;
  o.store = f.store;
  o.allowed_roots.assign(f.allowed_roots.begin(), f.allowed_roots.end());
  o.output_roots.assign(f.output_roots.begin(), f.output_roots.end());
  o.executor = f.executor == "slurm" ? CoordinatorOptions::Executor::kSlurm : CoordinatorOptions::Executor::kWorkers;
  o.slurm.poll = absl::Seconds(f.slurm_poll_s);
  if (o.executor == CoordinatorOptions::Executor::kSlurm) {
    if (f.slurm_script.empty()) {
      return absl::InvalidArgumentError(
          "--executor slurm needs --slurm-script: deploy/slurm/retina-slurm.sh on a path every node sees");
    }
    std::error_code ec;
    const std::filesystem::path script = std::filesystem::canonical(f.slurm_script, ec);
    if (ec) return absl::InvalidArgumentError(absl::StrCat("--slurm-script ", f.slurm_script, ": ", ec.message()));
    o.slurm.script = script;
  }
  if (f.lease_s < 2 * f.heartbeat_s) return absl::InvalidArgumentError("--lease-s must be at least twice --heartbeat-s");
  o.lease = absl::Seconds(f.lease_s);
  o.preempt_min_run = absl::Seconds(f.preempt_min_run_s);
  o.grow_after = absl::Seconds(f.grow_after_s);
  o.heartbeat = absl::Seconds(f.heartbeat_s);
  if (!f.ports.empty()) {
    std::vector<std::string> p = absl::StrSplit(f.ports, '-');
    if (p.size() != 2 || !absl::SimpleAtoi(p[0], &o.port_min) || !absl::SimpleAtoi(p[1], &o.port_max) ||
        o.port_min < 1 || o.port_min > o.port_max || o.port_max > 65535) {
      return absl::InvalidArgumentError("--ports: MIN-MAX, e.g. 29500-29999");
    }
  }
  return o;
}

absl::Status Serve(const ServeFlags& f) {
  ASSIGN_OR_RETURN(CoordinatorOptions o, CoreOptions(f));
  ASSIGN_OR_RETURN(auto auth, services::Authenticator::Create(f.client_tokens, f.worker_token));
  if (!auth->enabled()) {
    RETINA_LOG(Warning) << "no --client-tokens/--worker-token: anyone who reaches the port can submit jobs";
  }
  ASSIGN_OR_RETURN(auto creds, services::MakeServerCredentials(f.tls_cert, f.tls_key, f.tls_client_ca));

  CoordinatorMetrics metrics(RETINA_VERSION);
  int metrics_port = 0;
  ASSIGN_OR_RETURN(auto exposer, services::StartExposer(f.metrics_listen, metrics.registry(), &metrics_port));
  ASSIGN_OR_RETURN(std::unique_ptr<Coordinator> core, Coordinator::Create(o, &metrics));
  // Studies, driven through the coordinator's client calls.
  study::StudyController studies(core.get(), {o.store, o.allowed_roots, o.output_roots});
  studies.Start(o.tick);
  JobServiceImpl jobs(core.get(), auth.get(), &metrics);
  WorkerServiceImpl workers(core.get(), auth.get(), &metrics);
  ModelServiceImpl models(core.get(), auth.get(), &metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(f.listen, creds, &grpc_port);
  builder.RegisterService(&jobs);
  builder.RegisterService(&workers);
  builder.RegisterService(&models);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    return absl::UnavailableError(absl::StrCat("--listen ", f.listen, ": cannot serve gRPC (address in use?)"));
  }
  // Health follows the job database: NOT_SERVING while it cannot commit.
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  core->SetHealthListener([health](bool ok) { health->SetServingStatus(ok); });
  RETINA_LOG(Info) << "retina-coordinator " << RETINA_VERSION << ": gRPC on port " << grpc_port
                   << (f.tls_cert.empty() ? " (plaintext)" : " (TLS)") << ", /metrics on port " << metrics_port
                   << ", jobs in " << o.database.string() << ", store " << o.store.string();
  RETURN_IF_ERROR(services::WriteReadyFile(
      f.ready_file, absl::StrCat("{\"grpc_port\": ", grpc_port, ", \"metrics_port\": ", metrics_port, "}")));

  const int sig = services::WaitForStopSignal();
  RETINA_LOG(Info) << "signal " << sig << ": shutting down (in-flight calls get 5 s)";
  core->SetHealthListener([](bool) {});
  health->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  return absl::OkStatus();
}

}  // namespace
}  // namespace retina::coordinator

int main(int argc, char** argv) {
  retina::services::BlockStopSignals();
  retina::Cli cli("retina-coordinator",
                  "The job service: JobService for users, WorkerService for retina-worker agents, a SQLite job\n"
                  "store, Prometheus /metrics, gRPC health checking. SIGTERM/SIGINT shut it down gracefully.");
  retina::coordinator::ServeFlags flags;
  retina::coordinator::AddServeFlags(cli.app(), &flags);
  cli.Root([&] { return retina::coordinator::Serve(flags); });
  return cli.Run(argc, argv);
}
