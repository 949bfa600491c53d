// Helper process for dist_test: trains the tiny TransUNet (dropout off) for
// K SGD steps on a fixed batch and writes the final state dict.
// The default lr (1e-4) keeps the problem well conditioned: at lr 0.05 on
// random labels the same code run with 2 threads instead of 1 already
// drifts by 1e-2 after 3 steps (weight standardisation and BatchNorm over
// 2x2 maps amplify round-off), which would hide real errors.
//   dist_worker OUT.pt STEPS            one process, the whole batch
//   (with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set: this rank's share of the
//    batch, Gloo, SyncBatchNorm and the gradient reducer)
// Exit 0 on success; prints the error otherwise.
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "trainer/dist/communicator.h"
#include "trainer/dist/reducer.h"
#include "trainer/model/batch_norm.h"
#include "trainer/model/state_dict.h"
#include "trainer/model/transunet.h"

using namespace retina::trainer;

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  const int steps = std::atoi(argv[2]);
  at::set_num_threads(std::getenv("RETINA_TEST_THREADS") ? std::atoi(std::getenv("RETINA_TEST_THREADS")) : 1);
  absl::StatusOr<LaunchInfo> launch = DiscoverLaunch({});
  if (!launch.ok()) {
    std::cerr << launch.status() << "\n";
    return 1;
  }
  CommunicatorOptions co;
  if (const char* backend = std::getenv("RETINA_TEST_BACKEND")) co.backend = backend;
  co.timeout = std::chrono::milliseconds(std::getenv("RETINA_TEST_TIMEOUT_MS") ? std::atoi(std::getenv("RETINA_TEST_TIMEOUT_MS")) : 20000);
  absl::StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(*launch, co);
  if (!comm.ok()) {
    std::cerr << comm.status() << "\n";
    return 1;
  }
  TransUNetConfig c = *NamedModelConfig("tiny", 32, 2, ModelHead::kSegmentation);
  c.dropout_rate = 0;
  torch::manual_seed(launch->rank == 0 ? 0 : 99);  // rank 0's weights must win the broadcast
  VisionTransformer model(c);
  Communicator* cm = comm->get();
  auto all_reduce = std::make_shared<SumAllReduce>([cm](torch::Tensor& t) {
    const absl::Status s = cm->AllReduceSum(t, "batch-norm statistics");
    TORCH_CHECK(s.ok(), std::string(s.message()));
  });
  if (cm->size() > 1 || std::getenv("RETINA_TEST_FORCE_SYNC_BN") != nullptr) SetBatchNormAllReduce(*model, all_reduce);
  if (absl::Status s = BroadcastModuleState(*model, *cm); !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  const char* bb = std::getenv("RETINA_TEST_BUCKET_BYTES");
  GradientReducer reducer(*model, cm, bb ? std::atoll(bb) : (1 << 20));  // several buckets by default
  const char* mom = std::getenv("RETINA_TEST_MOMENTUM");
  torch::optim::SGD opt(model->parameters(),
                        torch::optim::SGDOptions(std::getenv("RETINA_TEST_LR") ? std::atof(std::getenv("RETINA_TEST_LR")) : 1e-4)
                            .momentum(mom ? std::atof(mom) : 0.9)
                            .weight_decay(1e-4));
  torch::manual_seed(1234);
  const torch::Tensor x = torch::randn({8, 1, 32, 32});
  const torch::Tensor y = torch::randint(0, 2, {8, 32, 32});
  const int64_t per = 8 / cm->size();
  const torch::Tensor xs = x.slice(0, cm->rank() * per, (cm->rank() + 1) * per);
  const torch::Tensor ys = y.slice(0, cm->rank() * per, (cm->rank() + 1) * per);
  model->train();
  for (int k = 0; k < steps; ++k) {
    opt.zero_grad();
    reducer.PrepareForBackward();
    torch::nn::functional::cross_entropy(model(xs), ys).backward();
    if (absl::Status s = reducer.FinishBackward(); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
    opt.step();
  }
  if (std::getenv("RETINA_TEST_SAVE_ALL_RANKS") != nullptr && cm->rank() > 0) {
    (void)SaveStateDictFile(GetStateDict(*model), std::string(argv[1]) + ".rank" + std::to_string(cm->rank()));
  }
  if (cm->rank() == 0) {
    if (absl::Status s = SaveStateDictFile(GetStateDict(*model), argv[1]); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
    std::printf("buckets %d\n", reducer.num_buckets());
  }
  return 0;
}
