// Bounds on what one request may ask of the coordinator (docs/service.md
// "Limits"): every field a client or worker sends is checked against these
// before any work, with INVALID_ARGUMENT naming the field and the limit, and
// no error message echoes more than kEchoChars of a client's string.
#pragma once

#include <cstddef>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace retina::coordinator::limits {

inline constexpr size_t kConfigYamlBytes = 64 << 10;   // spec.config_yaml
inline constexpr size_t kNameChars = 256;              // spec.name
inline constexpr int kLabels = 32;                     // spec.labels entries
inline constexpr size_t kLabelKeyChars = 63;
inline constexpr size_t kLabelValueChars = 256;
inline constexpr size_t kRequestIdChars = 128;
inline constexpr size_t kIdChars = 128;                // job and worker ids in requests
inline constexpr int kPriority = 1000;                 // spec.priority in [-kPriority, kPriority]
inline constexpr int kWorldSize = 4096;
inline constexpr int kSlotsPerRank = 1024;
inline constexpr int kMaxRestarts = 1000;
inline constexpr size_t kFilterChars = 1024;           // ListJobs filter
inline constexpr int kPageSize = 1000;                 // ListJobs page_size
// A ListJobs response stops adding jobs before it would exceed this (gRPC
// clients accept 4 MiB by default); the rest follows via next_page_token.
inline constexpr size_t kListResponseBytes = 3 << 20;
inline constexpr size_t kHostChars = 256;              // worker host, metrics address
inline constexpr size_t kVersionChars = 64;
inline constexpr int kWorkerSlots = 4096;
inline constexpr int kEventsPerReport = 1000;          // ReportEvents events_json lines
inline constexpr size_t kEventBytes = 64 << 10;        // one events_json line
inline constexpr size_t kEchoChars = 64;               // of a client string in an error message

// `s` for an error message: at most kEchoChars, with its full length when cut.
inline std::string Echo(absl::string_view s) {
  if (s.size() <= kEchoChars) return std::string(s);
  return absl::StrCat(s.substr(0, kEchoChars), "... (", s.size(), " bytes)");
}

}  // namespace retina::coordinator::limits
