// ListJobs' query: the filter ("state=RUNNING kind=FINETUNE user=ana
// name=x label.k=v", terms separated by spaces or commas, all must match)
// and page tokens ("s<seq>": the next page holds jobs submitted before seq).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "retina/v1/job_service.pb.h"

namespace retina::coordinator {

struct JobFilter {
  std::vector<std::pair<std::string, std::string>> terms;
  bool Matches(const retina::v1::Job& job) const;
};

// INVALID_ARGUMENT naming the term: not key=value, an unknown key, state or kind.
absl::StatusOr<JobFilter> ParseJobFilter(const std::string& text);

std::string PageToken(int64_t seq);
// INT64_MAX (from the newest) for an empty token; INVALID_ARGUMENT for one ListJobs did not give.
absl::StatusOr<int64_t> ParsePageToken(const std::string& token);

}  // namespace retina::coordinator
