// trainer/torch_compat.h on the libtorch this was built against (1.13 on
// Debian 12, 2.6 in the Debian 13 platform stage): each shim does on this
// version what its contract says, and the bf16 precision plan built on it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "trainer/dist/rendezvous.h"
#include "trainer/model/model_config.h"
#include "trainer/model/transunet.h"
#include "trainer/runtime/device.h"
#include "trainer/torch_compat.h"

namespace retina::trainer {
namespace {

using ::testing::HasSubstr;

TEST(TorchCompat, VersionStringIsTheHeadersVersion) {
  EXPECT_THAT(TorchVersionString(), ::testing::StartsWith(absl::StrCat(TORCH_VERSION_MAJOR, ".", TORCH_VERSION_MINOR)));
  std::printf("libtorch %s\n", TorchVersionString().c_str());
}

TEST(TorchCompat, OptimizerStateKeyFindsEachParametersMomentum) {
  torch::nn::Linear a(3, 2), b(2, 1);
  std::vector<torch::Tensor> params = a->parameters();
  for (const torch::Tensor& p : b->parameters()) params.push_back(p);
  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.1).momentum(0.9));
  b(a(torch::ones({4, 3}))).sum().backward();
  opt.step();
  ASSERT_EQ(opt.state().size(), params.size());
  for (const torch::Tensor& p : params) {
    auto it = opt.state().find(OptimizerStateKey(opt, p));
    ASSERT_NE(it, opt.state().end());
    const auto& s = static_cast<const torch::optim::SGDParamState&>(*it->second);
    // The first momentum step stores the gradient itself.
    EXPECT_TRUE(torch::equal(s.momentum_buffer(), p.grad()));
  }
  const torch::Tensor stranger = torch::zeros({2});
  EXPECT_EQ(opt.state().find(OptimizerStateKey(opt, stranger)), opt.state().end());
}

TEST(TorchCompat, AutocastSwitchesOneDeviceTypeAndItsDtype) {
  ASSERT_FALSE(AutocastEnabled(c10::DeviceType::CPU));
  SetAutocast(c10::DeviceType::CPU, true, at::kBFloat16);
  EXPECT_TRUE(AutocastEnabled(c10::DeviceType::CPU));
  EXPECT_FALSE(AutocastEnabled(c10::DeviceType::CUDA));  // the other device type untouched
  EXPECT_EQ(AutocastDtype(c10::DeviceType::CPU), at::kBFloat16);
  // CPU autocast runs matmul in its lower precision.
  EXPECT_EQ(torch::mm(torch::ones({2, 2}), torch::ones({2, 2})).scalar_type(), at::kBFloat16);
  SetAutocast(c10::DeviceType::CPU, false);
  EXPECT_FALSE(AutocastEnabled(c10::DeviceType::CPU));
  EXPECT_EQ(torch::mm(torch::ones({2, 2}), torch::ones({2, 2})).scalar_type(), at::kFloat);
  SetAutocast(c10::DeviceType::CUDA, true);  // flags only: no device is needed
  EXPECT_TRUE(AutocastEnabled(c10::DeviceType::CUDA));
  EXPECT_FALSE(AutocastEnabled(c10::DeviceType::CPU));
  SetAutocast(c10::DeviceType::CUDA, false);
}

TEST(TorchCompat, AutocastScopeNestsAndRestores) {
  {
    Autocast outer(c10::DeviceType::CPU, true);
    EXPECT_TRUE(AutocastEnabled(c10::DeviceType::CPU));
    {
      Autocast off(c10::DeviceType::CPU, false);  // disabled: a no-op
      EXPECT_TRUE(AutocastEnabled(c10::DeviceType::CPU));
      Autocast inner(c10::DeviceType::CPU, true);
      EXPECT_TRUE(AutocastEnabled(c10::DeviceType::CPU));
    }
    EXPECT_TRUE(AutocastEnabled(c10::DeviceType::CPU));  // the inner scope restored the outer's state
  }
  EXPECT_FALSE(AutocastEnabled(c10::DeviceType::CPU));
}

TEST(TorchCompat, TcpStoreWithoutLibUvServesOnEveryVersion) {
  c10d::TCPStoreOptions o;
  o.port = 0;  // any free port
  o.isServer = true;
  o.waitWorkers = false;
  o.timeout = std::chrono::seconds(10);
  const c10d::TCPStoreOptions plain = WithoutLibUv(o);
  if constexpr (HasLibUvSwitch<c10d::TCPStoreOptions>()) {
    EXPECT_TRUE(RETINA_TORCH_VERSION_AT_LEAST(2, 2));
  } else {
    EXPECT_FALSE(RETINA_TORCH_VERSION_AT_LEAST(2, 4));  // 2.4 made libuv the default: the switch must be seen
  }
  c10d::TCPStore server("127.0.0.1", plain);
  server.set("k", std::vector<uint8_t>{1, 2, 3});
  c10d::TCPStoreOptions c = WithoutLibUv(o);
  c.isServer = false;
  c.port = server.getPort();
  c10d::TCPStore client("127.0.0.1", c);
  EXPECT_EQ(client.get("k"), (std::vector<uint8_t>{1, 2, 3}));
  // The refusal of a libtorch built without libuv is recognised as such.
  EXPECT_TRUE(IsLibUvUnavailable("use_libuv was requested but PyTorch was build without libuv support"));
  EXPECT_FALSE(IsLibUvUnavailable("Address already in use"));
}

TEST(TorchCompat, RendezvousServesWhateverTheStoreBackend) {
  // Rank 0 of a world of one serves the store with libtorch's defaults,
  // falling back to the classic server where libuv is missing (Debian's 2.6).
  LaunchInfo launch;
  c10d::TCPStoreOptions probe;
  probe.port = 0;
  probe.isServer = true;
  probe.waitWorkers = false;
  launch.master_port = c10d::TCPStore("127.0.0.1", WithoutLibUv(probe)).getPort();  // free once this store is gone
  absl::StatusOr<c10::intrusive_ptr<c10d::Store>> store = ConnectRendezvous(launch, std::chrono::seconds(20));
  ASSERT_TRUE(store.ok()) << store.status();
}

TEST(CpuBf16, UnitsFromTheFlagsLine) {
  EXPECT_FALSE(ParseCpuBf16Units("processor : 0\nflags : fpu avx2 avx512f\n").any());
  const CpuBf16Units zen4 = ParseCpuBf16Units("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n");
  EXPECT_TRUE(zen4.avx512_bf16);
  EXPECT_FALSE(zen4.amx_bf16);
  EXPECT_EQ(zen4.describe(), "avx512_bf16");
  const CpuBf16Units spr = ParseCpuBf16Units("flags : avx512_bf16 amx_bf16 amx_tile amx_int8\n");
  EXPECT_EQ(spr.describe(), "avx512_bf16 amx_bf16");
  EXPECT_FALSE(ParseCpuBf16Units("flags : avx512bf16_like\n").any());  // whole words only
  std::printf("this CPU's bf16 units: %s\n", DetectCpuBf16Units().describe().c_str());
}

TEST(CpuBf16, PlanTakesBf16OnlyWhereTheUnitsAre) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "the CPU plan is what this checks; CUDA is present here";
  CpuBf16Units none, units;
  units.avx512_bf16 = true;
  absl::StatusOr<DevicePlan> p = PlanDevice(DeviceKind::kCpu, Precision::kBf16, 0, units);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->bf16);
  EXPECT_EQ(p->dtype, torch::kFloat);  // fp32 master weights
  EXPECT_THAT(p->describe, HasSubstr("bf16 autocast (avx512_bf16)"));
  p = PlanDevice(DeviceKind::kCpu, Precision::kBf16, 0, none);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(p.status().message(), HasSubstr("runtime.precision"));
  // auto keeps fp32 on every CPU, and says why.
  for (const CpuBf16Units& u : {none, units}) {
    p = PlanDevice(DeviceKind::kAuto, Precision::kAuto, 0, u);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_FALSE(p->bf16);
    EXPECT_THAT(p->describe, HasSubstr("auto keeps fp32 on CPU"));
  }
  EXPECT_EQ(InferencePrecision(Precision::kAuto), Precision::kFp32);
  EXPECT_EQ(InferencePrecision(Precision::kBf16), Precision::kBf16);
  EXPECT_EQ(InferencePrecision(Precision::kFp64), Precision::kFp32);
}

}  // namespace
}  // namespace retina::trainer
