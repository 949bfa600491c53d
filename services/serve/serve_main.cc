// retina-serve: the model server (PredictionService; docs/serving.md). Keeps
// models loaded, batches concurrent requests' windows, follows LATEST,
// exposes Prometheus /metrics and gRPC health (NOT_SERVING until the models
// are loaded). SIGTERM/SIGINT drain it: health turns NOT_SERVING, new calls
// are refused, calls in flight get --drain-s to finish.
//
//   retina-serve --model NAME=WEIGHTS [--model-owner NAME=USER]... [--store DIR]
//       [--listen 0.0.0.0:50052] [--metrics-listen 0.0.0.0:9465]
//       [--max-batch 8] [--max-delay-ms 2] [--max-queue-windows 1024]
//       [--max-request-mb 1024] [--reload-s 2] [--threads N] [--device auto|cpu|cuda]
//       [--tls-cert F --tls-key F [--tls-client-ca F]] [--client-tokens FILE]
//       [--allowed-root DIR]... [--ready-file PATH] [--drain-s 30]
//   retina-serve run --config JOB.yaml --store DIR --job ID ...   (a kind: serve job;
//       retina-train run hands it here with the same flags)
#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <iostream>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/fault_injection.h"
#include "common/logging.h"
#include "common/read_scope.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "grpcpp/health_check_service_interface.h"
#include "services/server_util.h"
#include "services/serve/metrics_http.h"
#include "services/serve/prediction_service.h"
#include "trainer/serving/serve_job.h"

namespace retina::serve {
namespace {

namespace ts = trainer::serving;

struct ServeFlags {
  std::string store = ".";
  std::string listen = "0.0.0.0:50052", metrics_listen = "0.0.0.0:9465";
  std::vector<std::string> models, owners;
  int max_batch = 8;
  double max_delay_ms = 2;
  int max_queue_windows = 1024;
  int max_request_mb = 1024;
  double reload_s = 2, drain_s = 30;
  int threads = 0;
  std::string device = "auto", precision = "fp32";
  std::string tls_cert, tls_key, tls_client_ca, client_tokens, ready_file;
  std::vector<std::string> allowed_roots;
};

// `retina-serve run`: the flags of `retina-train run` (common/rank_launch.h).
struct RunFlags {
  std::string config, store = ".", job, job_uid, events, resume;
  int attempt = 0;
  bool confine = false;
  std::vector<std::string> allowed_roots, output_roots, overrides;
  std::string user, host_addr, elastic;
  int rank = 0, world_size = 1, local_rank = 0;
};

void AddServerFlags(CLI::App& app, ServeFlags* f) {
  app.add_option("--listen", f->listen, "gRPC address (PredictionService, health)");
  app.add_option("--metrics-listen", f->metrics_listen, "Prometheus /metrics address");
  app.add_option("--max-batch", f->max_batch, "windows per forward pass, shared by concurrent requests")
      ->check(CLI::Range(1, 4096));
  app.add_option("--max-delay-ms", f->max_delay_ms, "how long a batch waits to fill after its first window")
      ->check(CLI::Range(0.0, 10000.0));
  app.add_option("--max-queue-windows", f->max_queue_windows,
                 "windows waiting at most; beyond, Predict is RESOURCE_EXHAUSTED with a retry-after-ms hint")
      ->check(kPositiveInt);
  app.add_option("--max-request-mb", f->max_request_mb,
                 "buffers one request may need (its input with context, accumulators, answer); larger is refused")
      ->check(kPositiveInt);
  app.add_option("--reload-s", f->reload_s, "how often followed models (a LATEST) look for a new checkpoint")
      ->check(kPositiveNumber);
  app.add_option("--drain-s", f->drain_s, "on SIGTERM, how long calls in flight get to finish")->check(kNonNegativeNumber);
  app.add_option("--threads", f->threads, "intra-op threads of the forward passes (0: all cores)")->check(kNonNegativeInt);
  app.add_option("--device", f->device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app.add_option("--precision", f->precision, "fp32 | bf16 (autocast)")->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--tls-cert", f->tls_cert, "serve TLS with this certificate (PEM; with --tls-key)")
      ->envname("RETINA_SERVE_TLS_CERT");
  app.add_option("--tls-key", f->tls_key, "the certificate's key")->envname("RETINA_SERVE_TLS_KEY");
  app.add_option("--tls-client-ca", f->tls_client_ca, "require client certificates signed by this CA");
  app.add_option("--client-tokens", f->client_tokens,
                 "bearer tokens of users ('token user [admin]' per line: the coordinator's file)")
      ->envname("RETINA_SERVE_CLIENT_TOKENS");
  app.add_option("--allowed-root", f->allowed_roots, "besides --store, a directory region volumes may be read from")
      ->allow_extra_args(false)
      ->check(CLI::ExistingDirectory);
  app.add_option("--ready-file", f->ready_file, "write {grpc_port, metrics_port} here once the models are loaded");
}

// The scratch directory for uploads: private, removed at exit.
class Scratch {
 public:
  Scratch() {
    std::string t = (std::filesystem::temp_directory_path() / "retina-serve-XXXXXX").string();
    if (mkdtemp(t.data()) != nullptr) dir_ = t;
  }
  ~Scratch() {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

// Runs the server until SIGTERM/SIGINT; returns the signal. `on_serving`
// gets the gRPC port once the models are loaded.
absl::StatusOr<int> Serve(const ServeFlags& f, std::vector<ts::ServedModelSpec> specs,
                          const std::function<void(int)>& on_serving) {
  if (specs.empty()) return absl::InvalidArgumentError("--model: serve at least one model (NAME=WEIGHTS)");
  for (const ts::ServedModelSpec& s : specs) {
    if (s.max_batch > f.max_queue_windows) {  // its groups would never fit the queue
      return absl::InvalidArgumentError(absl::StrCat("--max-batch ", s.max_batch, " is above --max-queue-windows ",
                                                     f.max_queue_windows, " (serve.max_batch, serve.max_queue_windows)"));
    }
  }
  RETURN_IF_ERROR(CheckFaults());  // tests' fault injection, named and logged
  ASSIGN_OR_RETURN(auto auth, services::Authenticator::Create(f.client_tokens, ""));
  if (!auth->enabled()) {
    RETINA_LOG(Warning) << "no --client-tokens: anyone who reaches the port may use every model";
  }
  ASSIGN_OR_RETURN(auto creds, services::MakeServerCredentials(f.tls_cert, f.tls_key, f.tls_client_ca));
  ServeMetrics metrics(RETINA_VERSION);
  int metrics_port = 0;
  ASSIGN_OR_RETURN(std::unique_ptr<MetricsHttpServer> exposer, MetricsHttpServer::Start(f.metrics_listen, metrics.registry()));
  metrics_port = exposer->port();
  Scratch scratch;
  if (scratch.dir().empty()) return absl::InternalError("cannot create a scratch directory under $TMPDIR");
  // Every file a reader opens (and every file one references) stays under
  // the store, the allowed roots and the scratch directory (read_scope.h).
  std::vector<std::filesystem::path> readable(f.allowed_roots.begin(), f.allowed_roots.end());
  readable.push_back(scratch.dir());
  ReadScope scope(PathPolicy(f.store, readable));
  ts::ConfigureServingThreads(f.threads);
  ASSIGN_OR_RETURN(ts::ServingDevice device, ts::PlanServingDevice(f.device, f.precision));

  ts::ModelPool pool(f.store, device.device, device.bf16);
  ts::WindowBatcher batcher({f.max_queue_windows}, &metrics);
  ts::ServingOptions so;
  so.store = f.store;
  so.allowed_roots.assign(f.allowed_roots.begin(), f.allowed_roots.end());
  so.max_request_bytes = int64_t{f.max_request_mb} << 20;
  so.scratch = scratch.dir();
  ts::ServingCore core(so, &pool, &batcher);
  PredictionServiceImpl service(&core, &pool, auth.get(), &metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(f.listen, creds, &grpc_port);
  builder.RegisterService(&service);
  // A request's bytes are bounded by --max-request-mb (and a little framing).
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(so.max_request_bytes + (1 << 20), INT32_MAX)));
  builder.SetMaxSendMessageSize(INT32_MAX);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    return absl::UnavailableError(absl::StrCat("--listen ", f.listen, ": cannot serve gRPC (address in use?)"));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(false);  // until the models are loaded
  RETINA_LOG(Info) << "retina-serve " << RETINA_VERSION << ": gRPC on port " << grpc_port
                   << (f.tls_cert.empty() ? " (plaintext)" : " (TLS)") << ", /metrics on port " << metrics_port
                   << ", " << device.describe << "; loading " << specs.size() << " model(s)";
  for (ts::ServedModelSpec& spec : specs) {
    RETURN_IF_ERROR(pool.Add(spec));
    metrics.Models(static_cast<int64_t>(pool.List().size()), pool.loads(), pool.refusals());
  }
  service.SetReady(true);
  health->SetServingStatus(true);
  RETURN_IF_ERROR(services::WriteReadyFile(
      f.ready_file, absl::StrCat("{\"grpc_port\": ", grpc_port, ", \"metrics_port\": ", metrics_port, "}")));
  if (on_serving) on_serving(grpc_port);

  // Hot reload: followed models look for a new checkpoint every --reload-s.
  std::atomic<bool> stop{false};
  std::thread reloader([&] {
    auto next = std::chrono::steady_clock::now();
    while (!stop.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (std::chrono::steady_clock::now() < next) continue;
      next = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(f.reload_s * 1000));
      pool.Refresh();
      metrics.Models(static_cast<int64_t>(pool.List().size()), pool.loads(), pool.refusals());
    }
  });

  const int sig = services::WaitForStopSignal();
  RETINA_LOG(Info) << "signal " << sig << ": draining (calls in flight get " << f.drain_s << " s)";
  health->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(f.drain_s * 1000)));
  server->Wait();
  batcher.Stop();
  stop.store(true);
  reloader.join();
  RETINA_LOG(Info) << "drained; exiting";
  return sig;
}

absl::StatusOr<int> ServeModels(const ServeFlags& f) {
  std::vector<ts::ServedModelSpec> specs;
  std::map<std::string, std::string> owners;
  for (const std::string& o : f.owners) {
    const size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0) return absl::InvalidArgumentError("--model-owner: '" + o + "' is not NAME=USER");
    owners[o.substr(0, eq)] = o.substr(eq + 1);
  }
  for (const std::string& m : f.models) {
    ASSIGN_OR_RETURN(ts::ServedModelSpec spec, ts::ParseModelFlag(m, "--model"));
    if (auto it = owners.find(spec.name); it != owners.end()) {
      spec.owner = it->second;
      owners.erase(it);
    }
    spec.max_batch = f.max_batch;
    spec.max_delay_ms = f.max_delay_ms;
    specs.push_back(std::move(spec));
  }
  if (!owners.empty()) {
    return absl::InvalidArgumentError("--model-owner: no --model named '" + owners.begin()->first + "'");
  }
  RETURN_IF_ERROR(Serve(f, std::move(specs), nullptr).status());
  return 0;
}

// A kind: serve job: serve.models owned by the job's user, the serving
// event with this host's address, and exit 75 on SIGTERM (the coordinator
// then requeues it, unless it was cancelled: a server never "succeeds").
absl::StatusOr<int> RunServeJob(ServeFlags f, const RunFlags& r) {
  if (!r.overrides.empty() || r.world_size != 1) {
    RETINA_LOG(Error) << (r.world_size != 1 ? "a serve job runs one server process (WORLD_SIZE 1)"
                                             : "--set: a serve job's config is its file");
    return kExitUsage;
  }
  ts::ServeJobOptions o;
  o.config = r.config;
  o.store = r.store;
  o.job_id = r.job;
  o.job_uid = r.job_uid;
  o.events = r.events;
  o.attempt = r.attempt;
  o.confine = r.confine;
  o.user = r.user;
  o.allowed_roots.assign(r.allowed_roots.begin(), r.allowed_roots.end());
  o.output_roots.assign(r.output_roots.begin(), r.output_roots.end());
  absl::StatusOr<std::unique_ptr<ts::ServeJob>> job = ts::ServeJob::Start(o);
  if (!job.ok()) {
    RETINA_LOG(Error) << job.status().message();
    return job.status().code() == absl::StatusCode::kInvalidArgument ? kExitUsage : kExitFailed;
  }
  const ServeConfig& c = (*job)->config().serve;
  f.store = r.store;
  f.listen = absl::StrCat("0.0.0.0:", c.port);
  f.metrics_listen = "0.0.0.0:0";
  f.max_queue_windows = c.max_queue_windows;
  f.max_request_mb = c.max_request_mb;
  f.reload_s = c.reload_s;
  f.device = EnumName((*job)->config().runtime.device);
  f.precision = (*job)->config().runtime.precision == Precision::kBf16 ? "bf16" : "fp32";
  f.threads = (*job)->config().runtime.threads;
  f.allowed_roots = r.allowed_roots;
  if (r.user.empty()) RETINA_LOG(Warning) << "RETINA_JOB_USER is not set: the models answer every user";
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::string address_host = r.host_addr.empty() ? std::string(host) : r.host_addr;
  absl::StatusOr<int> sig = Serve(f, (*job)->models(), [&](int port) {
    (*job)->Serving(absl::StrCat(address_host, ":", port));
  });
  if (!sig.ok()) {
    RETINA_LOG(Error) << sig.status().message();
    return sig.status().code() == absl::StatusCode::kInvalidArgument ? kExitUsage : kExitFailed;
  }
  (*job)->Stopped(true);
  return kExitPreempted;
}

}  // namespace
}  // namespace retina::serve

int main(int argc, char** argv) {
  // Every forward pass allocates and frees its activations. Above glibc's
  // mmap threshold each allocation is a fresh mmap (zeroed pages, a page
  // fault per page, every batch): forward passes ran 18% slower than the
  // same passes in a process that had raised the threshold (bench/serve_bench,
  // tiny model, 512x512: 1.87 s vs 1.58 s). Keep them in the heap; the trim
  // threshold lets a burst's memory be reused rather than returned at once.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  retina::services::BlockStopSignals();
  retina::Cli cli("retina-serve",
                  "The model server: PredictionService (Predict, ListModels) over models kept loaded, with dynamic\n"
                  "batching, hot reload of followed checkpoints, Prometheus /metrics and gRPC health.\n"
                  "SIGTERM/SIGINT drain it. docs/serving.md");
  retina::serve::ServeFlags flags;
  retina::serve::AddServerFlags(cli.app(), &flags);
  cli.app().add_option("--store", flags.store, "the store: relative weights and region volumes are taken from it")
      ->envname("RETINA_STORE");
  cli.app().add_option("--model", flags.models, "NAME=WEIGHTS: a model to serve (repeatable; a LATEST is followed)")
      ->allow_extra_args(false);
  cli.app().add_option("--model-owner", flags.owners, "NAME=USER: only USER (and admins) may use model NAME")
      ->allow_extra_args(false);
  cli.Root([&] { return retina::serve::ServeModels(flags); });

  retina::serve::RunFlags run;
  CLI::App* cmd = cli.Command("run", "Run a kind: serve job (what retina-train run hands a serve job to)",
                              [&] { return retina::serve::RunServeJob(flags, run); });
  cmd->add_option("--config", run.config, "the job file")->required();
  cmd->add_option("--store", run.store, "the shared store")->envname("RETINA_STORE");
  cmd->add_option("--job", run.job, "job id")->required();
  cmd->add_option("--job-uid", run.job_uid, "jobs/<id>/JOB_UID must match");
  cmd->add_option("--attempt", run.attempt, "the service's attempt")->envname("RETINA_ATTEMPT");
  cmd->add_option("--events", run.events, "event stream: a file path or fd:N");
  cmd->add_option("--resume", run.resume, "(accepted for retina-train run's command line; a server has no state)");
  cmd->add_flag("--confine", run.confine, "paths only under the store and the allowed roots");
  cmd->add_option("--allowed-root", run.allowed_roots, "a directory weights and volumes may come from")
      ->allow_extra_args(false);
  cmd->add_option("--output-root", run.output_roots, "(accepted; outputs go under <store>/served/<user>/)")
      ->allow_extra_args(false);
  cmd->add_option("--set", run.overrides, "(refused: a serve job's config is its file)")->allow_extra_args(false);
  cmd->add_option("--rank", run.rank, "(1 rank)")->envname("RANK");
  cmd->add_option("--world-size", run.world_size, "(1 rank)")->envname("WORLD_SIZE");
  cmd->add_option("--local-rank", run.local_rank, "(ignored)")->envname("LOCAL_RANK");
  cmd->add_option("--elastic", run.elastic, "(ignored)")->envname("RETINA_ELASTIC");
  run.user = getenv("RETINA_JOB_USER") != nullptr ? getenv("RETINA_JOB_USER") : "";
  run.host_addr = getenv("RETINA_HOST_ADDR") != nullptr ? getenv("RETINA_HOST_ADDR") : "";
  return cli.Run(argc, argv);
}
