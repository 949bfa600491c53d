// Watch fan-out: the watchers of each job and the events they are sent.
//
// A watcher gets a SNAPSHOT of the job at once, then every event published
// for it; `last` is true on the event after which nothing more comes (a
// terminal state), and the watcher is then dropped. An event is built once
// and shared by every watcher of the job.
//
// Not thread-safe: called with the coordinator's state lock held, so a
// snapshot and the events after it are in commit order. Sinks are called with
// that lock held and must not block or call back.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "retina/v1/job_service.pb.h"

namespace retina::coordinator {

class WatchHub {
 public:
  using Sink = std::function<void(std::shared_ptr<const retina::v1::JobEvent> event, bool last)>;

  // Sends `job`'s SNAPSHOT to `sink`; returns a handle for Remove, or 0 when
  // the job has ended (the snapshot was the last event).
  int64_t Add(const retina::v1::Job& job, Sink sink);
  void Remove(int64_t handle);
  // An event of `job` (its record as committed) to its watchers.
  void Publish(const retina::v1::Job& job, retina::v1::JobEvent::Type type, const std::string& event_json);

 private:
  struct Watcher {
    std::string job;
    Sink sink;
  };
  std::map<int64_t, Watcher> watchers_;
  std::multimap<std::string, int64_t> by_job_;
  int64_t next_ = 1;
};

bool IsTerminal(retina::v1::JobState state);

}  // namespace retina::coordinator
