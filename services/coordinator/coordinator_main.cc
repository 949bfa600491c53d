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
#include "services/server_util.h"

namespace retina::coordinator {
namespace {

constexpr char kUsage[] =
    "usage: retina-coordinator [--listen HOST:PORT] [--metrics-listen HOST:PORT] [--db FILE] [--store DIR]\n"
    "          [--lease-s S] [--heartbeat-s S] [--ports MIN-MAX] [--sqlite-sync full|normal]\n"
    "          [--tls-cert F --tls-key F [--tls-client-ca F]] [--client-tokens FILE] [--worker-token FILE]\n"
    "          [--ready-file PATH] [--adopt-store] [--allowed-root DIR]...\n"
    "  --allowed-root: besides --store, a directory service jobs may read datasets and weights from\n"
    "  --adopt-store: a new job database takes over a store another database used\n"
    "                 (refused otherwise: the store's STORE_ID and the database disagree)\n";

absl::Status Serve(std::vector<std::string> args) {
  ASSIGN_OR_RETURN(std::vector<std::string> roots, TakeRepeatedFlag(&args, "--allowed-root"));
  ASSIGN_OR_RETURN(CliFlags f, ParseCliFlags(args, {"--listen", "--metrics-listen", "--db", "--store", "--lease-s",
                                                    "--heartbeat-s", "--ports", "--sqlite-sync", "--tls-cert",
                                                    "--tls-key", "--tls-client-ca", "--client-tokens",
                                                    "--worker-token", "--ready-file"},
                                                   {"--adopt-store"}));
  CoordinatorOptions o;
  o.database = f.Get("--db", "retina.db");
  o.store = f.Store();
  o.sqlite_synchronous = f.Get("--sqlite-sync", "full");
  o.adopt_store = f.Has("--adopt-store");
  for (const std::string& r : roots) {
    std::error_code ec;
    if (!std::filesystem::is_directory(r, ec)) {
      return absl::InvalidArgumentError(absl::StrCat("--allowed-root ", r, ": not a directory"));
    }
    o.allowed_roots.emplace_back(r);
  }
  double lease_s = 10, heartbeat_s = 1;
  RETURN_IF_ERROR(f.GetDouble("--lease-s", &lease_s));
  RETURN_IF_ERROR(f.GetDouble("--heartbeat-s", &heartbeat_s));
  if (heartbeat_s <= 0 || lease_s < 2 * heartbeat_s) {
    return absl::InvalidArgumentError("--lease-s must be at least twice --heartbeat-s (> 0)");
  }
  o.lease = absl::Seconds(lease_s);
  o.heartbeat = absl::Seconds(heartbeat_s);
  if (f.Has("--ports")) {
    std::vector<std::string> p = absl::StrSplit(f.Get("--ports"), '-');
    if (p.size() != 2 || !absl::SimpleAtoi(p[0], &o.port_min) || !absl::SimpleAtoi(p[1], &o.port_max)) {
      return absl::InvalidArgumentError("--ports: MIN-MAX, e.g. 29500-29999");
    }
  }
  ASSIGN_OR_RETURN(auto auth, services::Authenticator::Create(f.Get("--client-tokens"), f.Get("--worker-token")));
  if (!auth->enabled()) {
    RETINA_LOG(Warning) << "no --client-tokens/--worker-token: anyone who reaches the port can submit jobs";
  }
  ASSIGN_OR_RETURN(auto creds, services::MakeServerCredentials(f.Get("--tls-cert"), f.Get("--tls-key"),
                                                               f.Get("--tls-client-ca")));

  CoordinatorMetrics metrics(RETINA_VERSION);
  int metrics_port = 0;
  ASSIGN_OR_RETURN(auto exposer,
                   services::StartExposer(f.Get("--metrics-listen", "0.0.0.0:9464"), metrics.registry(), &metrics_port));
  ASSIGN_OR_RETURN(std::unique_ptr<Coordinator> core, Coordinator::Create(o, &metrics));
  JobServiceImpl jobs(core.get(), auth.get(), &metrics);
  WorkerServiceImpl workers(core.get(), auth.get(), &metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  const std::string listen = f.Get("--listen", "0.0.0.0:50051");
  builder.AddListeningPort(listen, creds, &grpc_port);
  builder.RegisterService(&jobs);
  builder.RegisterService(&workers);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    return absl::UnavailableError(absl::StrCat("--listen ", listen, ": cannot serve gRPC (address in use?)"));
  }
  // Health follows the job database: NOT_SERVING while it cannot commit.
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  core->SetHealthListener([health](bool ok) { health->SetServingStatus(ok); });
  RETINA_LOG(Info) << "retina-coordinator " << RETINA_VERSION << ": gRPC on port " << grpc_port
                   << (f.Has("--tls-cert") ? " (TLS)" : " (plaintext)") << ", /metrics on port " << metrics_port
                   << ", jobs in " << o.database.string() << ", store " << o.store.string();
  RETURN_IF_ERROR(services::WriteReadyFile(
      f.Get("--ready-file"), absl::StrCat("{\"grpc_port\": ", grpc_port, ", \"metrics_port\": ", metrics_port, "}")));

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
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::cout << retina::coordinator::kUsage;
    return 0;
  }
  return retina::ReportStatus("retina-coordinator", retina::coordinator::Serve(args));
}
