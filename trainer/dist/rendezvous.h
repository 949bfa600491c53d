// The rendezvous store shared by the Gloo and NCCL backends: c10d's TCPStore
// at MASTER_ADDR:MASTER_PORT.
//
// Who serves it: rank 0, unless a torchrun agent already does
// (TORCHELASTIC_USE_AGENT_STORE=True: every rank connects as a client, under
// the agent's per-restart key prefix "/worker/attempt_<k>", as PyTorch's own
// env:// rendezvous does).
//
// Protocol: each rank adds itself to "retina/rendezvous/arrived" and waits
// until all `world_size` have, polling a failure key so that one rank's
// failure ends every rank's wait at once with its cause. Rank 0 failing to
// serve (the port is taken: another job, or a torchrun agent without the
// agent flag) connects as a client where it can and posts the cause there.
// Errors name the rank, the address and the true elapsed time:
// UNAVAILABLE (cannot serve/connect), DEADLINE_EXCEEDED (ranks missing at the
// timeout, with how many arrived), ABORTED (another rank failed).
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

#include "absl/status/statusor.h"
#include "trainer/dist/launch_env.h"

namespace retina::trainer {

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectRendezvous(const LaunchInfo& launch,
                                                                  std::chrono::milliseconds timeout);

}  // namespace retina::trainer
