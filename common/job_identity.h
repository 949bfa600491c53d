// Identity of a shared store and of the job directories in it, so that
// nothing adopts what it did not create (ARCHITECTURE.md "The shared store"):
//
//   <root>/STORE_ID           a random id, written by the first coordinator
//                             that uses the store and recorded in its job
//                             database; a database and a store that disagree
//                             are refused at start.
//   <root>/jobs/<id>/JOB_UID  the uid of the job that created the directory
//                             (the coordinator reserves the directory with an
//                             exclusive mkdir at submission); a rank started
//                             for another uid refuses to resume from or write
//                             into it.
//   <root>/jobs/<id>/ATTEMPT  the newest attempt of the job that started: each
//                             rank of attempt k advances it to k before it
//                             writes anything (never back), and rank 0
//                             checks it before every write (checkpoint,
//                             metrics row, infer chunk). A rank of an older
//                             attempt (a host cut off while the coordinator
//                             ran the job again elsewhere, then healed) finds
//                             a newer one there and stops without writing:
//                             the store is fenced against stale attempts.
#pragma once

#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/store_layout.h"

namespace retina {

// 32 lowercase hex digits from std::random_device.
std::string NewRandomId();

// The store's id; "" when the store has none yet.
absl::StatusOr<std::string> ReadStoreId(const StoreLayout& store);
// Writes STORE_ID durably (temporary, fsync, rename).
absl::Status WriteStoreId(const StoreLayout& store, const std::string& id);
// Whether jobs/ holds any job directory.
bool StoreHasJobs(const StoreLayout& store);

// Creates jobs/<job_id> exclusively and writes its JOB_UID. ALREADY_EXISTS
// when the directory exists (the id is taken in this store: choose another).
absl::Status ReserveJobDir(const StoreLayout& store, const std::string& job_id, const std::string& uid);
// Removes a directory ReserveJobDir made (when the submission that reserved
// it could not be committed); leaves anything else alone.
void ReleaseJobDir(const StoreLayout& store, const std::string& job_id, const std::string& uid);

// OK when jobs/<job_id> belongs to `uid`: its JOB_UID says so, or it does not
// exist yet / is empty (then, with `claim`, JOB_UID is written). An empty
// `uid` (a standalone run without one) is always OK. FAILED_PRECONDITION,
// naming the directory and both uids, otherwise.
absl::Status CheckJobOwner(const StoreLayout& store, const std::string& job_id, const std::string& uid, bool claim);

// Advances jobs/<job_id>/ATTEMPT to `attempt` (never back; attempt <= 0,
// a standalone run, is not fenced and claims nothing). ABORTED, as
// CheckAttemptCurrent, when a newer attempt has claimed the job already.
absl::Status ClaimAttempt(const StoreLayout& store, const std::string& job_id, int attempt);
// OK while no attempt newer than `attempt` has claimed jobs/<job_id>;
// ABORTED naming the file and both attempts otherwise (the caller stops
// without writing). attempt <= 0 is always OK.
absl::Status CheckAttemptCurrent(const StoreLayout& store, const std::string& job_id, int attempt);

}  // namespace retina
