#include "trainer/dist/flight_recorder.h"

#include <chrono>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace retina::trainer {
namespace {

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Fields are tab-separated; a tab or newline in a name becomes a space.
std::string Clean(absl::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

}  // namespace

std::string CollectiveName(const CollectiveRecord& r) {
  return r.what.empty() ? absl::StrCat(r.kind, " #", r.seq) : absl::StrCat(r.kind, " #", r.seq, " (", r.what, ")");
}

FlightRecorder::FlightRecorder(size_t capacity) : capacity_(capacity < 1 ? 1 : capacity), origin_ns_(SteadyNs()) {}

double FlightRecorder::Now() const { return static_cast<double>(SteadyNs() - origin_ns_) * 1e-9; }

uint64_t FlightRecorder::Begin(std::string kind, std::string what, int64_t bytes) {
  CollectiveRecord r;
  r.kind = std::move(kind);
  r.what = std::move(what);
  r.bytes = bytes;
  r.started_s = Now();
  absl::MutexLock lock(&mu_);
  r.seq = next_seq_++;
  ring_.push_back(std::move(r));
  while (ring_.size() > capacity_) ring_.pop_front();
  ++version_;
  return ring_.back().seq;
}

void FlightRecorder::End(uint64_t seq, bool ok) {
  const double now = Now();
  absl::MutexLock lock(&mu_);
  for (auto it = ring_.rbegin(); it != ring_.rend(); ++it) {
    if (it->seq != seq) continue;
    it->ended_s = now;
    it->failed = !ok;
    ++version_;
    return;
  }
}

std::optional<CollectiveRecord> FlightRecorder::Find(uint64_t seq) const {
  absl::MutexLock lock(&mu_);
  for (const CollectiveRecord& r : ring_) {
    if (r.seq == seq) return r;
  }
  return std::nullopt;
}

std::optional<CollectiveRecord> FlightRecorder::Last() const {
  absl::MutexLock lock(&mu_);
  if (ring_.empty()) return std::nullopt;
  return ring_.back();
}

uint64_t FlightRecorder::version() const {
  absl::MutexLock lock(&mu_);
  return version_;
}

std::string FlightRecorder::Dump() const {
  const double now = Now();
  absl::MutexLock lock(&mu_);
  std::string out = absl::StrFormat("flight recorder: the last %d collective(s) of this rank, oldest first:", ring_.size());
  for (const CollectiveRecord& r : ring_) {
    absl::StrAppendFormat(&out, "\n  %s, %d bytes, started %.3f s ago, ", CollectiveName(r), r.bytes,
                          now - r.started_s);
    if (!r.ended_s) {
      out += "not completed";
    } else {
      absl::StrAppendFormat(&out, "%s after %.3f s", r.failed ? "failed" : "completed", *r.ended_s - r.started_s);
    }
  }
  return out;
}

std::string EncodeProgress(const RankProgress& p) {
  return absl::StrCat(Clean(p.host), "\t", p.seq, "\t", Clean(p.kind), "\t", Clean(p.what), "\t",
                      p.ended ? "ended" : "waiting");
}

std::optional<RankProgress> DecodeProgress(absl::string_view text) {
  const std::vector<std::string> f = absl::StrSplit(text, '\t');
  if (f.size() != 5 || (f[4] != "ended" && f[4] != "waiting")) return std::nullopt;
  RankProgress p;
  p.host = f[0];
  if (!absl::SimpleAtoi(f[1], &p.seq)) return std::nullopt;
  p.kind = f[2];
  p.what = f[3];
  p.ended = f[4] == "ended";
  return p;
}

std::string RankRanges(const std::vector<int>& ranks) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(ranks[i]) : absl::StrCat(ranks[i], "-", ranks[j]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ",");
}

std::string DescribeHang(const HangFacts& f) {
  const std::string name = CollectiveName(f.stuck);
  const std::string waited = absl::StrFormat("%.0f s", f.waited_s);
  if (!f.store_error.empty()) {
    return absl::StrCat(name, ": rank ", f.rank, " on ", f.host, " waited ", waited,
                        " and cannot reach the rendezvous store to see the others (", f.store_error,
                        "): rank 0's host is down or cut off, or this host is");
  }
  std::vector<int> arrived;
  std::vector<std::string> missing;
  int missing_count = 0;
  for (int r = 0; r < static_cast<int>(f.ranks.size()); ++r) {
    const std::optional<RankProgress>& p = r == f.rank ? std::optional<RankProgress>() : f.ranks[r];
    if (r == f.rank || (p && p->seq >= f.stuck.seq)) {
      arrived.push_back(r);
      continue;
    }
    if (++missing_count > 8) continue;  // the first eight, then a count
    if (!p) {
      missing.push_back(absl::StrCat("rank ", r, " never arrived (it never reached the gang's monitor)"));
    } else if (p->seq == 0) {
      missing.push_back(absl::StrCat("rank ", r, " on ", p->host, " never arrived (no collective yet)"));
    } else {
      CollectiveRecord last;
      last.seq = p->seq;
      last.kind = p->kind;
      last.what = p->what;
      missing.push_back(absl::StrCat("rank ", r, " on ", p->host, " never arrived (its last: ", CollectiveName(last),
                                     p->ended ? ", completed" : ", not completed", ")"));
    }
  }
  if (missing_count > 8) missing.push_back(absl::StrCat("and ", missing_count - 8, " more"));
  if (missing.empty()) {
    return absl::StrCat(name, ": every rank arrived but the data did not flow between them (a link that stalls or "
                              "drops, or the wrong interface: GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME, RETINA_HOST_ADDR); ranks ",
                        RankRanges(arrived), " waited ", waited);
  }
  return absl::StrCat(name, ": ", absl::StrJoin(missing, "; "), "; ", arrived.size() == 1 ? "rank " : "ranks ",
                      RankRanges(arrived), " waited ", waited);
}

}  // namespace retina::trainer
