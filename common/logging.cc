#include "common/logging.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

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

std::string FirstErrorLine(const std::filesystem::path& log, absl::string_view program, size_t max_bytes,
                           size_t scan_bytes) {
  std::ifstream in(log, std::ios::binary);
  if (!in) return "";
  std::string text(scan_bytes, '\0');
  in.read(text.data(), static_cast<std::streamsize>(scan_bytes));
  text.resize(static_cast<size_t>(in.gcount()));
  const std::string refusal = absl::StrCat(program, ": ");
  auto is_error = [&](absl::string_view line) {
    if (!program.empty() && absl::StartsWith(line, refusal)) return true;
    if (line.size() < 6 || (line[0] != 'E' && line[0] != 'F') || line[5] != ' ') return false;
    for (size_t i = 1; i < 5; ++i) {
      if (!absl::ascii_isdigit(static_cast<unsigned char>(line[i]))) return false;
    }
    return true;
  };
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!is_error(line)) continue;
    std::string out;
    for (const char c : line) {
      const auto u = static_cast<unsigned char>(c);
      if (u >= 0x20 && u < 0x7f) {
        out += c;
      } else {
        out += absl::StrFormat("\\x%02x", u);
      }
      if (out.size() > max_bytes) break;
    }
    if (out.size() > max_bytes) {
      out.resize(std::max<size_t>(max_bytes, 3) - 3);
      out += "...";
    }
    return out;
  }
  return "";
}

}  // namespace retina
