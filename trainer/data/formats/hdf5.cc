// HDF5 datasets "file.h5:/path" of rank 2 (y, x) or 3 (z, y, x); spacing
// from the attributes "resolution" or "element_size_um" (z, y, x). uint8
// datasets stream by hyperslabs (OpenHdf5PlaneReader).
#include <hdf5.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/data/formats/format_util.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/hdf5_handle.h"
#include "common/read_scope.h"

namespace retina::trainer {
namespace {

void SilenceHdf5() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

namespace fs = std::filesystem;

// The files HDF5 may open for an external link target or a virtual-dataset
// source `name` referenced from a file in `dir` (H5Lcreate_external,
// H5Pset_virtual "Source File Resolutions"; the prefix variables are
// cleared under a ReadScope): the name itself when absolute, then dir/name'
// and name' (from the working directory), name' being the name, or its base
// name when it was absolute. HDF5 takes the first that *opens* and falls
// through otherwise, so every one that exists is returned (and checked).
std::vector<fs::path> Hdf5Candidates(const fs::path& dir, const std::string& name) {
  std::error_code ec;
  std::vector<fs::path> out;
  fs::path rel = name;
  if (rel.is_absolute()) {
    if (fs::exists(rel, ec)) out.push_back(rel);
    rel = rel.filename();
  }
  for (const fs::path& candidate : {dir / rel, fs::absolute(rel, ec)}) {
    if (fs::exists(candidate, ec)) out.push_back(candidate);
  }
  return out;
}

// The directory of the file holding HDF5 object `id`, as HDF5 opened it.
fs::path FileOf(hid_t id) {
  const ssize_t n = H5Fget_name(id, nullptr, 0);
  if (n <= 0) return {};
  std::string name(static_cast<size_t>(n) + 1, '\0');
  H5Fget_name(id, name.data(), name.size());
  name.resize(static_cast<size_t>(n));
  std::error_code ec;
  return fs::absolute(name, ec);
}

// H5Pset_elink_cb: every external link HDF5 is about to follow goes through
// the read scope first, read-only.
struct ElinkGuard {
  absl::Status status;
};
herr_t CheckExternalLink(const char* parent_file, const char* /*parent_group*/, const char* child_file,
                         const char* child_object, unsigned* flags, hid_t /*fapl*/, void* data) {
  *flags = H5F_ACC_RDONLY;
  std::error_code ec;
  const fs::path dir = fs::absolute(parent_file, ec).parent_path();
  for (const fs::path& target : Hdf5Candidates(dir, child_file)) {
    absl::Status s = CheckRead(absl::StrCat(parent_file, ": external link to ", child_file, ":", child_object), target);
    if (s.ok()) continue;
    static_cast<ElinkGuard*>(data)->status = std::move(s);
    return -1;
  }
  return 0;
}

// Every file a dataset's data comes from besides its own, through the read
// scope: external storage (raw files, from the file's directory: the
// dataset is opened with efile prefix ${ORIGIN}) and virtual-dataset sources.
absl::Status CheckDataReferences(hid_t ds, const std::string& where, int depth = 0) {
  const fs::path file = FileOf(ds);
  RETURN_IF_ERROR(CheckRead(where, file));
  Hid dcpl(H5Dget_create_plist(ds), H5Pclose);
  if (!dcpl.ok()) return absl::DataLossError(absl::StrCat(where, ": cannot read the dataset's creation properties"));
  const int externals = H5Pget_external_count(dcpl.get());
  for (int i = 0; i < externals; ++i) {
    char name[4096] = {};
    off_t offset = 0;
    hsize_t size = 0;
    if (H5Pget_external(dcpl.get(), static_cast<unsigned>(i), sizeof name, name, &offset, &size) < 0) {
      return absl::DataLossError(absl::StrCat(where, ": external storage entry ", i, " is unreadable"));
    }
    const fs::path target = fs::path(name).is_absolute() ? fs::path(name) : file.parent_path() / name;
    RETURN_IF_ERROR(CheckRead(absl::StrCat(where, ": external storage file ", name), target));
  }
  if (H5Pget_layout(dcpl.get()) == H5D_VIRTUAL) {
    size_t count = 0;
    if (H5Pget_virtual_count(dcpl.get(), &count) < 0) {
      return absl::DataLossError(absl::StrCat(where, ": the virtual dataset's mappings are unreadable"));
    }
    for (size_t i = 0; i < count; ++i) {
      const ssize_t n = H5Pget_virtual_filename(dcpl.get(), i, nullptr, 0);
      if (n < 0) return absl::DataLossError(absl::StrCat(where, ": virtual mapping ", i, " is unreadable"));
      std::string name(static_cast<size_t>(n) + 1, '\0');
      H5Pget_virtual_filename(dcpl.get(), i, name.data(), name.size());
      name.resize(static_cast<size_t>(n));
      const std::string what = absl::StrCat(where, ": virtual dataset source ", name);
      std::vector<fs::path> targets;
      if (name != ".") {
        if (ReadsConfined() && name.find('%') != std::string::npos) {
          return absl::PermissionDeniedError(absl::StrCat(
              what, ": a printf-style source name could open any file; service jobs do not follow it"));
        }
        targets = Hdf5Candidates(file.parent_path(), name);
        for (const fs::path& target : targets) RETURN_IF_ERROR(CheckRead(what, target));
      }
      if (!ReadsConfined()) continue;
      // The source dataset is read too: its own external storage, virtual
      // sources and links are checked the same way (a few levels deep).
      if (depth >= 4) return absl::PermissionDeniedError(absl::StrCat(what, ": virtual datasets nested too deep"));
      const ssize_t dn = H5Pget_virtual_dsetname(dcpl.get(), i, nullptr, 0);
      if (dn < 0) return absl::DataLossError(absl::StrCat(where, ": virtual mapping ", i, " is unreadable"));
      std::string dset(static_cast<size_t>(dn) + 1, '\0');
      H5Pget_virtual_dsetname(dcpl.get(), i, dset.data(), dset.size());
      dset.resize(static_cast<size_t>(dn));
      Hid src_file(name == "." ? H5Iget_file_id(ds)
                   : targets.empty() ? -1
                                     : H5Fopen(targets.front().c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                   H5Fclose);
      if (!src_file.ok()) continue;  // HDF5 finds nothing either: fill values
      ElinkGuard guard;
      Hid dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
      if (!dapl.ok() || H5Pset_elink_cb(dapl.get(), &CheckExternalLink, &guard) < 0 ||
          H5Pset_efile_prefix(dapl.get(), "${ORIGIN}") < 0) {
        return absl::InternalError(absl::StrCat(what, ": cannot set up HDF5 access properties"));
      }
      Hid src(H5Dopen2(src_file.get(), dset.c_str(), dapl.get()), H5Dclose);
      if (!guard.status.ok()) return guard.status;
      if (src.ok()) RETURN_IF_ERROR(CheckDataReferences(src.get(), absl::StrCat(what, ":", dset), depth + 1));
    }
  }
  return absl::OkStatus();
}

// Reads a float attribute of 2 or 3 values into spacing (z, y, x).
bool ReadSpacingAttribute(hid_t dataset, const char* name, RawArray* out) {
  if (H5Aexists(dataset, name) <= 0) return false;
  Hid attr(H5Aopen(dataset, name, H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) return false;
  Hid space(H5Aget_space(attr.get()), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n != 2 && n != 3) return false;
  double v[3];
  if (H5Aread(attr.get(), H5T_NATIVE_DOUBLE, v) < 0) return false;
  if (n == 3) out->spacing = {v[0], v[1], v[2]};
  else out->spacing = {1.0, v[0], v[1]};
  out->has_spacing = true;
  return true;
}

// A scalar string attribute (fixed or variable length); "" when absent.
std::string ReadStringAttribute(hid_t dataset, const char* name) {
  if (H5Aexists(dataset, name) <= 0) return "";
  Hid attr(H5Aopen(dataset, name, H5P_DEFAULT), H5Aclose);
  Hid type(H5Aget_type(attr.get()), H5Tclose);
  if (!attr.ok() || !type.ok() || H5Tget_class(type.get()) != H5T_STRING) return "";
  if (H5Tis_variable_str(type.get()) > 0) {
    char* value = nullptr;
    Hid mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem.get(), H5T_VARIABLE);
    if (H5Aread(attr.get(), mem.get(), &value) < 0 || value == nullptr) return "";
    std::string out(value);
    H5free_memory(value);
    return out;
  }
  const size_t n = H5Tget_size(type.get());
  std::string out(n, '\0');
  if (H5Aread(attr.get(), type.get(), out.data()) < 0) return "";
  return out.substr(0, out.find('\0'));
}

// An open HDF5 dataset of rank 2 (y, x) or 3 (z, y, x) and what it holds.
struct Hdf5Dataset {
  // The external-link check HDF5 may call while the dataset is open (reads
  // of a virtual dataset follow links then): it lives as long as `ds`.
  std::unique_ptr<ElinkGuard> guard = std::make_unique<ElinkGuard>();
  std::unique_ptr<Hid> file, ds;
  hid_t native = -1;  // the memory type matching header.dtype
  int rank = 0;
  RawArray header;    // dtype, shape, spacing, source; no bytes
};

absl::Status OpenHdf5Dataset(const std::string& path, const std::string& dataset, Hdf5Dataset* out) {
  if (absl::Status s = NotFoundUnlessExists(path); !s.ok()) return s;
  SilenceHdf5();
  const std::string where = absl::StrCat(path, ":", dataset);
  RETURN_IF_ERROR(CheckRead(path, path));
  if (H5Fis_hdf5(path.c_str()) <= 0) return absl::DataLossError(absl::StrCat(path, ": not an HDF5 file"));
  out->file = std::make_unique<Hid>(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!out->file->ok()) return absl::DataLossError(absl::StrCat(path, ": cannot open HDF5 file"));
  // External links go through the read scope as they are followed; raw
  // files of external storage are looked up beside the file holding them.
  ElinkGuard& guard = *out->guard;
  Hid lapl(H5Pcreate(H5P_LINK_ACCESS), H5Pclose);
  Hid dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
  if (!lapl.ok() || !dapl.ok() || H5Pset_elink_cb(lapl.get(), &CheckExternalLink, &guard) < 0 ||
      H5Pset_elink_cb(dapl.get(), &CheckExternalLink, &guard) < 0 ||
      H5Pset_efile_prefix(dapl.get(), "${ORIGIN}") < 0) {
    return absl::InternalError(absl::StrCat(where, ": cannot set up HDF5 access properties"));
  }
  const htri_t exists = H5Lexists(out->file->get(), dataset.c_str(), lapl.get());
  if (!guard.status.ok()) return guard.status;
  if (exists <= 0) return absl::NotFoundError(absl::StrCat(where, ": no such dataset in the file"));
  out->ds = std::make_unique<Hid>(H5Dopen2(out->file->get(), dataset.c_str(), dapl.get()), H5Dclose);
  if (!guard.status.ok()) return guard.status;
  if (!out->ds->ok()) return absl::NotFoundError(absl::StrCat(where, ": not a dataset"));
  const hid_t ds = out->ds->get();
  RETURN_IF_ERROR(CheckDataReferences(ds, where));
  Hid space(H5Dget_space(ds), H5Sclose);
  out->rank = H5Sget_simple_extent_ndims(space.get());
  if (out->rank != 2 && out->rank != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": dataset has rank ", out->rank, ", expected 2 (y, x) or 3 (z, y, x)"));
  }
  hsize_t dims[3] = {1, 1, 1};
  H5Sget_simple_extent_dims(space.get(), dims + (3 - out->rank), nullptr);
  Hid type(H5Dget_type(ds), H5Tclose);
  const H5T_class_t cls = H5Tget_class(type.get());
  const size_t size = H5Tget_size(type.get());
  const bool is_signed = cls == H5T_INTEGER && H5Tget_sign(type.get()) == H5T_SGN_2;
  RawArray& h = out->header;
  h.source = where;
  hid_t& native = out->native;
  if (cls == H5T_FLOAT && size == 4) { h.dtype = DType::kFloat32; native = H5T_NATIVE_FLOAT; }
  else if (cls == H5T_FLOAT && size == 8) { h.dtype = DType::kFloat64; native = H5T_NATIVE_DOUBLE; }
  else if (cls == H5T_INTEGER && size == 1) { h.dtype = is_signed ? DType::kInt8 : DType::kUInt8; native = is_signed ? H5T_NATIVE_INT8 : H5T_NATIVE_UINT8; }
  else if (cls == H5T_INTEGER && size == 2) { h.dtype = is_signed ? DType::kInt16 : DType::kUInt16; native = is_signed ? H5T_NATIVE_INT16 : H5T_NATIVE_UINT16; }
  else if (cls == H5T_INTEGER && size == 4) { h.dtype = is_signed ? DType::kInt32 : DType::kUInt32; native = is_signed ? H5T_NATIVE_INT32 : H5T_NATIVE_UINT32; }
  else if (cls == H5T_INTEGER && size == 8) { h.dtype = is_signed ? DType::kInt64 : DType::kUInt64; native = is_signed ? H5T_NATIVE_INT64 : H5T_NATIVE_UINT64; }
  else return absl::UnimplementedError(absl::StrCat(where, ": unsupported HDF5 element type (class ", cls, ", ", size, " bytes)"));
  h.shape = {static_cast<int64_t>(dims[0]), static_cast<int64_t>(dims[1]), static_cast<int64_t>(dims[2])};
  for (int a = 0; a < 3; ++a) {
    if (h.shape[a] < 0) return absl::DataLossError(absl::StrCat(where, ": dataspace size ", dims[a], " overflows"));
  }
  // One plane is what a streaming reader's caller holds at least.
  RETURN_IF_ERROR(DeclaredBytes(where, "dataspace (one plane)", {h.shape[1], h.shape[2]}, size).status());
  if (ReadSpacingAttribute(ds, "resolution", &h)) {
    h.unit = ReadStringAttribute(ds, "unit");  // ours; CREMI's resolution (nm) says nothing
  } else if (ReadSpacingAttribute(ds, "element_size_um", &h)) {
    h.unit = "um";  // the Fiji/ilastik convention
  }
  return absl::OkStatus();
}

// Reads planes [z0, z1) of an open dataset into dst (native type of header.dtype).
absl::Status ReadHdf5Planes(const Hdf5Dataset& d, int64_t z0, int64_t z1, uint8_t* dst) {
  Hid file_space(H5Dget_space(d.ds->get()), H5Sclose);
  const hsize_t start3[3] = {static_cast<hsize_t>(z0), 0, 0};
  const hsize_t count3[3] = {static_cast<hsize_t>(z1 - z0), static_cast<hsize_t>(d.header.shape[1]),
                             static_cast<hsize_t>(d.header.shape[2])};
  const hsize_t* start = d.rank == 3 ? start3 : start3 + 1;
  const hsize_t* count = d.rank == 3 ? count3 : count3 + 1;
  Hid mem_space(H5Screate_simple(d.rank, count, nullptr), H5Sclose);
  if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
      H5Dread(d.ds->get(), d.native, mem_space.get(), file_space.get(), H5P_DEFAULT, dst) < 0) {
    return absl::DataLossError(
        absl::StrCat(d.header.source, ": reading planes ", z0, "..", z1 - 1, " failed (damaged or truncated file?)"));
  }
  return absl::OkStatus();
}


class Hdf5PlaneReader : public PlaneReader {
 public:
  explicit Hdf5PlaneReader(Hdf5Dataset d) : d_(std::move(d)) { header_ = d_.header; }
  bool streaming() const override { return true; }
  absl::Status Read(int64_t z0, int64_t z1, uint8_t* dst) override { return ReadHdf5Planes(d_, z0, z1, dst); }

 private:
  Hdf5Dataset d_;
};

}  // namespace

absl::StatusOr<RawArray> ReadHdf5(const std::string& path, const std::string& dataset) {
  Hdf5Dataset d;
  RETURN_IF_ERROR(OpenHdf5Dataset(path, dataset, &d));
  RawArray out = d.header;
  // Read whole: the declared size against the memory budget first (a small
  // chunked file may declare any size; its chunks are read on demand).
  ASSIGN_OR_RETURN(const uint64_t bytes, DeclaredBytes(out.source, "dataspace",
                                                       {out.shape[0], out.shape[1], out.shape[2]}, DTypeSize(out.dtype)));
  out.bytes.resize(static_cast<size_t>(bytes));
  if (H5Dread(d.ds->get(), d.native, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.bytes.data()) < 0) {
    return absl::DataLossError(absl::StrCat(out.source, ": read failed (damaged or truncated file?)"));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<PlaneReader>> OpenHdf5PlaneReader(const std::string& path, const std::string& dataset) {
  Hdf5Dataset d;
  RETURN_IF_ERROR(OpenHdf5Dataset(path, dataset, &d));
  if (d.header.dtype != DType::kUInt8) return std::unique_ptr<PlaneReader>();
  return std::unique_ptr<PlaneReader>(new Hdf5PlaneReader(std::move(d)));
}

}  // namespace retina::trainer
