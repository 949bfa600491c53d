// The rendezvous store shared by the Gloo and NCCL backends: c10d's TCPStore
// at MASTER_ADDR:MASTER_PORT, served by rank 0, waiting for every rank up to
// the timeout. Throws (c10::Error) like c10d does; callers convert.
#pragma once

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>

#include "trainer/dist/launch_env.h"

namespace retina::trainer {

inline c10::intrusive_ptr<c10d::TCPStore> ConnectRendezvous(const LaunchInfo& launch,
                                                            std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(launch.master_port);
  so.isServer = launch.rank == 0;
  so.numWorkers = static_cast<std::size_t>(launch.world_size);
  so.timeout = timeout;
  return c10::make_intrusive<c10d::TCPStore>(launch.master_addr, so);
}

}  // namespace retina::trainer
