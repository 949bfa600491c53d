#include "trainer/data/shards.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include <algorithm>
#include <cerrno>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "trainer/data/formats/hdf5_handle.h"
#include "common/read_scope.h"

namespace retina::trainer {
namespace fs = std::filesystem;
namespace {

absl::Status WriteU8(hid_t file, const char* name, const std::vector<uint8_t>& data, const hsize_t dims[3],
                     const std::string& where) {
  Hid space(H5Screate_simple(3, dims, nullptr), H5Sclose);
  Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS);
  H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY);
  H5Pset_obj_track_times(dcpl.get(), false);  // no timestamps: identical contents give identical bytes
  Hid ds(H5Dcreate2(file, name, H5T_NATIVE_UINT8, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
  if (!ds.ok() || H5Dwrite(ds.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()) < 0) {
    return absl::InternalError(absl::StrCat(where, ": writing dataset ", name, " failed (disk full?)"));
  }
  return absl::OkStatus();
}

absl::Status WriteNames(hid_t file, const std::vector<std::string>& names, const std::string& where) {
  const hsize_t n = names.size();
  Hid space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Hid type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  std::vector<const char*> ptrs;
  for (const std::string& s : names) ptrs.push_back(s.c_str());
  Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(dcpl.get(), false);
  Hid ds(H5Dcreate2(file, "names", type.get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
  if (!ds.ok() || H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0) {
    return absl::InternalError(absl::StrCat(where, ": writing names failed"));
  }
  return absl::OkStatus();
}

uint32_t SampleCrc(const uint8_t* image, const uint8_t* mask, size_t plane) {
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, image, static_cast<uInt>(plane));
  if (mask != nullptr) crc = crc32(crc, mask, static_cast<uInt>(plane));
  return static_cast<uint32_t>(crc);
}

absl::Status WriteCrcs(hid_t file, const std::vector<uint32_t>& crcs, const std::string& where) {
  const hsize_t n = crcs.size();
  Hid space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(dcpl.get(), false);
  Hid ds(H5Dcreate2(file, "crc32", H5T_STD_U32LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
  if (!ds.ok() || H5Dwrite(ds.get(), H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, crcs.data()) < 0) {
    return absl::InternalError(absl::StrCat(where, ": writing crc32 failed"));
  }
  return absl::OkStatus();
}

// A shard's datasets hold their data in the shard itself: a hard link, no
// external storage, not virtual (anything else could read another file).
absl::Status CheckOwnData(hid_t file, const char* name, const std::string& where) {
  H5L_info_t link;
  if (H5Lget_info(file, name, &link, H5P_DEFAULT) < 0 || link.type != H5L_TYPE_HARD) {
    return absl::DataLossError(absl::StrCat(where, ":", name, ": not a dataset stored in the shard (a link)"));
  }
  Hid ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  Hid dcpl(H5Dget_create_plist(ds.get()), H5Pclose);
  if (!ds.ok() || !dcpl.ok() || H5Pget_external_count(dcpl.get()) != 0 || H5Pget_layout(dcpl.get()) == H5D_VIRTUAL) {
    return absl::DataLossError(
        absl::StrCat(where, ":", name, ": not a dataset stored in the shard (external or virtual storage)"));
  }
  return absl::OkStatus();
}

// The crc32 dataset of a shard (empty when it has none).
absl::StatusOr<std::vector<uint32_t>> ReadCrcs(hid_t file, int64_t n, const std::string& where) {
  std::vector<uint32_t> out;
  if (H5Lexists(file, "crc32", H5P_DEFAULT) <= 0) return out;
  RETURN_IF_ERROR(CheckOwnData(file, "crc32", where));
  Hid ds(H5Dopen2(file, "crc32", H5P_DEFAULT), H5Dclose);
  Hid space(H5Dget_space(ds.get()), H5Sclose);
  hsize_t dims = 0;
  const bool one_d = H5Sget_simple_extent_ndims(space.get()) == 1;
  if (one_d) H5Sget_simple_extent_dims(space.get(), &dims, nullptr);
  if (!one_d || static_cast<int64_t>(dims) != n) {
    return absl::DataLossError(absl::StrCat(where, ":crc32: not one value per sample (", n, ")"));
  }
  out.resize(static_cast<size_t>(n));
  if (H5Dread(ds.get(), H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0) {
    return absl::DataLossError(absl::StrCat(where, ":crc32: cannot be read"));
  }
  return out;
}

// Offset of a contiguous uint8 [n, h, w] dataset, after checking its shape.
absl::StatusOr<haddr_t> ContiguousOffset(hid_t file, const char* name, int64_t n, int64_t h, int64_t w,
                                         const std::string& where) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) return absl::DataLossError(absl::StrCat(where, ": no dataset '", name, "'"));
  RETURN_IF_ERROR(CheckOwnData(file, name, where));
  Hid ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  Hid space(H5Dget_space(ds.get()), H5Sclose);
  hsize_t dims[3] = {0, 0, 0};
  if (H5Sget_simple_extent_ndims(space.get()) != 3) return absl::DataLossError(absl::StrCat(where, ":", name, ": rank is not 3"));
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  if (static_cast<int64_t>(dims[0]) != n || static_cast<int64_t>(dims[1]) != h || static_cast<int64_t>(dims[2]) != w) {
    return absl::DataLossError(absl::StrCat(where, ":", name, ": shape [", dims[0], ", ", dims[1], ", ", dims[2],
                                            "] disagrees with the manifest [", n, ", ", h, ", ", w, "]"));
  }
  Hid type(H5Dget_type(ds.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != 1) {
    return absl::DataLossError(absl::StrCat(where, ":", name, ": not uint8"));
  }
  Hid dcpl(H5Dget_create_plist(ds.get()), H5Pclose);
  if (H5Pget_layout(dcpl.get()) != H5D_CONTIGUOUS) {
    return absl::DataLossError(absl::StrCat(where, ":", name, ": not contiguous (cannot be memory-mapped)"));
  }
  const haddr_t offset = H5Dget_offset(ds.get());
  if (offset == HADDR_UNDEF) return absl::DataLossError(absl::StrCat(where, ":", name, ": no storage allocated"));
  return offset;
}

}  // namespace

absl::StatusOr<ShardInfo> WriteShard(const fs::path& path, const ShardContents& c) {
  const std::string where = path.string();
  const size_t plane = static_cast<size_t>(c.height * c.width);
  if (c.images.size() != plane * c.count() || (!c.masks.empty() && c.masks.size() != c.images.size())) {
    return absl::InternalError(absl::StrCat(where, ": shard contents have inconsistent sizes"));
  }
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const fs::path tmp = path.parent_path() / UniqueTempName("." + path.filename().string() + ".tmp.");
  absl::Cleanup remove_tmp = [&] { ::unlink(tmp.c_str()); };
  {
    Hid file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (!file.ok()) return absl::InternalError(absl::StrCat(tmp.string(), ": cannot create HDF5 file"));
    const hsize_t dims[3] = {static_cast<hsize_t>(c.count()), static_cast<hsize_t>(c.height),
                             static_cast<hsize_t>(c.width)};
    RETURN_IF_ERROR(WriteU8(file.get(), "images", c.images, dims, where));
    if (!c.masks.empty()) RETURN_IF_ERROR(WriteU8(file.get(), "masks", c.masks, dims, where));
    RETURN_IF_ERROR(WriteNames(file.get(), c.names, where));
    std::vector<uint32_t> crcs(static_cast<size_t>(c.count()));
    for (int64_t i = 0; i < c.count(); ++i) {
      crcs[i] = SampleCrc(c.images.data() + i * plane, c.masks.empty() ? nullptr : c.masks.data() + i * plane, plane);
    }
    RETURN_IF_ERROR(WriteCrcs(file.get(), crcs, where));
    if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0) return absl::InternalError(absl::StrCat(where, ": flush failed"));
  }
  RETURN_IF_ERROR(FsyncPath(tmp));
  ASSIGN_OR_RETURN(FileDigest digest, Sha256File(tmp));
  RETURN_IF_ERROR(RenameDurable(tmp, path));
  std::move(remove_tmp).Cancel();
  return ShardInfo{path.filename().string(), c.count(), digest.size, digest.sha256};
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open", path);
  absl::Cleanup close_fd = [fd] { ::close(fd); };
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, "stat", path);
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) return absl::DataLossError(absl::StrCat(path.string(), ": empty file"));
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return ErrnoStatus(errno, "mmap", path);
  return std::unique_ptr<MappedFile>(new MappedFile(static_cast<const uint8_t*>(p), size));
}

MappedFile::~MappedFile() { ::munmap(const_cast<uint8_t*>(data_), size_); }

absl::StatusOr<fs::path> ResolveDataset(const std::string& name, const fs::path& store, const std::string& key) {
  if (name.find('/') != std::string::npos) return fs::path(name);
  RETURN_IF_ERROR(StoreLayout::ValidateName(name, key));
  return StoreLayout(store).DatasetDir(name);
}

absl::StatusOr<std::unique_ptr<ShardedDataset>> ShardedDataset::Open(const fs::path& dir, bool verify, int version) {
  ASSIGN_OR_RETURN(DatasetManifest all, DatasetManifest::Load(dir));
  ASSIGN_OR_RETURN(DatasetManifest manifest, all.AtVersion(version), dir.string());
  // Each shard the manifest names (its "file", resolved after symlinks)
  // through the read scope before anything opens it.
  for (const ShardInfo& info : manifest.shards) {
    RETURN_IF_ERROR(CheckRead(absl::StrCat((dir / DatasetManifest::kFileName).string(), ": shard ", info.file),
                              dir / info.file));
  }
  if (verify) RETURN_IF_ERROR(VerifyDatasetChecksums(dir, manifest));
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  auto ds = std::unique_ptr<ShardedDataset>(new ShardedDataset());
  int64_t first = 0;
  const int64_t plane = manifest.height * manifest.width;
  for (const ShardInfo& info : manifest.shards) {
    const fs::path path = dir / info.file;
    const std::string where = path.string();
    Shard shard;
    shard.first = first;
    haddr_t image_offset, mask_offset = 0;
    {
      if (H5Fis_hdf5(path.c_str()) <= 0) return absl::DataLossError(absl::StrCat(where, ": missing or not HDF5"));
      Hid file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
      if (!file.ok()) return absl::DataLossError(absl::StrCat(where, ": cannot open"));
      ASSIGN_OR_RETURN(image_offset, ContiguousOffset(file.get(), "images", info.count, manifest.height, manifest.width, where));
      if (manifest.labelled) {
        ASSIGN_OR_RETURN(mask_offset, ContiguousOffset(file.get(), "masks", info.count, manifest.height, manifest.width, where));
      }
      ASSIGN_OR_RETURN(shard.crc32, ReadCrcs(file.get(), info.count, where));
    }
    if (shard.crc32.empty() && !verify) {
      // No per-sample checksums (an older pack): the whole file, once, now.
      ASSIGN_OR_RETURN(FileDigest digest, Sha256File(path));
      if (digest.sha256 != info.sha256 || digest.size != info.bytes) {
        return absl::DataLossError(absl::StrCat(where, ": SHA-256 ", digest.sha256, " (", digest.size,
                                                " bytes) does not match the manifest's ", info.sha256, " (", info.bytes,
                                                " bytes): the shard is damaged; re-pack or restore it"));
      }
    }
    shard.path = where;
    ASSIGN_OR_RETURN(shard.file, MappedFile::Open(path));
    const uint64_t bytes = static_cast<uint64_t>(info.count * plane);
    if (image_offset + bytes > shard.file->size() || (manifest.labelled && mask_offset + bytes > shard.file->size())) {
      return absl::DataLossError(absl::StrCat(where, ": truncated (pixel data beyond the end of the file)"));
    }
    shard.images = shard.file->data() + image_offset;
    if (manifest.labelled) shard.masks = shard.file->data() + mask_offset;
    first += info.count;
    ds->shards_.push_back(std::move(shard));
  }
  ds->manifest_ = std::move(manifest);
  if (verify) RETURN_IF_ERROR(ds->CheckAllSamples());
  return ds;
}

absl::Status ShardedDataset::CheckAllSamples(int64_t* checked) const {
  std::string damaged;
  int64_t n_checked = 0, n_damaged_shards = 0;
  for (const Shard& s : shards_) {
    if (s.crc32.empty()) continue;
    const int64_t count = static_cast<int64_t>(s.crc32.size());
    int64_t bad = 0;
    absl::Status first_bad;
    for (int64_t local = 0; local < count; ++local) {
      absl::Status st = CheckSample(s.first + local);
      if (!st.ok() && bad++ == 0) first_bad = std::move(st);
    }
    n_checked += count;
    if (bad == 0) continue;
    if (n_damaged_shards++ < 8) {
      absl::StrAppend(&damaged, damaged.empty() ? "" : "\n", first_bad.message(),
                      bad > 1 ? absl::StrCat(" (", bad, " damaged samples in this shard)") : "");
    }
  }
  if (checked != nullptr) *checked = n_checked;
  if (n_damaged_shards == 0) return absl::OkStatus();
  return absl::DataLossError(n_damaged_shards > 8 ? absl::StrCat(damaged, "\n... ", n_damaged_shards - 8, " more damaged shards")
                                                  : damaged);
}

std::pair<const ShardedDataset::Shard*, int64_t> ShardedDataset::Locate(int64_t i) const {
  auto it = std::upper_bound(shards_.begin(), shards_.end(), i,
                             [](int64_t v, const Shard& s) { return v < s.first; });
  const Shard* s = &*(it - 1);
  return {s, i - s->first};
}

const uint8_t* ShardedDataset::image(int64_t i) const {
  auto [s, local] = Locate(i);
  return s->images + local * height() * width();
}

absl::Status ShardedDataset::CheckSample(int64_t i) const {
  auto [s, local] = Locate(i);
  if (s->crc32.empty()) return absl::OkStatus();
  const size_t plane = static_cast<size_t>(height() * width());
  const uint8_t* m = s->masks == nullptr ? nullptr : s->masks + local * plane;
  const uint32_t crc = SampleCrc(s->images + local * plane, m, plane);
  if (crc == s->crc32[local]) return absl::OkStatus();
  return absl::DataLossError(absl::StrFormat(
      "%s: sample %d (dataset index %d) has CRC-32 %08x, the shard recorded %08x: the shard is damaged "
      "(retina-shard verify names every damaged shard; re-pack or restore it)",
      s->path, local, i, crc, s->crc32[local]));
}

const uint8_t* ShardedDataset::mask(int64_t i) const {
  auto [s, local] = Locate(i);
  return s->masks == nullptr ? nullptr : s->masks + local * height() * width();
}

}  // namespace retina::trainer
