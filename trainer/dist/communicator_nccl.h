// The NCCL backend for CUDA tensors (built when RETINA_WITH_NCCL finds NCCL;
// compiled and linked on machines without a GPU, run only on GPU machines).
//
// Rendezvous: rank 0 creates the NCCL unique id and publishes it in the TCP
// store at MASTER_ADDR:MASTER_PORT (the same store Gloo uses). Collectives
// run on a communicator-owned stream, ordered after the work already queued
// on the legacy default stream (event + wait), and are awaited by polling a
// completion event against the deadline; a timeout or an asynchronous NCCL
// error aborts the communicator (ncclCommAbort) before it is reported.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "trainer/dist/communicator.h"

namespace retina::trainer {

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const LaunchInfo& launch,
                                                                     const CommunicatorOptions& options);

}  // namespace retina::trainer
