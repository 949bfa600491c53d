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

// The key a failing rank posts its cause under (first cause wins); ranks
// waiting in the rendezvous or in a collective end their wait with it.
inline constexpr char kGangFailedKey[] = "retina/rendezvous/failed";

// A second client of the gang's store (the monitor's own connection, so that
// its bounded calls never queue behind the communicator's): every operation
// gives up after `timeout`. UNAVAILABLE naming the address when it cannot
// connect.
absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectStoreClient(const LaunchInfo& launch,
                                                                   std::chrono::milliseconds timeout);

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectRendezvous(const LaunchInfo& launch,
                                                                  std::chrono::milliseconds timeout);

}  // namespace retina::trainer
