// Pre-training step benchmark (forward, MSE, backward, SGD with momentum and
// weight decay) of a TransUNet on CPU, reported three ways in one run:
//   - images/s and achieved GFLOP/s (175 GFLOP per 224x224 training image,
//     METHOD.md section 1; scaled by (size/224)^2 for other sizes),
//   - the ratio to a large fp32 GEMM measured in the same process (the
//     machine's practical ceiling),
//   - the ratio to the Python reference model's step measured in the same run
//     (tests/trainer/py/step_reference.py), when Python with torch is present.
// --precision bf16 on CPU times the fp32 and the bf16-autocast step in
// interleaved rounds and reports bf16's speed-up over both fp32 steps
// (skipped, saying why, on a CPU without bf16 units).
// Exit status 1 when the C++ step is slower than the Python reference.
//
//   model_step_bench [--model r50-vit-b16] [--batch 4] [--steps 3] [--image-size 224] [--no-python]
//                    [--compare-layouts]   (also time contiguous vs channels_last, interleaved)
//                    [--device cpu|cuda] [--precision fp32|bf16] [--batches 16,32,64] [--json FILE]
// On CUDA (the GPU kit, bench/gpu_check.sh): every batch size of --batches,
// images/s and MFU against a bf16 GEMM measured in the same run and against
// the H100/H200 dense bf16 peak (989 TFLOP/s); --json writes the figures.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include <fstream>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/cli.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/trainer/python_peer.h"
#include "trainer/model/transunet.h"
#include "trainer/runtime/device.h"
#include "trainer/runtime/threads.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

void Sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

// Achieved GFLOP/s of an n x n x n matmul in `dtype` on `device` (best of `reps`).
double GemmGflops(int n, int reps, torch::Device device = torch::kCPU, torch::Dtype dtype = torch::kFloat) {
  const auto o = torch::TensorOptions().device(device).dtype(dtype);
  torch::Tensor a = torch::randn({n, n}, o), b = torch::randn({n, n}, o);
  torch::Tensor c = torch::matmul(a, b);  // warm-up
  Sync(device);
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    c = torch::matmul(a, b);
    Sync(device);
    best = std::min(best, Seconds(t0, Clock::now()));
  }
  return 2.0 * n * n * static_cast<double>(n) / best / 1e9;
}

// The pre-training model, seed 0; nullopt (reason on stderr) for a bad name or size.
std::optional<retina::trainer::VisionTransformer> PretrainModel(const std::string& name, int size) {
  using namespace retina::trainer;
  absl::StatusOr<TransUNetConfig> config = NamedModelConfig(name, size, 1, ModelHead::kReconstruction);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return std::nullopt;
  }
  torch::manual_seed(0);
  return VisionTransformer(*config);
}

constexpr double kPeakBf16Tflops = 989.0;  // H100/H200 SXM dense bf16

// Steps at each batch size on `device_name` in `precision`; figures to stdout
// (as they come, so a cut-off run still reports) and to `json_path`.
int DeviceSteps(const std::string& model_name, int size, int steps, const std::string& device_name,
                const std::string& precision, const std::vector<int>& batches, const std::string& json_path) {
  using namespace retina::trainer;
  absl::StatusOr<DevicePlan> plan = PlanDevice(device_name, precision, 0);
  if (!plan.ok()) {
    std::fprintf(stderr, "%s\n", std::string(plan.status().message()).c_str());
    return 3;
  }
  const torch::Device device = plan->device;
  nlohmann::json out = {{"model", model_name}, {"image_size", size}, {"device", plan->describe},
                        {"precision", precision}, {"steps", steps}};
  const double gemm = GemmGflops(device.is_cuda() ? 8192 : 2048, 5, device,
                                 device.is_cuda() ? torch::kBFloat16 : torch::kFloat);
  out["gemm_tflops"] = gemm / 1e3;
  std::printf("%s GEMM: %.1f TFLOP/s (measured ceiling)\n", device.is_cuda() ? "bf16 8192^3" : "fp32 2048^3",
              gemm / 1e3);
  std::fflush(stdout);
  std::optional<retina::trainer::VisionTransformer> built = PretrainModel(model_name, size);
  if (!built) return 2;
  retina::trainer::VisionTransformer model = *built;
  model->to(device);
  model->SetChannelsLast(true);
  model->train();
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.003).momentum(0.9).weight_decay(1e-4));
  const double gflop_per_image = 175.0 * (size / 224.0) * (size / 224.0);
  if (model_name != "r50-vit-b16") std::printf("(FLOP counted as r50-vit-b16's: ratios mean little for %s)\n", model_name.c_str());
  for (int batch : batches) {
    const auto o = torch::TensorOptions().device(device);
    const torch::Tensor x = torch::randn({batch, 1, size, size}, o), target = torch::randn({batch, 1, size, size}, o);
    auto step = [&] {
      opt.zero_grad();
      torch::Tensor loss;
      {
        Autocast autocast(*plan);
        loss = torch::mse_loss(model(x), target).to(torch::kFloat);
      }
      loss.backward();
      opt.step();
    };
    step();  // warm-up (cuDNN autotuning)
    Sync(device);
    const auto t0 = Clock::now();
    for (int i = 0; i < steps; ++i) step();
    Sync(device);
    const double per_step = Seconds(t0, Clock::now()) / steps;
    const double ips = batch / per_step, tflops = ips * gflop_per_image / 1e3;
    out["batches"].push_back({{"batch", batch}, {"seconds_per_step", per_step}, {"images_per_s", ips},
                              {"tflops", tflops}, {"of_gemm", tflops / (gemm / 1e3)},
                              {"mfu_vs_989", tflops / kPeakBf16Tflops}});
    std::printf("batch %d: %.4f s/step, %.1f images/s, %.1f TFLOP/s = %.3f of the GEMM, MFU %.3f of %.0f TFLOP/s\n",
                batch, per_step, ips, tflops, tflops / (gemm / 1e3), tflops / kPeakBf16Tflops, kPeakBf16Tflops);
    std::fflush(stdout);
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace retina::trainer;
  std::string model_name = "r50-vit-b16";
  int batch = 4, steps = 3, size = 224;
  bool python = true;
  bool compare_layouts = false;
  std::string device_name = "cpu", precision = "fp32", json_path;
  std::vector<int> batches;
  retina::Cli cli("model_step_bench", "Training-step throughput and MFU against a same-run GEMM (and Python's step).");
  CLI::App& app = cli.app();
  app.add_option("--model", model_name, "named model config");
  app.add_option("--batch", batch, "batch size")->check(retina::kPositiveInt);
  app.add_option("--steps", steps, "timed steps")->check(retina::kPositiveInt);
  app.add_option("--image-size", size, "input side")->check(retina::kPositiveInt);
  app.add_flag("!--no-python", python, "skip the Python (torch) reference step");
  app.add_flag("--compare-layouts", compare_layouts, "also time channels-last");
  app.add_option("--device", device_name, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  app.add_option("--precision", precision, "fp32 | bf16 | fp64 | auto")->check(CLI::IsMember({"auto", "fp32", "bf16", "fp64"}));
  app.add_option("--json", json_path, "also write the figures here");
  app.add_option("--batches", batches, "batch sizes to sweep, e.g. 16,32,64")->delimiter(',')->check(retina::kPositiveInt);
  if (std::optional<int> rc = cli.Parse(argc, argv)) return *rc;
  const retina::ThreadPlan threads = ConfigureTorchThreads(1);
  std::printf("threads: %d (%s)\n", threads.threads, threads.reason.c_str());
  const bool cpu_bf16 = device_name == "cpu" && precision == "bf16" && batches.empty();
  if (cpu_bf16) {
    absl::StatusOr<DevicePlan> plan = PlanDevice(device_name, precision, 0);
    if (!plan.ok()) {  // no bf16 units: say so and measure fp32 alone
      std::printf("bf16: not measured: %s\n", std::string(plan.status().message()).c_str());
      return 0;
    }
    std::printf("device: %s\n", plan->describe.c_str());
  }
  if (!cpu_bf16 && (device_name != "cpu" || precision != "fp32" || !batches.empty())) {
    return DeviceSteps(model_name, size, steps, device_name, precision, batches.empty() ? std::vector<int>{batch} : batches,
                       json_path);
  }

  const double gemm = GemmGflops(2048, 5);
  std::printf("fp32 GEMM 2048^3: %.1f GFLOP/s (ceiling)\n", gemm);
  if (cpu_bf16) {
    const double gemm16 = GemmGflops(2048, 5, torch::kCPU, torch::kBFloat16);
    std::printf("bf16 GEMM 2048^3: %.1f GFLOP/s (x%.2f fp32's)\n", gemm16, gemm16 / gemm);
  }

  std::optional<retina::trainer::VisionTransformer> built = PretrainModel(model_name, size);
  if (!built) return 2;
  retina::trainer::VisionTransformer model = *built;
  model->train();
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.003).momentum(0.9).weight_decay(1e-4));
  const torch::Tensor x = torch::randn({batch, 1, size, size});
  const torch::Tensor target = torch::randn({batch, 1, size, size});
  // Seconds per step, one warm-up step first, in the given layout and
  // precision (bf16: autocast on the CPU, fp32 weights and loss).
  auto time_steps = [&](bool channels_last, int n, bool bf16 = false) {
    model->SetChannelsLast(channels_last);
    auto step = [&] {
      opt.zero_grad();
      torch::Tensor out;
      {
        Autocast autocast(torch::kCPU, bf16);
        out = model(x);
      }
      torch::Tensor loss = torch::mse_loss(out.to(torch::kFloat), target);
      loss.backward();
      opt.step();
    };
    step();
    const auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) step();
    return Seconds(t0, Clock::now()) / n;
  };
  if (compare_layouts) {  // interleaved rounds: the machine's drift hits both alike
    double sum[2] = {0, 0};
    for (int round = 0; round < steps; ++round) {
      for (int cl = 0; cl < 2; ++cl) sum[cl] += time_steps(cl == 1, 1);
    }
    std::printf("layout: contiguous %.3f s/step, channels_last %.3f s/step (ratio %.3f)\n",
                sum[0] / steps, sum[1] / steps, sum[1] / sum[0]);
  }
  double per_step = 0, per_step16 = 0;
  if (cpu_bf16) {  // interleaved rounds: the machine's drift hits both alike
    for (int round = 0; round < steps; ++round) {
      per_step += time_steps(/*channels_last=*/true, 1) / steps;
      per_step16 += time_steps(/*channels_last=*/true, 1, /*bf16=*/true) / steps;
    }
  } else {
    per_step = time_steps(/*channels_last=*/true, steps);
  }
  const double images_per_s = batch / per_step;
  const double gflop_per_image = 175.0 * (size / 224.0) * (size / 224.0);
  const double gflops = images_per_s * gflop_per_image;
  std::printf("C++ step (%s, batch %d, %dx%d, channels_last): %.3f s/step, %.2f images/s, %.1f GFLOP/s, "
              "%.2f of GEMM ceiling\n",
              model_name.c_str(), batch, size, size, per_step, images_per_s, gflops, gflops / gemm);
  if (cpu_bf16) {
    std::printf("C++ step bf16 autocast: %.3f s/step, %.2f images/s, %.1f GFLOP/s; bf16 speed-up over fp32 x%.2f\n",
                per_step16, batch / per_step16, batch / per_step16 * gflop_per_image, per_step / per_step16);
  }
  if (!python) return 0;
  const std::string missing = retina::testing::PythonMissing("torch");
  if (!missing.empty()) {
    std::printf("Python reference: skipped (%s)\n", missing.c_str());
    return 0;
  }
  std::string out;
  // The reference runs with the same thread count as the C++ step.
  const int rc = retina::testing::RunPython(
      "step_reference.py", absl::StrCat(model_name, " ", size, " ", batch, " ", steps, " ", threads.threads), &out);
  double py_step = 0;
  const char* field = std::strstr(out.c_str(), "seconds_per_step ");
  if (rc != 0 || field == nullptr || std::sscanf(field, "seconds_per_step %lf", &py_step) != 1) {
    std::fprintf(stderr, "Python reference failed: %s\n", out.c_str());
    return 1;
  }
  std::printf("Python reference step: %.3f s/step (%.2f images/s); C++ speed-up x%.2f\n", py_step,
              batch / py_step, py_step / per_step);
  if (cpu_bf16) std::printf("C++ bf16 step over the Python reference's fp32 step: x%.2f\n", py_step / per_step16);
  return per_step <= py_step * 1.05 ? 0 : 1;  // 5% timing noise allowed
}
