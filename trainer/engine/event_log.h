// A rank's event records (common/records.h): appended to the store's
// jobs/<id>/events.jsonl and, optionally, to a file or an inherited
// descriptor (the worker's pipe, "fd:N"). One line per event, written with
// one write(2) on O_APPEND descriptors so concurrent writers never
// interleave within a line.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/file_util.h"
#include "common/records.h"

namespace retina::trainer {

class EventLog {
 public:
  // `extra`: "" (store only), a file path, or "fd:N".
  static absl::StatusOr<std::unique_ptr<EventLog>> Open(const std::filesystem::path& store_events,
                                                        const std::string& extra);
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  // A failed write is logged, not returned: events are progress, not state.
  void Write(const Event& event);

 private:
  EventLog() = default;
  UniqueFd store_fd_;
  UniqueFd owned_extra_;  // --events PATH; fd:N belongs to the parent
  int extra_fd_ = -1;
};

}  // namespace retina::trainer
