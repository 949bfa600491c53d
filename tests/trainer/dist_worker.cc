// Helper process for dist_test: trains the tiny TransUNet (dropout off) for
// K SGD steps on a fixed batch and writes the final state dict.
// The default lr (1e-4) keeps the problem well conditioned: at lr 0.05 on
// random labels the same code run with 2 threads instead of 1 already
// drifts by 1e-2 after 3 steps (weight standardisation and BatchNorm over
// 2x2 maps amplify round-off), which would hide real errors.
//   dist_worker OUT.pt STEPS            one process, the whole batch
//   (with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set: this rank's share of the
//    batch, Gloo, SyncBatchNorm and the gradient reducer)
// Environment: RETINA_TEST_DTYPE=double runs model, batch and every
// collective in float64 (the equivalence then holds to round-off of ~1e-15,
// whatever the CPU); RETINA_TEST_THREADS (default 1); RETINA_TEST_FAULT
// breaks the data-parallel algorithm on purpose, to prove the test bites:
//   sum          gradients summed over ranks, not averaged
//   skip-bucket  gradient bucket 0 is never all-reduced (stays local)
//   no-sync-bn   BatchNorm statistics stay per rank
// Exit 0 on success; prints the error otherwise.
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "trainer/dist/communicator.h"
#include "trainer/dist/reducer.h"
#include "trainer/model/batch_norm.h"
#include "trainer/model/weights/state_dict.h"
#include "trainer/model/transunet.h"

using namespace retina::trainer;

namespace {

class Done final : public PendingCollective {
 public:
  absl::Status Wait() override { return absl::OkStatus(); }
};

// Forwards everything but the all-reduce of one gradient bucket.
class SkipBucket final : public Communicator {
 public:
  SkipBucket(Communicator* inner, std::string skipped) : inner_(inner), skipped_(std::move(skipped)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  absl::StatusOr<std::unique_ptr<PendingCollective>> AllReduceSumAsync(torch::Tensor tensor,
                                                                       const std::string& what) override {
    if (what == skipped_) return std::unique_ptr<PendingCollective>(new Done());
    return inner_->AllReduceSumAsync(tensor, what);
  }
  absl::Status Broadcast(torch::Tensor tensor, int root, const std::string& what) override {
    return inner_->Broadcast(tensor, root, what);
  }
  absl::Status Barrier(const std::string& what) override { return inner_->Barrier(what); }

 private:
  Communicator* inner_;
  std::string skipped_;
};

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

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
  const std::string fault = Env("RETINA_TEST_FAULT");
  if (!fault.empty() && fault != "sum" && fault != "skip-bucket" && fault != "no-sync-bn") {
    std::cerr << "RETINA_TEST_FAULT: unknown fault '" << fault << "'\n";
    return 2;
  }
  const torch::ScalarType dtype = Env("RETINA_TEST_DTYPE") == "double" ? torch::kDouble : torch::kFloat;
  TransUNetConfig c = *NamedModelConfig("tiny", 32, 2, ModelHead::kSegmentation);
  c.dropout_rate = 0;
  torch::manual_seed(launch->rank == 0 ? 0 : 99);  // rank 0's weights must win the broadcast
  VisionTransformer model(c);
  model->to(dtype);
  SkipBucket skipping(comm->get(), "gradient bucket 0");
  Communicator* cm = fault == "skip-bucket" ? &skipping : comm->get();
  auto all_reduce = std::make_shared<SumAllReduce>([cm](torch::Tensor& t) {
    const absl::Status s = cm->AllReduceSum(t, "batch-norm statistics");
    TORCH_CHECK(s.ok(), std::string(s.message()));
  });
  if ((cm->size() > 1 || std::getenv("RETINA_TEST_FORCE_SYNC_BN") != nullptr) && fault != "no-sync-bn") {
    SetBatchNormAllReduce(*model, all_reduce);
  }
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
  const torch::Tensor x = torch::randn({8, 1, 32, 32}, torch::kDouble).to(dtype);
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
    if (fault == "sum") {
      torch::NoGradGuard no_grad;
      for (torch::Tensor& p : model->parameters()) {
        if (p.grad().defined()) p.mutable_grad().mul_(cm->size());
      }
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
