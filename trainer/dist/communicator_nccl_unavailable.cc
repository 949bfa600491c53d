// CreateNcclCommunicator for builds without NCCL (RETINA_WITH_NCCL=OFF or not found).
#include "trainer/dist/communicator_nccl.h"

namespace retina::trainer {

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const LaunchInfo&, const CommunicatorOptions&) {
  return absl::UnimplementedError(
      "dist.backend nccl: this build has no NCCL (configure with NCCL_HOME/CUDA_HOME pointing at it)");
}

}  // namespace retina::trainer
