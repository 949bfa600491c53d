#include "trainer/dist/gang_monitor.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/gang_failure.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "trainer/dist/rendezvous.h"

namespace retina::trainer {
namespace {

constexpr char kFailureSeen[] = "retina/gang/failure_seen";

std::string ProgressKey(int rank) { return absl::StrCat("retina/gang/progress/", rank); }

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string Text(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }

std::string What(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

std::string ThisHost(const LaunchInfo& launch) {
  if (!launch.host_addr.empty()) return launch.host_addr;
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "an unknown host";
  return name;
}

}  // namespace

absl::StatusOr<std::unique_ptr<GangMonitor>> GangMonitor::Start(const LaunchInfo& launch) {
  ASSIGN_OR_RETURN(c10::intrusive_ptr<c10d::Store> store, ConnectStoreClient(launch, kStoreCallTimeout));
  std::unique_ptr<GangMonitor> m(new GangMonitor(launch, std::move(store)));
  try {
    RankProgress p;
    p.host = m->host_;
    m->store_->set(ProgressKey(launch.rank), Bytes(EncodeProgress(p)));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(GangFailureTag(GangFailure::kStoreUnreachable), "rank ", launch.rank,
                                               ": cannot publish to the store at ", launch.master_addr, ":",
                                               launch.master_port, ": ", What(e)));
  }
  m->thread_ = std::thread([p = m.get()] { p->Loop(); });
  return m;
}

GangMonitor::GangMonitor(const LaunchInfo& launch, c10::intrusive_ptr<c10d::Store> store)
    : launch_(launch), host_(ThisHost(launch)), store_(std::move(store)) {}

GangMonitor::~GangMonitor() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

std::string GangMonitor::PeerFailure() const {
  absl::MutexLock lock(&mu_);
  return peer_failure_;
}

void GangMonitor::Loop() {
  uint64_t published = 0;
  bool warned = false;
  while (!stop_.WaitForNotificationWithTimeout(absl::FromChrono(kPublishEvery))) {
    try {
      const uint64_t version = recorder_.version();
      if (version != published) {
        RankProgress p;
        p.host = host_;
        if (std::optional<CollectiveRecord> last = recorder_.Last()) {
          p.seq = last->seq;
          p.kind = last->kind;
          p.what = last->what;
          p.ended = last->ended_s.has_value();
        }
        store_->set(ProgressKey(launch_.rank), Bytes(EncodeProgress(p)));
        published = version;
      }
      bool known;
      {
        absl::MutexLock lock(&mu_);
        known = posted_ || !peer_failure_.empty();
      }
      if (!known && store_->check({kGangFailedKey})) {
        const std::string why = Text(store_->get(kGangFailedKey));
        {
          absl::MutexLock lock(&mu_);
          if (!posted_) peer_failure_ = why;
        }
        store_->add(kFailureSeen, 1);
      }
      warned = false;
    } catch (const std::exception& e) {
      if (!warned) {
        RETINA_LOG(Warning) << "rank " << launch_.rank << ": the gang's store at " << launch_.master_addr << ":"
                            << launch_.master_port << " does not answer: " << What(e);
      }
      warned = true;
    }
  }
}

void GangMonitor::PostFailure(const std::string& cause, std::chrono::milliseconds linger) {
  {
    absl::MutexLock lock(&mu_);
    if (posted_ || !peer_failure_.empty()) return;  // the gang knows the first cause already
    posted_ = true;
  }
  const std::string text = absl::StrCat("rank ", launch_.rank, " on ", host_, " failed: ", cause);
  try {
    store_->compareSet(kGangFailedKey, {}, Bytes(text));
    if (launch_.rank != 0 || launch_.agent_store) return;
    // This process serves the store: give the others a moment to read it.
    const auto deadline = std::chrono::steady_clock::now() + linger;
    while (std::chrono::steady_clock::now() < deadline && store_->add(kFailureSeen, 0) < launch_.world_size - 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  } catch (const std::exception& e) {
    RETINA_LOG(Warning) << "rank " << launch_.rank << ": could not tell the other ranks why it failed: " << What(e);
  }
}

HangFacts GangMonitor::Gather(const CollectiveRecord& stuck, double waited_s) {
  HangFacts f;
  f.stuck = stuck;
  f.rank = launch_.rank;
  f.host = host_;
  f.waited_s = waited_s;
  try {
    for (int r = 0; r < launch_.world_size; ++r) {
      std::optional<RankProgress> p;
      if (r != launch_.rank && store_->check({ProgressKey(r)})) p = DecodeProgress(Text(store_->get(ProgressKey(r))));
      f.ranks.push_back(p);
    }
  } catch (const std::exception& e) {
    f.ranks.clear();
    f.store_error = absl::StrCat(launch_.master_addr, ":", launch_.master_port, ": ", What(e));
  }
  return f;
}

absl::Status GangMonitor::Explain(uint64_t seq, bool timed_out, const std::string& detail, double waited_s) {
  CollectiveRecord stuck = recorder_.Find(seq).value_or(CollectiveRecord{});
  stuck.seq = seq;
  RETINA_LOG(Warning) << recorder_.Dump();
  std::string peer = PeerFailure();
  if (peer.empty() && !timed_out) {
    // A broken connection: the peer may have posted its cause as it went.
    try {
      if (store_->check({kGangFailedKey})) peer = Text(store_->get(kGangFailedKey));
    } catch (const std::exception&) {
      // The store is gone too: Gather below meets the same error and the
      // diagnosis says the store is unreachable.
    }
  }
  const std::string who = absl::StrCat("rank ", launch_.rank, " on ", host_, ": ");
  if (!peer.empty()) {
    return absl::AbortedError(
        absl::StrCat(GangFailureTag(GangFailure::kPeerFailed), who, CollectiveName(stuck), " abandoned: ", peer));
  }
  const std::string diagnosis = DescribeHang(Gather(stuck, waited_s));
  if (timed_out) {
    return absl::DeadlineExceededError(absl::StrCat(GangFailureTag(GangFailure::kCollectiveTimeout), who, diagnosis));
  }
  return absl::AbortedError(absl::StrCat(GangFailureTag(GangFailure::kConnectionLost), who,
                                         "a peer's connection broke (its process or host died): ", detail, "; ",
                                         diagnosis));
}

}  // namespace retina::trainer
