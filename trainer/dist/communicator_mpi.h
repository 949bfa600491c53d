// The MPI backend (CPU tensors; ranks started by mpirun/srun). Collectives
// are MPI non-blocking calls polled against the deadline, so a dead or
// stalled peer yields DEADLINE_EXCEEDED naming the rank and operation (the
// process must then exit: MPI cannot cancel a started collective).
// Built when RETINA_WITH_MPI finds MPI; otherwise the factory says so.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "trainer/dist/communicator.h"

namespace retina::trainer {

absl::StatusOr<std::unique_ptr<Communicator>> CreateMpiCommunicator(const LaunchInfo& launch,
                                                                    const CommunicatorOptions& options);

}  // namespace retina::trainer
