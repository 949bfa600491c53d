// Rank-tagged logging to stderr.
//
//   RETINA_LOG(Info) << "loaded " << n << " shards";
//   -> I1125 04:51:02.123 rank=3 store.cc:88] loaded 12 shards
//
// Each message is written with a single write(2), so lines of concurrent
// threads and of ranks sharing a terminal do not interleave. The rank tag is
// the process's identity: set it once, after rank discovery (SetLogRank);
// before that, and in services, no rank is printed. FATAL aborts after
// logging. Thread-safe.
#pragma once

#include <cstddef>
#include <filesystem>
#include <sstream>
#include <string>

#include "absl/strings/string_view.h"

namespace retina {

enum class LogSeverity { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kFatal = 4 };

// Sets the rank printed on every line; -1 removes the tag.
void SetLogRank(int rank);
// Messages below `severity` are dropped (default kInfo).
void SetMinLogSeverity(LogSeverity severity);
// Parses "debug", "info", "warning", "error" (case-insensitive); false if unknown.
bool ParseLogSeverity(absl::string_view text, LogSeverity* out);

class LogMessage {
 public:
  LogMessage(LogSeverity severity, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogSeverity severity_;
  bool enabled_;
  std::ostringstream stream_;
};

// The first line of a process's log that states why it failed: an ERROR or
// FATAL line of this format ("E1125 04:51:02.123 ...") or the refusal a
// program's main prints last ("<program>: <message>", common/cli.h),
// whichever comes first. Bytes outside printable ASCII are escaped (\xNN)
// and the line is cut to `max_bytes` ("..." marks the cut), so it can go
// into a job's message as is; only the first `scan_bytes` of the file are
// read. "" when there is no such line or no file.
std::string FirstErrorLine(const std::filesystem::path& log, absl::string_view program, size_t max_bytes = 512,
                           size_t scan_bytes = size_t{1} << 20);

}  // namespace retina

#define RETINA_LOG(severity) \
  ::retina::LogMessage(::retina::LogSeverity::k##severity, __FILE__, __LINE__).stream()
