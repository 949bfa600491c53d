#include "trainer/engine/event_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "common/logging.h"

namespace retina::trainer {

absl::StatusOr<std::unique_ptr<EventLog>> EventLog::Open(const std::filesystem::path& store_events,
                                                         const std::string& extra) {
  auto log = std::unique_ptr<EventLog>(new EventLog());
  log->store_fd_.reset(::open(store_events.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!log->store_fd_.ok()) return ErrnoStatus(errno, "open", store_events);
  if (absl::StartsWith(extra, "fd:")) {
    if (!absl::SimpleAtoi(extra.substr(3), &log->extra_fd_)) {
      return absl::InvalidArgumentError("--events: 'fd:N' needs a descriptor number, got '" + extra + "'");
    }
  } else if (!extra.empty()) {
    log->owned_extra_.reset(::open(extra.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (!log->owned_extra_.ok()) return ErrnoStatus(errno, "open --events", extra);
    log->extra_fd_ = log->owned_extra_.get();
  }
  return log;
}

void EventLog::Write(const Event& event) {
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string line = EncodeEvent(event, now) + "\n";
  for (int fd : {store_fd_.get(), extra_fd_}) {
    if (fd >= 0 && ::write(fd, line.data(), line.size()) < 0) {
      RETINA_LOG(Warning) << "event log: write failed: " << std::strerror(errno);
    }
  }
}

}  // namespace retina::trainer
