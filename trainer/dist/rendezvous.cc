#include "trainer/dist/rendezvous.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/gang_failure.h"
#include "common/logging.h"
#include "trainer/torch_compat.h"

namespace retina::trainer {
namespace {

constexpr char kArrived[] = "retina/rendezvous/arrived";
constexpr const char* kFailed = kGangFailedKey;

std::string Message(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

std::string Elapsed(std::chrono::steady_clock::time_point since, std::chrono::milliseconds timeout) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "after %.1f s (timeout %.0f s)", Seconds(since), timeout.count() / 1000.0);
  return buf;
}

c10::intrusive_ptr<c10d::Store> Connect(const LaunchInfo& launch, bool server, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(launch.master_port);
  so.isServer = server;
  so.numWorkers = static_cast<std::size_t>(launch.world_size);
  so.waitWorkers = false;  // our own arrival barrier below says who is missing
  so.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, so);
  } catch (const std::exception& e) {
    // A libtorch built without libuv (Debian's 2.6) refuses its own default;
    // the classic backend speaks the same protocol to every peer.
    if (!HasLibUvSwitch<c10d::TCPStoreOptions>() || !IsLibUvUnavailable(Message(e))) throw;
    store = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, WithoutLibUv(so));
  }
  if (launch.agent_store) {
    store = c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("/worker/attempt_", launch.agent_restart), store);
  }
  return store;
}

}  // namespace

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectStoreClient(const LaunchInfo& launch,
                                                                   std::chrono::milliseconds timeout) {
  try {
    return Connect(launch, /*server=*/false, timeout);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", launch.rank, ": cannot reach the store at ", launch.master_addr,
                                               ":", launch.master_port, ": ", Message(e)));
  }
}

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> ConnectRendezvous(const LaunchInfo& launch,
                                                                  std::chrono::milliseconds timeout) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string where = absl::StrCat("rank ", launch.rank, ": rendezvous at ", launch.master_addr, ":", launch.master_port);
  const bool server = launch.rank == 0 && !launch.agent_store;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = Connect(launch, server, timeout);
  } catch (const std::exception& e) {
    const std::string cause = Message(e);
    if (server && (absl::StrContains(cause, "already in use") || absl::StrContains(cause, "EADDRINUSE"))) {
      const std::string text = absl::StrCat(
          where, ": cannot serve the store, the port is taken (another job's store, or a torchrun agent: torchrun "
                 "sets TORCHELASTIC_USE_AGENT_STORE=True; else choose another MASTER_PORT), ",
          Elapsed(t0, timeout));
      try {  // tell the ranks that reached whoever holds the port
        Connect(launch, false, std::chrono::milliseconds(2000))->set(kFailed, std::vector<uint8_t>(text.begin(), text.end()));
      } catch (const std::exception&) {
      }
      return absl::UnavailableError(text);
    }
    return absl::UnavailableError(absl::StrCat(server ? "" : GangFailureTag(GangFailure::kStoreUnreachable), where, ": ",
                                               server ? "cannot serve" : "cannot reach", " the store ",
                                               Elapsed(t0, timeout), ": ", cause));
  }
  try {
    store->add(kArrived, 1);
    auto last_log = std::chrono::steady_clock::now();
    // Polls back off from 20 ms to 500 ms: with thousands of ranks rank 0's
    // store must not answer tens of thousands of polls a second.
    auto poll = std::chrono::milliseconds(20);
    while (true) {
      if (store->check({kFailed})) {
        const std::vector<uint8_t> why = store->get(kFailed);
        return absl::AbortedError(absl::StrCat(GangFailureTag(GangFailure::kPeerFailed), where, ": another rank failed ", Elapsed(t0, timeout), ": ",
                                               std::string(why.begin(), why.end())));
      }
      const int64_t arrived = store->add(kArrived, 0);
      if (arrived >= launch.world_size) break;
      if (std::chrono::steady_clock::now() - t0 > timeout) {
        return absl::DeadlineExceededError(absl::StrCat(GangFailureTag(GangFailure::kRendezvousTimeout), where, ": ", arrived, " of ", launch.world_size,
                                                        " ranks arrived ", Elapsed(t0, timeout)));
      }
      if (std::chrono::steady_clock::now() - last_log > std::chrono::seconds(30)) {
        RETINA_LOG(Warning) << where << ": waiting, " << arrived << " of " << launch.world_size << " ranks arrived after "
                            << static_cast<int>(Seconds(t0)) << " s";
        last_log = std::chrono::steady_clock::now();
      }
      std::this_thread::sleep_for(poll);
      poll = std::min(poll * 2, std::chrono::milliseconds(500));
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(GangFailureTag(GangFailure::kStoreUnreachable), where, ": the store failed ", Elapsed(t0, timeout), ": ", Message(e)));
  }
  return store;
}

}  // namespace retina::trainer
