#include "trainer/data/formats/writers.h"

#include <hdf5.h>
#include <tiffio.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/data/formats/hdf5_handle.h"

namespace retina::trainer {

namespace {

// The temporary a writer fills before renaming it to its target.
class TempTarget {
 public:
  explicit TempTarget(const std::string& path)
      : target_(path), tmp_(target_.parent_path() / UniqueTempName("." + target_.filename().string() + ".")) {}
  ~TempTarget() {
    if (!committed_) ::unlink(tmp_.c_str());
  }
  const std::filesystem::path& tmp() const { return tmp_; }
  absl::Status Commit() {
    RETURN_IF_ERROR(FsyncPath(tmp_));
    RETURN_IF_ERROR(RenameDurable(tmp_, target_));
    committed_ = true;
    return absl::OkStatus();
  }

 private:
  std::filesystem::path target_, tmp_;
  bool committed_ = false;
};

absl::Status CheckAppend(const std::string& where, int64_t done, int64_t n, int64_t total, int64_t channels = 0,
                         int64_t expected_channels = 0) {
  if (channels != expected_channels) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", channels, " probability channels appended, opened for ", expected_channels));
  }
  if (n < 0 || done + n > total) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", done + n, " planes appended, the volume has ", total));
  }
  return absl::OkStatus();
}

class TiffPlaneWriter : public PlaneWriter {
 public:
  TiffPlaneWriter(const std::string& path, std::array<int64_t, 3> shape, std::array<double, 3> spacing, bool write_spacing,
                  std::string unit = "")
      : target_(path), shape_(shape), spacing_(spacing), write_spacing_(write_spacing), unit_(std::move(unit)) {}
  absl::Status Open() {
    const bool big = static_cast<double>(shape_[0]) * shape_[1] * shape_[2] > 3.5 * (1ull << 30);
    tif_.reset(TIFFOpen(target_.tmp().c_str(), big ? "w8" : "w"));
    if (!tif_) return absl::InternalError(absl::StrCat(target_.tmp().string(), ": cannot create TIFF"));
    return absl::OkStatus();
  }
  absl::Status Append(int64_t n, const uint8_t* labels, const float*, int64_t channels) override {
    RETURN_IF_ERROR(CheckAppend(target_.tmp().string(), done_, n, shape_[0], channels, 0));
    const std::string description = absl::StrCat("ImageJ=1.11a\nimages=", shape_[0], "\nslices=", shape_[0],
                                                 "\nunit=", ImageJUnit(unit_), "\nspacing=", spacing_[0], "\n");
    TIFF* tif = tif_.get();
    for (int64_t k = 0; k < n; ++k, ++done_) {
      TIFFSetField(tif, TIFFTAG_IMAGEWIDTH, static_cast<uint32_t>(shape_[2]));
      TIFFSetField(tif, TIFFTAG_IMAGELENGTH, static_cast<uint32_t>(shape_[1]));
      TIFFSetField(tif, TIFFTAG_BITSPERSAMPLE, 8);
      TIFFSetField(tif, TIFFTAG_SAMPLESPERPIXEL, 1);
      TIFFSetField(tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
      TIFFSetField(tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
      TIFFSetField(tif, TIFFTAG_ROWSPERSTRIP, static_cast<uint32_t>(shape_[1]));
      if (shape_[0] > 1) {
        TIFFSetField(tif, TIFFTAG_SUBFILETYPE, FILETYPE_PAGE);
        TIFFSetField(tif, TIFFTAG_PAGENUMBER, static_cast<uint16_t>(done_), static_cast<uint16_t>(shape_[0]));
      }
      if (write_spacing_) {
        TIFFSetField(tif, TIFFTAG_XRESOLUTION, static_cast<float>(1.0 / spacing_[2]));
        TIFFSetField(tif, TIFFTAG_YRESOLUTION, static_cast<float>(1.0 / spacing_[1]));
        TIFFSetField(tif, TIFFTAG_RESOLUTIONUNIT, RESUNIT_NONE);
        if (done_ == 0) TIFFSetField(tif, TIFFTAG_IMAGEDESCRIPTION, description.c_str());
      }
      const tmsize_t bytes = static_cast<tmsize_t>(shape_[1] * shape_[2]);
      if (TIFFWriteEncodedStrip(tif, 0, const_cast<uint8_t*>(labels + k * bytes), bytes) != bytes ||
          !TIFFWriteDirectory(tif)) {
        return absl::InternalError(absl::StrCat(target_.tmp().string(), ": writing page ", done_, " failed (disk full?)"));
      }
    }
    return absl::OkStatus();
  }
  absl::Status Finish() override {
    if (done_ != shape_[0]) return CheckAppend(target_.tmp().string(), done_, shape_[0] + 1, shape_[0]);
    tif_.reset();  // TIFFClose flushes
    return target_.Commit();
  }

 private:
  TempTarget target_;
  std::array<int64_t, 3> shape_;
  // ImageJ's spelling of a unit ("micron" for micrometres); "unit" when unknown.
  static std::string ImageJUnit(const std::string& unit) {
    if (unit.empty()) return "unit";
    const std::optional<double> um = MicrometresPer(unit);
    if (um && *um == 1.0) return "micron";
    if (um && *um == 1e-3) return "nm";
    return unit;
  }
  std::array<double, 3> spacing_;
  bool write_spacing_;
  std::string unit_;
  std::unique_ptr<TIFF, void (*)(TIFF*)> tif_{nullptr, &TIFFClose};
  int64_t done_ = 0;
};

absl::Status WriteDoublesAttribute(hid_t ds, const char* name, const std::array<double, 3>& values) {
  const hsize_t three = 3;
  Hid aspace(H5Screate_simple(1, &three, nullptr), H5Sclose);
  Hid attr(H5Acreate2(ds, name, H5T_NATIVE_DOUBLE, aspace.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.ok() || H5Awrite(attr.get(), H5T_NATIVE_DOUBLE, values.data()) < 0) {
    return absl::InternalError(absl::StrCat("writing the ", name, " attribute failed"));
  }
  return absl::OkStatus();
}

// "resolution" (and, with a known unit, "unit" and "element_size_um").
absl::Status WriteSpacingAttribute(hid_t ds, const std::array<double, 3>& spacing, const std::string& unit = "") {
  RETURN_IF_ERROR(WriteDoublesAttribute(ds, "resolution", spacing));
  if (unit.empty()) return absl::OkStatus();
  Hid type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), unit.size());
  Hid scalar(H5Screate(H5S_SCALAR), H5Sclose);
  Hid attr(H5Acreate2(ds, "unit", type.get(), scalar.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.ok() || H5Awrite(attr.get(), type.get(), unit.data()) < 0) {
    return absl::InternalError("writing the unit attribute failed");
  }
  if (const std::optional<double> um = MicrometresPer(unit)) {
    RETURN_IF_ERROR(WriteDoublesAttribute(ds, "element_size_um", {spacing[0] * *um, spacing[1] * *um, spacing[2] * *um}));
  }
  return absl::OkStatus();
}

class Hdf5PlaneWriter : public PlaneWriter {
 public:
  Hdf5PlaneWriter(const std::string& path, std::array<int64_t, 3> shape, int64_t channels)
      : target_(path), shape_(shape), channels_(channels) {}
  absl::Status Open(const std::array<double, 3>& spacing, const std::string& unit) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    file_ = std::make_unique<Hid>(H5Fcreate(target_.tmp().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (!file_->ok()) return absl::InternalError(absl::StrCat(target_.tmp().string(), ": cannot create HDF5 file"));
    const hsize_t dims[4] = {static_cast<hsize_t>(channels_), static_cast<hsize_t>(shape_[0]),
                             static_cast<hsize_t>(shape_[1]), static_cast<hsize_t>(shape_[2])};
    labels_ = CreateChunked("labels", H5T_NATIVE_UINT8, 3, dims + 1);
    if (!labels_->ok()) return absl::InternalError(absl::StrCat(target_.tmp().string(), ": cannot create labels"));
    RETURN_IF_ERROR(WriteSpacingAttribute(labels_->get(), spacing, unit), target_.tmp().string());
    if (channels_ > 0) {
      probabilities_ = CreateChunked("probabilities", H5T_NATIVE_FLOAT, 4, dims);
      if (!probabilities_->ok()) {
        return absl::InternalError(absl::StrCat(target_.tmp().string(), ": cannot create probabilities"));
      }
      RETURN_IF_ERROR(WriteSpacingAttribute(probabilities_->get(), spacing, unit), target_.tmp().string());
    }
    return absl::OkStatus();
  }
  absl::Status Append(int64_t n, const uint8_t* labels, const float* probabilities, int64_t channels) override {
    RETURN_IF_ERROR(CheckAppend(target_.tmp().string(), done_, n, shape_[0], channels, channels_));
    const hsize_t start[4] = {0, static_cast<hsize_t>(done_), 0, 0};
    const hsize_t count[4] = {static_cast<hsize_t>(channels_), static_cast<hsize_t>(n), static_cast<hsize_t>(shape_[1]),
                              static_cast<hsize_t>(shape_[2])};
    if (!WriteSlab(*labels_, H5T_NATIVE_UINT8, 3, start + 1, count + 1, labels) ||
        (channels_ > 0 && !WriteSlab(*probabilities_, H5T_NATIVE_FLOAT, 4, start, count, probabilities))) {
      return absl::InternalError(
          absl::StrCat(target_.tmp().string(), ": writing planes ", done_, "..", done_ + n - 1, " failed (disk full?)"));
    }
    done_ += n;
    return absl::OkStatus();
  }
  absl::Status Finish() override {
    if (done_ != shape_[0]) return CheckAppend(target_.tmp().string(), done_, shape_[0] + 1, shape_[0]);
    probabilities_.reset();
    labels_.reset();
    if (H5Fflush(file_->get(), H5F_SCOPE_GLOBAL) < 0) {
      return absl::InternalError(absl::StrCat(target_.tmp().string(), ": flush failed (disk full?)"));
    }
    file_.reset();
    return target_.Commit();
  }

 private:
  // A dataset chunked by plane (one [.., 1, Y, X] chunk per z).
  std::unique_ptr<Hid> CreateChunked(const char* name, hid_t type, int rank, const hsize_t* dims) {
    hsize_t chunk[4];
    for (int i = 0; i < rank; ++i) chunk[i] = dims[i];
    for (int i = 0; i < rank - 2; ++i) chunk[i] = 1;
    for (int i = 0; i < rank; ++i) chunk[i] = std::max<hsize_t>(1, chunk[i]);
    Hid space(H5Screate_simple(rank, dims, nullptr), H5Sclose);
    Hid props(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_chunk(props.get(), rank, chunk);
    H5Pset_deflate(props.get(), 1);  // gzip: h5py's compression="gzip"
    return std::make_unique<Hid>(H5Dcreate2(file_->get(), name, type, space.get(), H5P_DEFAULT, props.get(), H5P_DEFAULT),
                                 H5Dclose);
  }
  static bool WriteSlab(const Hid& ds, hid_t type, int rank, const hsize_t* start, const hsize_t* count, const void* data) {
    Hid file_space(H5Dget_space(ds.get()), H5Sclose);
    Hid mem_space(H5Screate_simple(rank, count, nullptr), H5Sclose);
    return H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) >= 0 &&
           H5Dwrite(ds.get(), type, mem_space.get(), file_space.get(), H5P_DEFAULT, data) >= 0;
  }

  TempTarget target_;
  std::array<int64_t, 3> shape_;
  int64_t channels_;
  std::unique_ptr<Hid> file_, labels_, probabilities_;
  int64_t done_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PlaneWriter>> OpenPlaneWriter(const std::string& path, std::array<int64_t, 3> shape,
                                                             std::array<double, 3> spacing, bool write_spacing,
                                                             int64_t channels, const std::string& unit) {
  const bool h5 = absl::EndsWith(path, ".h5") || absl::EndsWith(path, ".hdf5");
  if (h5) {
    auto w = std::make_unique<Hdf5PlaneWriter>(path, shape, channels);
    RETURN_IF_ERROR(w->Open(spacing, write_spacing ? unit : ""));
    return std::unique_ptr<PlaneWriter>(std::move(w));
  }
  if (!absl::EndsWith(path, ".tif") && !absl::EndsWith(path, ".tiff")) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": write .tif/.tiff or .h5/.hdf5"));
  }
  if (channels > 0) return absl::InvalidArgumentError(absl::StrCat(path, ": probabilities need an .h5 output"));
  auto w = std::make_unique<TiffPlaneWriter>(path, shape, spacing, write_spacing, unit);
  RETURN_IF_ERROR(w->Open());
  return std::unique_ptr<PlaneWriter>(std::move(w));
}

absl::Status WriteTiff(const std::string& path, const Volume& v, bool write_spacing) {
  TiffPlaneWriter w(path, v.shape, v.spacing, write_spacing);
  RETURN_IF_ERROR(w.Open());
  RETURN_IF_ERROR(w.Append(v.shape[0], v.data.data(), nullptr, 0));
  return w.Finish();
}

absl::Status WriteHdf5Volumes(const std::string& path,
                              const std::vector<std::pair<std::string, const Volume*>>& volumes,
                              const float* probabilities, int64_t channels) {
  if (volumes.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": nothing to write"));
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::filesystem::path target(path);
  const std::filesystem::path tmp = target.parent_path() / UniqueTempName("." + target.filename().string() + ".");
  absl::Cleanup remove_tmp = [&] { ::unlink(tmp.c_str()); };
  const auto fail = [&](const std::string& what) {
    return absl::InternalError(absl::StrCat(tmp.string(), ": writing ", what, " failed (disk full?)"));
  };
  {
    Hid file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (!file.ok()) return absl::InternalError(absl::StrCat(tmp.string(), ": cannot create HDF5 file"));
    for (const auto& [name, v] : volumes) {
      const hsize_t dims[3] = {static_cast<hsize_t>(v->shape[0]), static_cast<hsize_t>(v->shape[1]),
                               static_cast<hsize_t>(v->shape[2])};
      Hid space(H5Screate_simple(3, dims, nullptr), H5Sclose);
      Hid ds(H5Dcreate2(file.get(), name.c_str(), H5T_NATIVE_UINT8, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
             H5Dclose);
      if (!ds.ok() || H5Dwrite(ds.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, v->data.data()) < 0) {
        return fail(name);
      }
      if (!WriteSpacingAttribute(ds.get(), v->spacing).ok()) return fail(name + " spacing");
    }
    if (probabilities != nullptr) {
      const auto& s = volumes.front().second->shape;
      const hsize_t dims[4] = {static_cast<hsize_t>(channels), static_cast<hsize_t>(s[0]), static_cast<hsize_t>(s[1]),
                               static_cast<hsize_t>(s[2])};
      Hid space(H5Screate_simple(4, dims, nullptr), H5Sclose);
      Hid ds(H5Dcreate2(file.get(), "probabilities", H5T_NATIVE_FLOAT, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                        H5P_DEFAULT),
             H5Dclose);
      if (!ds.ok() || H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, probabilities) < 0) {
        return fail("probabilities");
      }
    }
  }
  RETURN_IF_ERROR(FsyncPath(tmp));
  RETURN_IF_ERROR(RenameDurable(tmp, target));
  std::move(remove_tmp).Cancel();
  return absl::OkStatus();
}

std::optional<double> MicrometresPer(const std::string& unit) {
  static const std::pair<const char*, double> kUnits[] = {
      {"nm", 1e-3},        {"nanometer", 1e-3},  {"um", 1},    {"micron", 1},  {"microns", 1}, {"micrometer", 1},
      {"\\u00B5m", 1},     {"\xC2\xB5m", 1},      {"mm", 1e3},  {"millimeter", 1e3}, {"cm", 1e4}, {"centimeter", 1e4},
      {"A", 1e-4},         {"angstrom", 1e-4},   {"pm", 1e-6}, {"picometer", 1e-6}, {"inch", 25400}};
  for (const auto& [name, um] : kUnits) {
    if (unit == name) return um;
  }
  return std::nullopt;
}

}  // namespace retina::trainer
