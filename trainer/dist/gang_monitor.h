// What the ranks of a gang know about one another while they run, through
// the rendezvous store (rank 0's TCPStore, the one the communicator formed
// the group with), so that a collective that does not complete says which
// rank did not arrive and why, and one rank's failure ends every rank's wait
// with its cause instead of the collective timeout.
//
//   retina/gang/progress/<rank>  the rank's host and its newest collective
//                                (flight_recorder.h RankProgress), published
//                                by the monitor's thread when it changes
//                                (at most every kPublishEvery)
//   retina/rendezvous/failed     the first failing rank's cause (rendezvous.h
//                                kGangFailedKey); the thread polls it
//   retina/gang/failure_seen     ranks that read it (rank 0, whose process
//                                serves the store, waits a moment for them
//                                before it exits)
//
// The monitor has its own store connection, each call bounded by
// kStoreCallTimeout, so a store that does not answer (rank 0's host cut off)
// delays a diagnosis by seconds, never by the collective timeout. Costs: one
// store call per rank per kPublishEvery for the failure poll, one per change
// of progress; nothing on the collective's own path but a mutex.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "trainer/dist/flight_recorder.h"
#include "trainer/dist/launch_env.h"

namespace retina::trainer {

inline constexpr std::chrono::milliseconds kPublishEvery{250};
inline constexpr std::chrono::milliseconds kStoreCallTimeout{5000};

class GangMonitor {
 public:
  // Connects its client, publishes this rank's host, starts the thread.
  static absl::StatusOr<std::unique_ptr<GangMonitor>> Start(const LaunchInfo& launch);
  ~GangMonitor();
  GangMonitor(const GangMonitor&) = delete;
  GangMonitor& operator=(const GangMonitor&) = delete;

  FlightRecorder& recorder() { return recorder_; }
  const std::string& host() const { return host_; }

  // Another rank's posted cause ("" while none): read from memory, kept
  // fresh by the thread.
  std::string PeerFailure() const;
  // Posts this rank's failure for the others (the first posted wins); rank
  // 0, whose process serves the store, then waits up to `linger` for the
  // other ranks to have read it.
  void PostFailure(const std::string& cause, std::chrono::milliseconds linger = std::chrono::seconds(3));
  // The error for collective `seq` that did not complete after `waited_s`:
  // DEADLINE_EXCEEDED with DescribeHang when it timed out; ABORTED when a
  // peer failed (its posted cause) or its connection broke (`detail`, the
  // backend's words). Starts with the cause's GangFailureTag. Logs the
  // flight recorder.
  absl::Status Explain(uint64_t seq, bool timed_out, const std::string& detail, double waited_s);

 private:
  GangMonitor(const LaunchInfo& launch, c10::intrusive_ptr<c10d::Store> store);
  void Loop();
  HangFacts Gather(const CollectiveRecord& stuck, double waited_s);

  const LaunchInfo launch_;
  const std::string host_;
  c10::intrusive_ptr<c10d::Store> store_;  // the thread's and Explain's; calls serialise inside TCPStore
  FlightRecorder recorder_;
  mutable absl::Mutex mu_;
  std::string peer_failure_ ABSL_GUARDED_BY(mu_);
  bool posted_ ABSL_GUARDED_BY(mu_) = false;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace retina::trainer
