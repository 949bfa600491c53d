#include "services/coordinator/job_store.h"

#include <sqlite3.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"

namespace retina::coordinator {
namespace {
// How long a write waits for a lock another process holds (a backup, an
// operator's sqlite3 shell) before it fails.
constexpr int kBusyTimeoutMs = 5000;
}  // namespace

JobStore::JobStore(sqlite3* db, std::filesystem::path path) : db_(db), path_(std::move(path)) {}

JobStore::~JobStore() {
  sqlite3_finalize(insert_);
  sqlite3_finalize(update_);
  sqlite3_close_v2(db_);
}

absl::Status JobStore::Error(const char* what) const {
  const int code = sqlite3_errcode(db_);
  std::string msg = absl::StrCat(path_.string(), ": ", what, ": ", sqlite3_errmsg(db_));
  if (code == SQLITE_CONSTRAINT) return absl::AlreadyExistsError(msg);
  if (code == SQLITE_BUSY || code == SQLITE_LOCKED) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

// Steps a write statement once and always resets it: a statement left
// un-reset after an error (e.g. SQLITE_BUSY) keeps its transaction open, and
// every later write on the connection then commits only in memory.
absl::Status JobStore::StepAndReset(sqlite3_stmt* stmt, const char* what) {
  const int rc = sqlite3_step(stmt);
  absl::Status s = rc == SQLITE_DONE ? absl::OkStatus() : Error(what);
  sqlite3_reset(stmt);
  sqlite3_clear_bindings(stmt);
  return s;
}

absl::Status JobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = absl::StrCat(path_.string(), ": ", sql, ": ", err ? err : "error");
    sqlite3_free(err);
    return absl::InternalError(msg);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::filesystem::path& path,
                                                        const std::string& synchronous) {
  if (synchronous != "full" && synchronous != "normal") {
    return absl::InvalidArgumentError(absl::StrCat("sqlite synchronous must be full or normal, got '", synchronous, "'"));
  }
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = absl::StrCat(path.string(), ": cannot open the job database: ",
                                   db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close_v2(db);
    return absl::FailedPreconditionError(msg);
  }
  std::unique_ptr<JobStore> store(new JobStore(db, path));
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  RETURN_IF_ERROR(store->QuickCheck());
  RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  RETURN_IF_ERROR(store->Exec(synchronous == "full" ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"));
  RETURN_IF_ERROR(store->Exec(
      "CREATE TABLE IF NOT EXISTS jobs ("
      " seq INTEGER PRIMARY KEY,"
      " id TEXT NOT NULL UNIQUE,"
      " request_id TEXT UNIQUE,"
      " state INTEGER NOT NULL,"
      " record BLOB NOT NULL)"));
  RETURN_IF_ERROR(store->Exec("CREATE TABLE IF NOT EXISTS models (id TEXT PRIMARY KEY, record BLOB NOT NULL)"));
  RETURN_IF_ERROR(store->Exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"));
  if (sqlite3_prepare_v2(db, "INSERT INTO jobs(seq, id, request_id, state, record) VALUES(?,?,?,?,?)", -1,
                         &store->insert_, nullptr) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "UPDATE jobs SET state=?, record=? WHERE id=?", -1, &store->update_, nullptr) !=
          SQLITE_OK) {
    return store->Error("prepare");
  }
  return store;
}

absl::Status JobStore::QuickCheck() {
  const absl::Time start = absl::Now();
  sqlite3_stmt* stmt = nullptr;
  std::vector<std::string> problems;
  int rc = sqlite3_prepare_v2(db_, "PRAGMA quick_check(20)", -1, &stmt, nullptr);
  if (rc == SQLITE_OK) {
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      const unsigned char* text = sqlite3_column_text(stmt, 0);
      std::string line = text ? reinterpret_cast<const char*>(text) : "";
      if (line != "ok") problems.push_back(std::move(line));
    }
  }
  if (rc != SQLITE_DONE && problems.empty()) problems.push_back(sqlite3_errmsg(db_));
  sqlite3_finalize(stmt);
  check_time_ = absl::Now() - start;
  if (problems.empty()) return absl::OkStatus();
  const std::string p = path_.string();
  return absl::DataLossError(absl::StrCat(
      p, ": the job database is damaged (PRAGMA quick_check: ", problems.front(),
      problems.size() > 1 ? absl::StrCat(" and ", problems.size() - 1, " more") : "",
      "). Nothing was changed. To repair: stop the coordinator; keep a copy (cp ", p, " ", p,
      ".damaged); recover the rows into a new file (sqlite3 ", p, ".damaged .recover | sqlite3 ", p,
      ".recovered); check it (sqlite3 ", p, ".recovered 'PRAGMA integrity_check'); then move it into place (mv ", p,
      ".recovered ", p, ") and start again. See docs/operations.md."));
}

absl::Status JobStore::Probe() {
  sqlite3_busy_timeout(db_, 0);
  absl::Status s = SetMeta("last_probe_unix_ms", absl::StrCat(absl::ToUnixMillis(absl::Now())));
  sqlite3_busy_timeout(db_, kBusyTimeoutMs);
  return s;
}

absl::StatusOr<std::string> JobStore::GetMeta(const std::string& key) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT value FROM meta WHERE key=?", -1, &stmt, nullptr) != SQLITE_OK) {
    return Error("select meta");
  }
  sqlite3_bind_text(stmt, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
  std::string value;
  const int rc = sqlite3_step(stmt);
  if (rc == SQLITE_ROW) {
    const unsigned char* text = sqlite3_column_text(stmt, 0);
    if (text) value = reinterpret_cast<const char*>(text);
  }
  sqlite3_finalize(stmt);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return Error("select meta");
  return value;
}

absl::Status JobStore::SetMeta(const std::string& key, const std::string& value) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db_, "INSERT INTO meta(key, value) VALUES(?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         -1, &stmt, nullptr) != SQLITE_OK) {
    return Error("insert meta");
  }
  sqlite3_bind_text(stmt, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(stmt, 2, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
  const int rc = sqlite3_step(stmt);
  sqlite3_finalize(stmt);
  if (rc != SQLITE_DONE) return Error("insert meta");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StoredJob>> JobStore::LoadAll() {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT seq, record FROM jobs ORDER BY seq", -1, &stmt, nullptr) != SQLITE_OK) {
    return Error("select");
  }
  std::vector<StoredJob> out;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    StoredJob job;
    job.seq = sqlite3_column_int64(stmt, 0);
    const void* blob = sqlite3_column_blob(stmt, 1);
    if (!job.job.ParseFromArray(blob, sqlite3_column_bytes(stmt, 1))) {
      sqlite3_finalize(stmt);
      return absl::DataLossError(absl::StrCat(path_.string(), ": job record ", job.seq, " does not parse"));
    }
    out.push_back(std::move(job));
  }
  sqlite3_finalize(stmt);
  if (rc != SQLITE_DONE) return Error("select");
  return out;
}

std::string RequestKey(const std::string& user, const std::string& request_id) {
  return absl::StrCat(user, "\x1f", request_id);
}

absl::Status JobStore::Insert(const StoredJob& job) {
  const std::string blob = job.job.SerializeAsString();
  sqlite3_reset(insert_);
  sqlite3_bind_int64(insert_, 1, job.seq);
  sqlite3_bind_text(insert_, 2, job.job.id().data(), static_cast<int>(job.job.id().size()), SQLITE_TRANSIENT);
  // The column holds RequestKey (databases from before per-user ids hold
  // the bare id in older rows: both stay unique, the records are the truth).
  const std::string key = RequestKey(job.job.user(), job.job.request_id());
  if (job.job.request_id().empty()) {
    sqlite3_bind_null(insert_, 3);
  } else {
    sqlite3_bind_text(insert_, 3, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
  }
  sqlite3_bind_int(insert_, 4, job.job.state());
  sqlite3_bind_blob(insert_, 5, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  return StepAndReset(insert_, "insert");
}

absl::Status JobStore::BeginBatch() { return Exec("BEGIN IMMEDIATE"); }

absl::Status JobStore::CommitBatch() {
  absl::Status s = Exec("COMMIT");
  if (!s.ok()) (void)Exec("ROLLBACK");
  return s;
}

void JobStore::RollbackBatch() { (void)Exec("ROLLBACK"); }

absl::Status JobStore::Update(const retina::v1::Job& job) {
  const std::string blob = job.SerializeAsString();
  sqlite3_reset(update_);
  sqlite3_bind_int(update_, 1, job.state());
  sqlite3_bind_blob(update_, 2, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(update_, 3, job.id().data(), static_cast<int>(job.id().size()), SQLITE_TRANSIENT);
  RETURN_IF_ERROR(StepAndReset(update_, "update"));
  if (sqlite3_changes(db_) != 1) return absl::NotFoundError(absl::StrCat("job ", job.id(), " is not in the database"));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<retina::v1::ModelVersion>> JobStore::LoadModels() {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT id, record FROM models ORDER BY id", -1, &stmt, nullptr) != SQLITE_OK) {
    return Error("select models");
  }
  std::vector<retina::v1::ModelVersion> out;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    retina::v1::ModelVersion m;
    if (!m.ParseFromArray(sqlite3_column_blob(stmt, 1), sqlite3_column_bytes(stmt, 1))) {
      const unsigned char* id = sqlite3_column_text(stmt, 0);
      std::string name = id ? reinterpret_cast<const char*>(id) : "?";
      sqlite3_finalize(stmt);
      return absl::DataLossError(absl::StrCat(path_.string(), ": model record ", name, " does not parse"));
    }
    out.push_back(std::move(m));
  }
  sqlite3_finalize(stmt);
  if (rc != SQLITE_DONE) return Error("select models");
  return out;
}

absl::Status JobStore::PutModel(const retina::v1::ModelVersion& model) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db_, "INSERT INTO models(id, record) VALUES(?,?) ON CONFLICT(id) DO UPDATE SET record=excluded.record",
                         -1, &stmt, nullptr) != SQLITE_OK) {
    return Error("insert model");
  }
  const std::string blob = model.SerializeAsString();
  sqlite3_bind_text(stmt, 1, model.id().data(), static_cast<int>(model.id().size()), SQLITE_TRANSIENT);
  sqlite3_bind_blob(stmt, 2, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  const int rc = sqlite3_step(stmt);
  sqlite3_finalize(stmt);
  if (rc != SQLITE_DONE) return Error("insert model");
  return absl::OkStatus();
}

absl::Status JobStore::DeleteModel(const std::string& id) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db_, "DELETE FROM models WHERE id=?", -1, &stmt, nullptr) != SQLITE_OK) {
    return Error("delete model");
  }
  sqlite3_bind_text(stmt, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
  const int rc = sqlite3_step(stmt);
  sqlite3_finalize(stmt);
  if (rc != SQLITE_DONE) return Error("delete model");
  if (sqlite3_changes(db_) != 1) return absl::NotFoundError(absl::StrCat("model ", id, " is not in the database"));
  return absl::OkStatus();
}

}  // namespace retina::coordinator
