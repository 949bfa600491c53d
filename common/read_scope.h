// Which files the readers of this folder may open. A service rank reads as
// the service's user, so a file inside the store must not make it read a
// file outside: every file a reader opens, the named one and each file the
// format references from inside it, goes through CheckRead:
//   - an NRRD header's `data file:` (one name, LIST, or a printf pattern),
//   - a two-file NIfTI header's .img,
//   - HDF5 external links, external storage (contiguous raw files) and
//     virtual-dataset sources (resolved as HDF5 resolves them: relative
//     names from the referencing file's directory),
//   - Zarr chunk files and OME-Zarr multiscale `path`s,
//   - a sharded dataset's shard files (its manifest's `file` fields).
// Paths are checked after symlinks and ".." are resolved. With a ReadScope
// alive (retina-train run --confine installs one per job), a path outside
// its policy's roots is PERMISSION_DENIED naming the referencing file and
// what referenced it; without one (standalone tools) everything is read.
#pragma once

#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "common/path_policy.h"

namespace retina {

// Installs `policy` for every reader in this process while it lives
// (scopes nest: a path must pass every installed policy). It also clears
// HDF5_EXT_PREFIX, HDF5_EXTFILE_PREFIX and HDF5_VDS_PREFIX, which would
// otherwise redirect HDF5's references to wherever they name.
class ReadScope {
 public:
  explicit ReadScope(PathPolicy policy);
  ~ReadScope();
  ReadScope(const ReadScope&) = delete;
  ReadScope& operator=(const ReadScope&) = delete;

 private:
  PathPolicy policy_;
};

// True while a ReadScope is installed.
bool ReadsConfined();

// OK when no scope is installed or `path` resolves under its roots;
// PERMISSION_DENIED otherwise, naming `what` (e.g. "a.nhdr: data file").
absl::Status CheckRead(const std::string& what, const std::filesystem::path& path);

}  // namespace retina
