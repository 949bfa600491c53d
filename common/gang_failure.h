// Why a gang of ranks failed together: the one contract between a rank's
// error message and the coordinator's count of causes
// (retina_gang_failures_total{cause}).
//
// A rank whose failure is the gang's (a collective that timed out, a peer
// that failed, a connection that broke, a rendezvous that did not complete)
// starts its error message with GangFailureTag(cause): "gang failure
// (collective_timeout): ...". The worker hands the coordinator the failing
// rank's first error line (common/logging.h FirstErrorLine), where
// FindGangFailure reads the cause back. A rank that fails for a cause of its
// own (bad data, a bad file) carries no tag: the gang is not the cause.
#pragma once

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace retina {

enum class GangFailure {
  kCollectiveTimeout,   // a collective did not complete in runtime.collective_timeout_s (a rank never arrived, or data did not flow)
  kPeerFailed,          // another rank failed first and posted its cause
  kConnectionLost,      // a peer's connection closed mid-collective (its process or host died)
  kRendezvousTimeout,   // not every rank reached the rendezvous in time
  kStoreUnreachable,    // the rendezvous store (rank 0's host) could not be reached
  kPeerUnreachable,     // a rank could not connect to a peer's advertised address (a wrong interface or address)
};

inline constexpr GangFailure kAllGangFailures[] = {GangFailure::kCollectiveTimeout, GangFailure::kPeerFailed,
                                                   GangFailure::kConnectionLost, GangFailure::kRendezvousTimeout,
                                                   GangFailure::kStoreUnreachable, GangFailure::kPeerUnreachable};

// "collective_timeout", "peer_failed", ... (the Prometheus label value).
absl::string_view GangFailureName(GangFailure cause);
// "gang failure (collective_timeout): " (how a message starts).
std::string GangFailureTag(GangFailure cause);
// The cause a message carries (its first tag), if any.
std::optional<GangFailure> FindGangFailure(absl::string_view message);

}  // namespace retina
