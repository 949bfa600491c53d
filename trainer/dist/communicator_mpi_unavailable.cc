// CreateMpiCommunicator for builds without MPI (RETINA_WITH_MPI=OFF or not found).
#include "absl/strings/str_cat.h"
#include "trainer/dist/communicator_mpi.h"

namespace retina::trainer {

absl::StatusOr<std::unique_ptr<Communicator>> CreateMpiCommunicator(const LaunchInfo&, const CommunicatorOptions&) {
  return absl::UnimplementedError(
      "dist.backend mpi: this build has no MPI (rebuild with MPI found, e.g. apt install libopenmpi-dev, "
      "or use dist.backend: gloo with MASTER_ADDR/MASTER_PORT)");
}

}  // namespace retina::trainer
