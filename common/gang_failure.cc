#include "common/gang_failure.h"

#include "absl/strings/str_cat.h"

namespace retina {
namespace {
constexpr absl::string_view kTagStart = "gang failure (";
}  // namespace

absl::string_view GangFailureName(GangFailure cause) {
  switch (cause) {
    case GangFailure::kCollectiveTimeout: return "collective_timeout";
    case GangFailure::kPeerFailed: return "peer_failed";
    case GangFailure::kConnectionLost: return "connection_lost";
    case GangFailure::kRendezvousTimeout: return "rendezvous_timeout";
    case GangFailure::kStoreUnreachable: return "store_unreachable";
    case GangFailure::kPeerUnreachable: return "peer_unreachable";
  }
  return "unknown";
}

std::string GangFailureTag(GangFailure cause) { return absl::StrCat(kTagStart, GangFailureName(cause), "): "); }

std::optional<GangFailure> FindGangFailure(absl::string_view message) {
  const size_t at = message.find(kTagStart);
  if (at == absl::string_view::npos) return std::nullopt;
  const absl::string_view rest = message.substr(at + kTagStart.size());
  for (GangFailure cause : kAllGangFailures) {
    const absl::string_view name = GangFailureName(cause);
    if (rest.size() > name.size() && rest.substr(0, name.size()) == name && rest[name.size()] == ')') return cause;
  }
  return std::nullopt;
}

}  // namespace retina
