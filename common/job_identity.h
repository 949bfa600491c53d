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

}  // namespace retina
