// The model server (docs/serving.md "Figures"), in one run per model:
//   1. single-request latency, p50 and p99 over --reps sequential requests,
//      for one window (an image of the model's window size) and for a
//      512x512 2D image, against a pure forward of the same windows in this
//      process (SlidingWindowLogits over ModelForward, same batch, same
//      threads): the overhead ratio p50(server) / p50(forward);
//   2. throughput (windows/s) with 1, 4 and 16 concurrent clients sending
//      one-window requests, with batching on (--max-batch, 2 ms delay) and
//      off (max batch 1): the ratio on / off per client count;
//   3. the server's peak RSS after the 16-client run.
// --transport grpc (default where the services are built) runs retina-serve
// as a process and calls it through PredictionService on loopback;
// --transport inproc calls the serving core in this process (what the GPU
// check runs: it builds the trainer only). Models are randomly initialised
// named configs (no training needed for timing), saved as checkpoints.
//
//   serve_bench [--models tiny,r50-vit-b16] [--reps 20] [--requests 64] [--transport grpc|inproc]
//               [--threads 1] [--device cpu] [--json OUT]
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/checkpoint_store.h"
#include "common/cli.h"
#include "common/file_util.h"
#include "common/records.h"
#include "common/status_macros.h"
#include "trainer/model/model_config.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/prediction/inference.h"
#include "trainer/serving/serving_core.h"
#ifdef RETINA_SERVE_BENCH_GRPC
#include <signal.h>
#include <sys/wait.h>

#include "retina/v1/prediction_service.grpc.pb.h"
#include "services/rpc_util.h"
#endif

namespace {
namespace fs = std::filesystem;
namespace ts = retina::trainer::serving;
using namespace retina::trainer;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string models = "tiny,r50-vit-b16";
  int reps = 20, requests = 64, threads = 1, max_batch = 8;
  std::string transport = "grpc", device = "cpu", json;
};

double Seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

double PeakRssMib(pid_t pid) {
  std::ifstream in("/proc/" + (pid == 0 ? std::string("self") : std::to_string(pid)) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return 0;
}

// One way to send a uint8 image [h, w] to the model and wait for its labels.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual absl::Status Predict(const std::string& image, int64_t h, int64_t w) = 0;
  virtual double PeakRssMib() = 0;
};

class InProcess : public Transport {
 public:
  InProcess(const fs::path& store, const std::string& weights, int max_batch, double delay_ms, torch::Device device)
      : pool_(store, device), batcher_({1 << 20}, nullptr), core_({store, {}, int64_t{8} << 30, store / "scratch"},
                                                                    &pool_, &batcher_) {
    ts::ServedModelSpec spec{"m", weights, "", max_batch, delay_ms};
    status_ = pool_.Add(spec);
  }
  absl::Status status() const { return status_; }
  absl::Status Predict(const std::string& image, int64_t h, int64_t w) override {
    ts::PredictQuery q;
    q.user = "bench";
    q.model = "m";
    q.input = ts::ArrayInput{"uint8", {h, w}, {}, "", image};
    return core_.Predict(q).status();
  }
  double PeakRssMib() override { return ::PeakRssMib(0); }

 private:
  ts::ModelPool pool_;
  ts::WindowBatcher batcher_;
  ts::ServingCore core_;
  absl::Status status_;
};

#ifdef RETINA_SERVE_BENCH_GRPC
class Grpc : public Transport {
 public:
  Grpc(const fs::path& store, const std::string& weights, int max_batch, double delay_ms, int threads) {
    static int instances = 0;
    const fs::path ready = store / ("ready-" + std::to_string(++instances));
    fs::remove(ready);
    const std::vector<std::string> argv = {
        std::string(RETINA_BINARY_ROOT) + "/services/retina-serve", "--store", store.string(), "--model",
        "m=" + weights, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--ready-file", ready.string(),
        "--max-batch", std::to_string(max_batch), "--max-delay-ms", absl::StrCat(delay_ms), "--threads",
        std::to_string(threads), "--max-queue-windows", "100000"};
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      freopen((store / "serve.log").c_str(), "a", stderr);
      execv(args[0], args.data());
      _exit(127);
    }
    for (int i = 0; i < 1200 && !fs::exists(ready); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const nlohmann::json j = nlohmann::json::parse(retina::ReadFile(ready).value_or("{}"), nullptr, false);
    const int port = j.is_object() ? j.value("grpc_port", 0) : 0;
    if (port == 0) {
      status_ = absl::UnavailableError("retina-serve did not start; see " + (store / "serve.log").string());
      return;
    }
    stub_ = retina::v1::PredictionService::NewStub(
        *retina::services::MakeChannel("127.0.0.1:" + std::to_string(port), ""));
  }
  ~Grpc() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  absl::Status status() const { return status_; }
  absl::Status Predict(const std::string& image, int64_t h, int64_t w) override {
    retina::v1::PredictRequest req;
    req.set_model("m");
    req.mutable_array()->set_dtype("uint8");
    req.mutable_array()->add_shape(h);
    req.mutable_array()->add_shape(w);
    req.mutable_array()->set_data(image);
    retina::v1::PredictResponse resp;
    auto ctx = retina::services::NewCallContext("", absl::Minutes(10));
    return retina::services::FromGrpcStatus(stub_->Predict(ctx.get(), req, &resp));
  }
  double PeakRssMib() override { return ::PeakRssMib(pid_); }

 private:
  pid_t pid_ = -1;
  absl::Status status_;
  std::unique_ptr<retina::v1::PredictionService::Stub> stub_;
};
#endif

absl::StatusOr<std::unique_ptr<Transport>> Open(const Options& o, const fs::path& store, const std::string& weights,
                                                int max_batch, double delay_ms, torch::Device device) {
  if (o.transport == "inproc") {
    auto t = std::make_unique<InProcess>(store, weights, max_batch, delay_ms, device);
    RETURN_IF_ERROR(t->status());
    return std::unique_ptr<Transport>(std::move(t));
  }
#ifdef RETINA_SERVE_BENCH_GRPC
  auto t = std::make_unique<Grpc>(store, weights, max_batch, delay_ms, o.threads);
  RETURN_IF_ERROR(t->status());
  return std::unique_ptr<Transport>(std::move(t));
#else
  return absl::FailedPreconditionError("--transport grpc: built without the services; use --transport inproc");
#endif
}

// A random segmentation checkpoint of `name` under <store>/models/<name>/.
absl::StatusOr<std::string> MakeModel(const fs::path& store, const std::string& name, int image_size) {
  torch::manual_seed(1);
  ASSIGN_OR_RETURN(TransUNetConfig config, NamedModelConfig(name, image_size, 2, ModelHead::kSegmentation));
  VisionTransformer model(config);
  ASSIGN_OR_RETURN(retina::CheckpointWriter w, retina::CheckpointWriter::Begin(store / "models" / name, 1));
  RETURN_IF_ERROR(SaveStateDictFile(GetStateDict(*model), w.temp_dir() / "model.pt"));
  RETURN_IF_ERROR(w.AddFile("model.pt"));
  retina::CheckpointState state;
  state.step = 1;
  state.kind = "finetune";
  state.model = name;
  state.image_size = image_size;
  state.classes = 2;
  state.mean = 0.5;
  state.std = 0.25;
  RETURN_IF_ERROR(w.WriteFile("state.json", retina::EncodeCheckpointState(state)));
  RETURN_IF_ERROR(w.Commit().status());
  return "models/" + name + "/LATEST";
}

std::string RandomImage(int64_t n, uint32_t seed) {
  std::string s(static_cast<size_t>(n), '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

absl::StatusOr<nlohmann::json> BenchModel(const Options& o, const fs::path& store, const std::string& name,
                                          torch::Device device) {
  const int window = name == "tiny" ? 64 : 224;
  ASSIGN_OR_RETURN(std::string weights, MakeModel(store, name, window));
  nlohmann::json out = {{"model", name}, {"window", window}, {"transport", o.transport}, {"threads", o.threads}};
  // The reference: the same windows through the model in this process.
  ModelSelection sel;
  sel.weights = weights;
  sel.store = store;
  ASSIGN_OR_RETURN(SegmentationModel m, LoadSegmentationModel(sel, device));
  const WindowForward forward = ModelForward(m.model, false);
  SlidingWindowOptions so;
  so.window = window;
  so.overlap = 0.5;
  so.batch = o.max_batch;
  so.device = device;
  const int reps = name == "tiny" ? o.reps : std::max(3, o.reps / 4);

  // 1. Latency.
  {
    ASSIGN_OR_RETURN(std::unique_ptr<Transport> server, Open(o, store, weights, o.max_batch, 2, device));
    for (const int64_t side : {static_cast<int64_t>(window), int64_t{512}}) {
      const std::string image = RandomImage(side * side, 7);
      const torch::Tensor input =
          torch::from_blob(const_cast<char*>(image.data()), {side, side}, torch::kByte).to(torch::kFloat) / 255.0;
      std::vector<double> ref, srv;
      int64_t windows = 0;
      for (int r = 0; r < reps + 1; ++r) {  // the first of each is a warm-up
        auto t0 = Clock::now();
        int64_t n = 0;
        (void)SlidingWindowLogits(forward, (input - m.mean) / m.std, so, &n);
        if (r > 0) ref.push_back(Seconds(t0));
        windows = n;
        t0 = Clock::now();
        RETURN_IF_ERROR(server->Predict(image, side, side));
        if (r > 0) srv.push_back(Seconds(t0));
      }
      const std::string key = side == window ? "one_window" : "image_512";
      out["latency"][key] = {{"windows", windows},
                             {"server_p50_s", Percentile(srv, 0.5)},
                             {"server_p99_s", Percentile(srv, 0.99)},
                             {"forward_p50_s", Percentile(ref, 0.5)},
                             {"forward_p99_s", Percentile(ref, 0.99)},
                             {"overhead_p50", Percentile(srv, 0.5) / Percentile(ref, 0.5)},
                             {"reps", reps}};
      std::printf("%s %s (%lld windows): server p50 %.4f s p99 %.4f s, pure forward p50 %.4f s: overhead %.3fx\n",
                  name.c_str(), key.c_str(), static_cast<long long>(windows), Percentile(srv, 0.5),
                  Percentile(srv, 0.99), Percentile(ref, 0.5), Percentile(srv, 0.5) / Percentile(ref, 0.5));
    }
  }

  // 2. Throughput, batching on and off; 3. peak RSS after 16 clients.
  const int requests = name == "tiny" ? o.requests : std::max(16, o.requests / 4);
  const std::string image = RandomImage(int64_t{window} * window, 9);
  for (const bool batching : {true, false}) {
    ASSIGN_OR_RETURN(std::unique_ptr<Transport> server,
                     Open(o, store, weights, batching ? o.max_batch : 1, batching ? 2 : 0, device));
    RETURN_IF_ERROR(server->Predict(image, window, window));  // warm-up
    for (const int clients : {1, 4, 16}) {
      std::atomic<int> next{0};
      std::atomic<bool> failed{false};
      const auto t0 = Clock::now();
      std::vector<std::thread> threads;
      for (int c = 0; c < clients; ++c) {
        threads.emplace_back([&] {
          while (next.fetch_add(1) < requests) {
            if (!server->Predict(image, window, window).ok()) failed = true;
          }
        });
      }
      for (auto& t : threads) t.join();
      if (failed) return absl::InternalError("a request failed during the throughput run");
      const double wps = requests / Seconds(t0);
      out["throughput"][batching ? "batching" : "no_batching"][std::to_string(clients)] = wps;
      std::printf("%s throughput, %2d clients, batching %s: %.1f windows/s\n", name.c_str(), clients,
                  batching ? "on " : "off", wps);
    }
    if (batching) out["peak_rss_mib_after_16_clients"] = server->PeakRssMib();
  }
  for (const int clients : {1, 4, 16}) {
    const std::string k = std::to_string(clients);
    const double ratio = out["throughput"]["batching"][k].get<double>() / out["throughput"]["no_batching"][k].get<double>();
    out["batching_gain"][k] = ratio;
    std::printf("%s batching on/off, %2d clients: %.3f\n", name.c_str(), clients, ratio);
  }
  std::printf("%s server peak RSS after 16 clients: %.0f MiB\n", name.c_str(),
              out["peak_rss_mib_after_16_clients"].get<double>());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
#ifndef RETINA_SERVE_BENCH_GRPC
  o.transport = "inproc";
#endif
  retina::Cli cli("serve_bench", "The model server: latency against a pure forward, batching gain, peak RSS");
  cli.app().add_option("--models", o.models, "named configs, comma-separated");
  cli.app().add_option("--reps", o.reps, "sequential requests per latency figure (r50: a quarter, at least 3)");
  cli.app().add_option("--requests", o.requests, "one-window requests per throughput figure (r50: a quarter)");
  cli.app().add_option("--threads", o.threads, "intra-op threads (the server's and the reference's)");
  cli.app().add_option("--max-batch", o.max_batch, "windows per forward pass with batching on");
  cli.app().add_option("--transport", o.transport, "grpc (retina-serve on loopback) | inproc (the core here)")
      ->check(CLI::IsMember({"grpc", "inproc"}));
  cli.app().add_option("--device", o.device, "cpu | cuda");
  cli.app().add_option("--json", o.json, "write the figures here");
  if (std::optional<int> rc = cli.Parse(argc, argv)) return *rc;
  // The allocator as retina-serve sets it (serve_main.cc), so the reference
  // forward and the server's differ only by the serving path.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  torch::set_num_threads(o.threads);
  const torch::Device device = o.device == "cuda" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  const fs::path store = fs::temp_directory_path() / retina::UniqueTempName("serve-bench-");
  fs::create_directories(store / "scratch");
  nlohmann::json all = nlohmann::json::array();
  int rc = 0;
  for (const std::string& name : std::vector<std::string>(absl::StrSplit(o.models, ','))) {
    absl::StatusOr<nlohmann::json> r = BenchModel(o, store, name, device);
    if (!r.ok()) {
      std::fprintf(stderr, "serve_bench: %s: %s\n", name.c_str(), std::string(r.status().message()).c_str());
      rc = 1;
      break;
    }
    all.push_back(*r);
  }
  if (!o.json.empty()) std::ofstream(o.json) << all.dump(2) << "\n";
  std::error_code ec;
  fs::remove_all(store, ec);
  return rc;
}
