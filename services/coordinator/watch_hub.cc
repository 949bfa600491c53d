#include "services/coordinator/watch_hub.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

bool IsTerminal(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }

int64_t WatchHub::Add(const v1::Job& job, Sink sink) {
  auto snapshot = std::make_shared<v1::JobEvent>();
  snapshot->set_type(v1::JobEvent::SNAPSHOT);
  *snapshot->mutable_job() = job;
  const bool last = IsTerminal(job.state());
  sink(std::move(snapshot), last);
  if (last) return 0;
  const int64_t handle = next_++;
  watchers_[handle] = Watcher{job.id(), std::move(sink)};
  by_job_.emplace(job.id(), handle);
  return handle;
}

void WatchHub::Remove(int64_t handle) {
  auto it = watchers_.find(handle);
  if (it == watchers_.end()) return;
  auto [begin, end] = by_job_.equal_range(it->second.job);
  for (auto j = begin; j != end; ++j) {
    if (j->second == handle) {
      by_job_.erase(j);
      break;
    }
  }
  watchers_.erase(it);
}

void WatchHub::Publish(const v1::Job& job, v1::JobEvent::Type type, const std::string& event_json) {
  auto [begin, end] = by_job_.equal_range(job.id());
  if (begin == end) return;
  auto event = std::make_shared<v1::JobEvent>();
  event->set_type(type);
  *event->mutable_job() = job;
  event->set_event_json(event_json);
  const bool last = type == v1::JobEvent::STATE && IsTerminal(job.state());
  for (auto it = begin; it != end;) {
    auto w = watchers_.find(it->second);
    if (w != watchers_.end()) w->second.sink(event, last);
    if (last) {
      if (w != watchers_.end()) watchers_.erase(w);
      it = by_job_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace retina::coordinator
