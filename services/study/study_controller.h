// The study controller: runs studies (common/study.h; docs/studies.md) as a
// client of the coordinator.
//
// A study is a job of kind STUDY that the coordinator keeps RUNNING and never
// places. The controller drives it only through the coordinator's facade
// (services/coordinator/coordinator.h), the calls a client makes: it lists
// the running studies, submits the study's FINETUNE children with request ids
// "study:<id>/<index>" (so submitting again, after a restart in the middle,
// finds the ones that exist), watches them with Get, cancels them when the
// study is cancelled or cannot go on, and reports the study's progress and
// end with UpdateStudy. When a child ends, its scores are read from the store
// once; study.json and study.csv are rewritten whenever a child changed. The
// study ends (SUCCEEDED when a child did, else FAILED; CANCELLED when
// cancelled) once every child has ended and the final aggregate is written.
// Nothing here holds the coordinator's state lock: the files are read and
// written between calls.
//
// The layering test holds the rule: files here include no coordinator
// header but the facade and the job-spec rules (job_spec.h).
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/study/study.h"
#include "services/coordinator/coordinator.h"

namespace retina::study {

struct StudyControllerOptions {
  std::filesystem::path store;  // where the children's scores are and the reports go
  std::vector<std::filesystem::path> allowed_roots, output_roots;  // the coordinator's
  absl::Duration discover = absl::Seconds(1);  // how often new studies are looked for
};

class StudyController {
 public:
  StudyController(coordinator::Coordinator* jobs, StudyControllerOptions options);
  ~StudyController();  // stops the thread Start started
  StudyController(const StudyController&) = delete;
  StudyController& operator=(const StudyController&) = delete;

  // One round over every running study. Not reentrant (one caller: the
  // thread, or a test).
  void Tick();
  // Calls Tick every `period` on a thread of its own.
  void Start(absl::Duration period);

 private:
  struct Study {
    StudyPlan plan;
    std::map<int, std::string> children;          // StudyChild::index -> job id
    std::map<int, int> seen;                      // the state last seen of a child not ended
    std::map<int, StudyChildResult> ended;        // children that have ended, with their scores
    bool dirty = true;                            // study.json is behind
    bool looked_up = false;                       // existing children found (after a start)
    std::string broken;                           // why it cannot go on (it then fails)
  };
  void Discover();
  // One study's round; true when it has ended (or is gone).
  bool Round(const std::string& id, Study* st);
  void FindChildren(const retina::v1::Job& study, Study* st);
  void CreateChildren(const retina::v1::Job& study, Study* st);
  void FollowChildren(bool cancelling, Study* st);
  StudyChildResult Result(const Study& st, int index, const retina::v1::Job& child) const;
  void RereadMissingScores(Study* st) const;
  // study.json and study.csv; false when they could not be written.
  bool WriteReport(const std::string& id, Study* st, const std::string& state);

  coordinator::Coordinator* const jobs_;
  const StudyControllerOptions options_;
  std::map<std::string, Study> studies_;  // running studies by id
  absl::Time next_discover_ = absl::InfinitePast();
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace retina::study
