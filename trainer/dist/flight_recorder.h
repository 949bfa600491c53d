// A rank's flight recorder (after PyTorch's c10d FlightRecorder): a ring of
// its most recent collectives, and what each rank publishes about its
// progress so that a collective that does not complete names the rank that
// never arrived at it, on which host, instead of a bare timeout.
//
// Collectives are numbered 1, 2, ... in issue order; every rank issues the
// same collectives in the same order (communicator.h), so "#1204" names the
// same operation on every rank. Pure bookkeeping: no libtorch, no store
// (gang_monitor.h moves RankProgress through the rendezvous store).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace retina::trainer {

struct CollectiveRecord {
  uint64_t seq = 0;       // 1, 2, ... (0: none)
  std::string kind;       // all-reduce | broadcast | barrier
  std::string what;       // the caller's name for it: "gradient bucket 7"
  int64_t bytes = 0;
  double started_s = 0;   // seconds since the recorder began
  std::optional<double> ended_s;
  bool failed = false;
};

// "all-reduce #1204 (gradient bucket 7)".
std::string CollectiveName(const CollectiveRecord& r);

// Thread-safe: the training thread records, the monitor's thread reads.
class FlightRecorder {
 public:
  explicit FlightRecorder(size_t capacity = 64);
  // A collective is issued; returns its sequence number.
  uint64_t Begin(std::string kind, std::string what, int64_t bytes);
  // It completed (ok) or failed.
  void End(uint64_t seq, bool ok);
  std::optional<CollectiveRecord> Find(uint64_t seq) const;
  // The newest collective (nullopt before the first).
  std::optional<CollectiveRecord> Last() const;
  // Changes whenever a collective begins or ends.
  uint64_t version() const;
  // The ring, oldest first, one line per collective (a rank's log on failure).
  std::string Dump() const;

 private:
  double Now() const;
  const size_t capacity_;
  const int64_t origin_ns_;
  mutable absl::Mutex mu_;
  std::deque<CollectiveRecord> ring_ ABSL_GUARDED_BY(mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
};

// What a rank publishes about itself (gang_monitor.h: the rendezvous store's
// "retina/gang/progress/<rank>"): its host and its newest collective.
struct RankProgress {
  std::string host;
  uint64_t seq = 0;  // 0: no collective yet
  std::string kind, what;
  bool ended = false;
};
std::string EncodeProgress(const RankProgress& p);
std::optional<RankProgress> DecodeProgress(absl::string_view text);

// What a rank knows when its collective `stuck` did not complete.
struct HangFacts {
  CollectiveRecord stuck;
  int rank = 0;
  std::string host;
  double waited_s = 0;
  // Index = rank; nullopt: the rank never published (it never reached the
  // gang's monitor). Empty with `store_error` set: the store did not answer.
  std::vector<std::optional<RankProgress>> ranks;
  std::string store_error;
};

// The diagnosis, e.g. "all-reduce #1204 (gradient bucket 7): rank 3 on
// 198.18.0.4 never arrived (its last: all-reduce #1203 (gradient bucket 6),
// completed); ranks 0-2 waited 60 s". Ranks that arrived are those whose
// newest collective is `stuck` or later; when every rank arrived, the data
// did not flow between them (a link or interface), and it says so.
std::string DescribeHang(const HangFacts& facts);

// "0-2,5,7-9".
std::string RankRanges(const std::vector<int>& ranks);

}  // namespace retina::trainer
