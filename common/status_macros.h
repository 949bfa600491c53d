// RETURN_IF_ERROR / ASSIGN_OR_RETURN over absl::Status and absl::StatusOr.
//
// Debian's Abseil (20220623) ships neither, so they are defined once, here.
//
//   RETURN_IF_ERROR(WriteFile(path, data));
//   ASSIGN_OR_RETURN(std::string text, ReadFile(path));
//   ASSIGN_OR_RETURN(auto manifest, ReadManifest(dir), "reading " + dir.string());
//
// The optional third argument of ASSIGN_OR_RETURN (and the second of
// RETURN_IF_ERROR) is a context string prepended to the error message, so
// errors accumulate "where" information on their way up.
#pragma once

#include <string>
#include "absl/strings/string_view.h"
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace retina {

// Returns `status` with "context: " prepended to its message (same code).
// An OK status is returned unchanged.
absl::Status Annotate(const absl::Status& status, absl::string_view context);

namespace status_internal {
inline const absl::Status& AsStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& AsStatus(const absl::StatusOr<T>& s) { return s.status(); }
inline absl::Status WithContext(absl::Status s) { return s; }
inline absl::Status WithContext(absl::Status s, absl::string_view context) {
  return Annotate(s, context);
}
}  // namespace status_internal
}  // namespace retina

#define RETINA_STATUS_CONCAT_INNER_(a, b) a##b
#define RETINA_STATUS_CONCAT_(a, b) RETINA_STATUS_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr, ...)                                              \
  do {                                                                          \
    const ::absl::Status _retina_status =                                       \
        ::retina::status_internal::AsStatus(expr);                              \
    if (!_retina_status.ok())                                                   \
      return ::retina::status_internal::WithContext(_retina_status               \
                                                    __VA_OPT__(, ) __VA_ARGS__); \
  } while (false)

#define ASSIGN_OR_RETURN(lhs, rexpr, ...)                                      \
  RETINA_ASSIGN_OR_RETURN_IMPL_(                                               \
      RETINA_STATUS_CONCAT_(_retina_status_or_, __LINE__), lhs, rexpr          \
      __VA_OPT__(, ) __VA_ARGS__)

#define RETINA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr, ...)                    \
  auto tmp = (rexpr);                                                          \
  if (!tmp.ok())                                                               \
    return ::retina::status_internal::WithContext(std::move(tmp).status()      \
                                                  __VA_OPT__(, ) __VA_ARGS__); \
  lhs = std::move(tmp).value()
