#include "services/coordinator/job_query.h"

#include <cstdint>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/coordinator/limits.h"

namespace retina::coordinator {
namespace v1 = retina::v1;

bool JobFilter::Matches(const v1::Job& job) const {
  for (const auto& [key, value] : terms) {
    if (key == "state" && v1::JobState_Name(job.state()) != value) return false;
    if (key == "kind" && v1::JobKind_Name(job.spec().kind()) != value) return false;
    if (key == "user" && job.user() != value) return false;
    if (key == "name" && job.spec().name() != value) return false;
    if (absl::StartsWith(key, "label.")) {
      auto it = job.spec().labels().find(key.substr(6));
      if (it == job.spec().labels().end() || it->second != value) return false;
    }
  }
  return true;
}

absl::StatusOr<JobFilter> ParseJobFilter(const std::string& text) {
  JobFilter f;
  if (text.size() > limits::kFilterChars) {
    return absl::InvalidArgumentError(
        absl::StrCat("filter: ", text.size(), " characters; the limit is ", limits::kFilterChars));
  }
  for (absl::string_view term : absl::StrSplit(text, absl::ByAnyChar(" ,"), absl::SkipEmpty())) {
    std::vector<std::string> kv = absl::StrSplit(term, absl::MaxSplits('=', 1));
    if (kv.size() != 2 || kv[1].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("filter: '", limits::Echo(term), "' is not key=value"));
    }
    if (kv[0] == "state") {
      v1::JobState s;
      if (!v1::JobState_Parse(kv[1], &s) || s == v1::JOB_STATE_UNSPECIFIED) {
        return absl::InvalidArgumentError(absl::StrCat("filter: unknown state '", limits::Echo(kv[1]), "'"));
      }
    } else if (kv[0] == "kind") {
      v1::JobKind k;
      if (!v1::JobKind_Parse(kv[1], &k)) {
        return absl::InvalidArgumentError(absl::StrCat("filter: unknown kind '", limits::Echo(kv[1]), "'"));
      }
    } else if (kv[0] != "user" && kv[0] != "name" && !absl::StartsWith(kv[0], "label.")) {
      return absl::InvalidArgumentError(
          absl::StrCat("filter: unknown key '", limits::Echo(kv[0]), "' (state, kind, user, name, label.<key>)"));
    }
    f.terms.emplace_back(kv[0], kv[1]);
  }
  return f;
}

std::string PageToken(int64_t seq) { return absl::StrCat("s", seq); }

absl::StatusOr<int64_t> ParsePageToken(const std::string& token) {
  if (token.empty()) return INT64_MAX;
  int64_t before = 0;
  if (token.size() < 2 || token[0] != 's' || !absl::SimpleAtoi(token.substr(1), &before) || before < 1) {
    return absl::InvalidArgumentError("page_token: not a token from ListJobs");
  }
  return before;
}

}  // namespace retina::coordinator
