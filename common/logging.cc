#include "common/logging.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>

#include "absl/strings/ascii.h"

namespace retina {
namespace {
std::atomic<int> g_rank{-1};
std::atomic<int> g_min_severity{static_cast<int>(LogSeverity::kInfo)};

constexpr char kSeverityLetters[] = {'D', 'I', 'W', 'E', 'F'};
}  // namespace

void SetLogRank(int rank) { g_rank.store(rank); }
void SetMinLogSeverity(LogSeverity severity) {
  g_min_severity.store(static_cast<int>(severity));
}

bool ParseLogSeverity(absl::string_view text, LogSeverity* out) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "debug") *out = LogSeverity::kDebug;
  else if (lower == "info") *out = LogSeverity::kInfo;
  else if (lower == "warning" || lower == "warn") *out = LogSeverity::kWarning;
  else if (lower == "error") *out = LogSeverity::kError;
  else return false;
  return true;
}

LogMessage::LogMessage(LogSeverity severity, const char* file, int line)
    : severity_(severity),
      enabled_(static_cast<int>(severity) >= g_min_severity.load() ||
               severity == LogSeverity::kFatal) {
  if (!enabled_) return;
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const int millis = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() %
      1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[32];
  std::snprintf(stamp, sizeof(stamp), "%02d%02d %02d:%02d:%02d.%03d", tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
  const char* base = std::strrchr(file, '/');
  stream_ << kSeverityLetters[static_cast<int>(severity)] << stamp;
  const int rank = g_rank.load();
  if (rank >= 0) stream_ << " rank=" << rank;
  stream_ << ' ' << (base ? base + 1 : file) << ':' << line << "] ";
}

LogMessage::~LogMessage() {
  if (!enabled_) return;
  stream_ << '\n';
  const std::string text = stream_.str();
  // One write: lines from threads/ranks never interleave mid-line.
  ssize_t ignored = ::write(STDERR_FILENO, text.data(), text.size());
  (void)ignored;
  if (severity_ == LogSeverity::kFatal) std::abort();
}

}  // namespace retina
